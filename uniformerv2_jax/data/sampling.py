"""Temporal frame sampling: TSN sparse (the official UniFormerV2 recipes) and dense clips.

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


def dense_train_indices(
  video_length: int,
  num_frames: int,
  sampling_rate: int,
  rng: np.random.Generator,
  short_video: str = "clamp",
) -> np.ndarray:
  """A clip of ``num_frames`` frames at stride ``sampling_rate`` from a uniformly random start.

  Videos shorter than the clip extent start at 0; the overhanging indices are clamped to the
  last frame (``short_video='clamp'``) or wrap around (``'loop'``).
  """
  extent = (num_frames - 1) * sampling_rate + 1
  max_start = max(0, video_length - extent)
  start = int(rng.integers(0, max_start, endpoint=True))
  idx = start + sampling_rate * np.arange(num_frames, dtype=np.int64)
  return _wrap_short(idx, video_length, short_video)


def dense_test_indices(
  video_length: int,
  num_frames: int,
  sampling_rate: int,
  clip_index: int = 0,
  num_clips: int = 1,
  short_video: str = "clamp",
) -> np.ndarray:
  """View ``clip_index`` of ``num_clips`` evenly spaced dense clips (SlowFast's uniform starts).

  Start = floor(max_start * v / (V - 1)) for V > 1 (first and last possible clip included);
  a single clip is centred.
  """
  if not 0 <= clip_index < num_clips:
    raise ValueError(f"clip_index {clip_index} outside [0, {num_clips})")
  extent = (num_frames - 1) * sampling_rate + 1
  max_start = max(0, video_length - extent)
  if num_clips == 1:
    start = max_start // 2
  else:
    start = (max_start * clip_index) // (num_clips - 1)
  idx = start + sampling_rate * np.arange(num_frames, dtype=np.int64)
  return _wrap_short(idx, video_length, short_video)


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
