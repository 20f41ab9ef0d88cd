"""Temporal frame sampling: TSN sparse (the official UniFormerV2 recipes) and SlowFast dense clips.

All functions return 0-based frame indices as ``np.int64`` arrays (``sparse_*`` for SSv2 frame
folders add ``index_base=1`` to get the 1-based file numbers the official loader opens).
Randomness comes from a ``np.random.Generator`` passed by the caller, so a grain ``random_map``
seed fully determines the draw.

The sparse formulas use exact integer arithmetic. The official code computes them in floats
(``s = (L - 1) / N``, ``np.round(s * i)``, ``int(s / (V + 1) * (v + 1))``); the fixtures confirm
the float code equals the exact rational form for every tested case, and the exact form cannot
drift for long videos.
"""

from __future__ import annotations

import numpy as np


def _round_half_even_div(num: np.ndarray, den: int) -> np.ndarray:
  """round_half_even(num / den) for non-negative integers, exactly (NumPy's ``np.round`` rule)."""
  q, r = np.divmod(num, den)
  twice = 2 * r
  # Round up when the remainder is above one half, or exactly one half and q is odd.
  up = (twice > den) | ((twice == den) & (q % 2 == 1))
  return q + up.astype(q.dtype)


def _segment_bounds(video_length: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
  """Segment starts a_i = round((L-1) i / N) and inclusive ends round((L-1)(i+1) / N)."""
  span = max(0, int(video_length) - 1)  # Kinetics guards s with max(0, .)
  i = np.arange(num_frames + 1, dtype=np.int64)
  edges = _round_half_even_div(span * i, num_frames)
  return edges[:-1], edges[1:]


def sparse_test_indices(
  video_length: int,
  num_frames: int,
  clip_index: int = 0,
  num_clips: int = 1,
  index_base: int = 0,
) -> np.ndarray:
  """Deterministic TSN indices of temporal view ``clip_index`` out of ``num_clips``.

  index_i = a_i + floor((L-1)(v+1) / (N (V+1))), clamped to L-1 (never binds). With V=1 this is
  also the official validation clip.
  """
  if not 0 <= clip_index < num_clips:
    raise ValueError(f"clip_index {clip_index} outside [0, {num_clips})")
  starts, _ = _segment_bounds(video_length, num_frames)
  span = max(0, int(video_length) - 1)
  shift = (span * (clip_index + 1)) // (num_frames * (num_clips + 1))
  idx = np.minimum(starts + shift, max(0, video_length - 1))
  return idx + index_base


def sparse_train_indices(
  video_length: int, num_frames: int, rng: np.random.Generator, index_base: int = 0
) -> np.ndarray:
  """Random TSN indices: per segment a uniform integer in [a_i, round(s (i+1))], both ends."""
  starts, ends = _segment_bounds(video_length, num_frames)
  idx = rng.integers(starts, ends, endpoint=True)
  idx = np.minimum(idx, max(0, video_length - 1))
  return idx.astype(np.int64) + index_base


def _wrap_short(idx: np.ndarray, video_length: int, mode: str) -> np.ndarray:
  if mode == "clamp":
    return np.clip(idx, 0, max(0, video_length - 1))
  if mode == "loop":
    return np.mod(idx, max(1, video_length))
  raise ValueError(f"unknown short-video mode {mode!r} (use 'clamp' or 'loop')")


def _dense_delta(video_length: int, num_frames: int, sampling_rate: int) -> int:
  """SlowFast's ``delta = max(video_size - clip_size, 0)`` with ``clip_size = rate * T``."""
  if num_frames <= 0 or sampling_rate <= 0:
    raise ValueError(f"num_frames and sampling_rate must be positive, got {num_frames}, "
                     f"{sampling_rate}")
  return max(int(video_length) - num_frames * sampling_rate, 0)


def dense_train_indices(
  video_length: int,
  num_frames: int,
  sampling_rate: int,
  rng: np.random.Generator,
  short_video: str = "clamp",
) -> np.ndarray:
  """A dense training clip exactly as SlowFast draws it (``clip_idx = -1``).

  ``start ~ U(0, delta)`` (a real number, ``delta = max(L - rate T, 0)``), then
  ``floor(linspace(start, start + rate T - 1, T))``: so the first index is uniform over
  ``0 .. delta - 1`` (0 when ``delta == 0``) and the frames are spaced ``(rate T - 1) / (T - 1)``
  apart, not ``rate``. Indices past the end are clamped to the last frame like SlowFast
  (``short_video='clamp'``) or wrap around (``'loop'``, not in SlowFast).
  """
  delta = _dense_delta(video_length, num_frames, sampling_rate)
  start = float(rng.uniform(0.0, delta)) if delta > 0 else 0.0
  i = np.arange(num_frames, dtype=np.float64)
  span = num_frames * sampling_rate - 1
  offsets = i * span / (num_frames - 1) if num_frames > 1 else i
  idx = np.floor(start + offsets).astype(np.int64)
  return _wrap_short(idx, video_length, short_video)


def dense_test_indices(
  video_length: int,
  num_frames: int,
  sampling_rate: int,
  clip_index: int = 0,
  num_clips: int = 1,
  short_video: str = "clamp",
) -> np.ndarray:
  """View ``clip_index`` of ``num_clips`` dense clips: SlowFast's ``get_start_end_idx`` with
  ``use_offset=True`` (the official UniFormerV2 configs set ``DATA.USE_OFFSET_SAMPLING``).

  ``delta = max(L - rate T, 0)``; start = ``v * floor(delta / (V - 1))`` for V > 1 (the first
  clip starts at frame 0, the last at or just before ``delta``) and ``floor(delta / 2)`` for a
  single view; frames are SlowFast's ``temporal_sampling``: ``floor(linspace(start,
  start + rate T - 1, T))`` clamped to the last frame. The linspace is evaluated exactly here;
  SlowFast evaluates it in float32 (``torch.linspace``), which can land one ulp below an
  exactly integral value and truncate it one frame earlier (a few in a thousand (T, rate,
  start) cases; never more than one frame). Assumes the video's frame rate equals SlowFast's
  ``target_fps`` (clip size ``rate T`` frames).
  """
  if not 0 <= clip_index < num_clips:
    raise ValueError(f"clip_index {clip_index} outside [0, {num_clips})")
  delta = _dense_delta(video_length, num_frames, sampling_rate)
  if num_clips == 1:
    start = delta // 2
  else:
    start = clip_index * (delta // (num_clips - 1))
  i = np.arange(num_frames, dtype=np.int64)
  span = num_frames * sampling_rate - 1
  offsets = (i * span) // (num_frames - 1) if num_frames > 1 else i
  return _wrap_short(start + offsets, video_length, short_video)


def frames_to_sample(backbone_frames: int, temporal_downsample: bool) -> int:
  """Frames the loader must read so the backbone sees ``backbone_frames`` frames (T').

  With temporal downsampling (SSv1/SSv2 recipes: patch conv kernel 3, stride 2 in time) the
  backbone sees T' = T/2, so the loader reads 2 T'; otherwise T = T'.
  """
  if backbone_frames <= 0:
    raise ValueError(f"backbone_frames must be positive, got {backbone_frames}")
  return 2 * backbone_frames if temporal_downsample else backbone_frames


def validate_num_frames(num_frames: int, temporal_downsample: bool) -> int:
  """Check a loader frame count T; temporal downsampling needs an even T (T' = T/2)."""
  if num_frames <= 0:
    raise ValueError(f"num_frames must be positive, got {num_frames}")
  if temporal_downsample and num_frames % 2:
    raise ValueError(f"temporal downsampling needs an even number of frames, got {num_frames}")
  return num_frames
