"""Frame reading: PyAV video decoding of only the frames a clip needs, and JPEG frame folders.

Everything returns uint8 ``[T, H, W, 3]`` arrays. Failures raise :class:`DecodeError` with a
``kind`` from :data:`SKIP_KINDS`, which the pipeline counts and uses to replace the sample.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

# Kinds of bad samples, in the order of the skip-count vector the pipeline puts in every batch.
SKIP_KINDS: tuple[str, ...] = (
  "missing",  # file or frame file does not exist
  "permission",  # exists but cannot be opened
  "empty",  # zero-byte file
  "unreadable",  # not a video / no video stream / container cannot be opened
  "truncated",  # decoding failed part-way (some frames were decoded before the error)
  "no_frames",  # container opens but no frame can be decoded
  "too_large",  # resolution above the configured pixel limit
  "other",  # anything else raised while loading or augmenting
)

# Default pixel limit: 4K (3840 x 2160) frames pass, anything bigger is considered absurd.
DEFAULT_MAX_PIXELS = 3840 * 2160


class DecodeError(Exception):
  """A sample that cannot be loaded; ``kind`` is one of :data:`SKIP_KINDS`."""

  def __init__(self, kind: str, path: str, detail: str = ""):
    if kind not in SKIP_KINDS:
      raise ValueError(f"unknown skip kind {kind!r}")
    super().__init__(f"{kind}: {path}: {detail}" if detail else f"{kind}: {path}")
    self.kind = kind
    self.path = path

  def __reduce__(self):  # keep picklable across grain worker processes
    return (DecodeError, (self.kind, self.path, str(self)))


@dataclass(frozen=True)
class Clip:
  """Decoded frames for the requested indices (same order, duplicates kept)."""

  frames: np.ndarray  # uint8 [T, H, W, 3]
  indices: np.ndarray  # int64 [T], the frame positions actually returned (after clamping)
  num_frames: int  # video length L used for sampling


def _check_file(path: str) -> None:
  """Classify the common filesystem failures before handing the file to FFmpeg."""
  try:
    size = os.stat(path).st_size
  except FileNotFoundError as e:
    raise DecodeError("missing", path) from e
  except PermissionError as e:
    raise DecodeError("permission", path) from e
  if size == 0:
    raise DecodeError("empty", path)
  if not os.access(path, os.R_OK):
    raise DecodeError("permission", path)


def _open(src: str | bytes, label: str):
  if isinstance(src, (bytes, bytearray, memoryview)):
    if len(src) == 0:
      raise DecodeError("empty", label)
    handle: str | io.BytesIO = io.BytesIO(bytes(src))
  else:
    _check_file(src)
    handle = src
  try:
    return av.open(handle, mode="r", metadata_errors="ignore")
  except PermissionError as e:
    raise DecodeError("permission", label) from e
  except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
    raise DecodeError("unreadable", label, str(e)) from e


def _stream_length(container, stream) -> int:
  """Frame count as the container reports it (decord's ``len()`` analogue).

  MP4/MOV store an exact sample count; other containers may only have a duration, then
  duration x average rate is used. 0 means unknown (the caller then decodes everything).
  """
  if stream.frames and stream.frames > 0:
    return int(stream.frames)
  rate = stream.average_rate or stream.guessed_rate
  if rate and stream.duration and stream.time_base:
    return max(0, round(float(stream.duration * stream.time_base * rate)))
  if rate and container.duration:
    return max(0, round(container.duration / av.time_base * float(rate)))
  return 0


def _to_array(frame) -> np.ndarray:
  return frame.to_ndarray(format="rgb24")


def read_video(
  src: str | bytes,
  indices_for_length: Callable[[int], np.ndarray],
  *,
  label: str | None = None,
  max_pixels: int = DEFAULT_MAX_PIXELS,
  seek_threshold: int | None = None,
  threads: str = "AUTO",
  thread_count: int = 0,
) -> Clip:
  """Decode the frames ``indices_for_length(L)`` of a video file or in-memory bytes.

  Frames are decoded in order and only the requested ones are converted to RGB; decoding stops
  after the last requested frame. With ``seek_threshold`` set, a jump of more than that many
  frames to the next requested frame is done by seeking to the preceding keyframe instead of
  decoding through (worth it only for long videos with sparse indices; see
  ``benchmarks/data_speed.py``). ``threads``/``thread_count`` set FFmpeg's decoder threading
  (``thread_type`` 'AUTO'/'FRAME'/'SLICE'/'NONE'; count 0 = FFmpeg's default). Requested
  indices past the real end of the stream (container
  metadata overcounting) repeat the last decoded frame, like the official clamp to L - 1.
  """
  label = label or (src if isinstance(src, str) else "<bytes>")
  container = _open(src, label)
  try:
    if not container.streams.video:
      raise DecodeError("unreadable", label, "no video stream")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > max_pixels:
      raise DecodeError("too_large", label, f"{width}x{height} > {max_pixels} pixels")
    stream.thread_type = threads
    if thread_count:
      stream.codec_context.thread_count = thread_count  # 0 = FFmpeg's choice (one per core)
    length = _stream_length(container, stream)
    if length <= 0:
      length = _count_frames(container, stream, label)
      container.seek(0)
    indices = np.asarray(indices_for_length(length), dtype=np.int64)
    wanted = np.unique(indices)
    got, last_pos = _decode_wanted(container, stream, wanted, label, seek_threshold)
  finally:
    container.close()
  if not got:
    raise DecodeError("no_frames", label)
  if len(wanted) and last_pos < wanted[-1]:
    # The stream ended early. A frame or two is ordinary metadata overcounting; more means
    # the file was cut (clean EOF on a truncated faststart mp4).
    missing = int(wanted[-1]) - last_pos
    if missing > max(2, int(0.05 * length)):
      raise DecodeError("truncated", label, f"stream ends at frame {last_pos} of {length}")
  last = max(got)
  # Indices past the decodable end repeat the last frame (metadata can overcount by a frame).
  resolved = np.where(indices > last, last, indices)
  frames = np.stack([got[int(i)] for i in resolved])
  if frames.shape[1] * frames.shape[2] > max_pixels:
    raise DecodeError("too_large", label, f"decoded {frames.shape[2]}x{frames.shape[1]}")
  return Clip(frames=frames, indices=resolved, num_frames=length)


def _count_frames(container, stream, label: str) -> int:
  n = 0
  try:
    for _ in container.decode(stream):
      n += 1
  except (av.FFmpegError, OSError, ValueError) as e:
    if n == 0:
      raise DecodeError("unreadable", label, str(e)) from e
  return n


def _decode_wanted(
  container, stream, wanted: np.ndarray, label: str, seek_threshold: int | None
) -> tuple[dict[int, np.ndarray], int]:
  """Decoded wanted frames by position, and the last position decoded (-1 if none)."""
  got: dict[int, np.ndarray] = {}
  if len(wanted) == 0:
    return got, -1
  use_seek = bool(seek_threshold) and _can_seek(stream)
  try:
    if use_seek:
      last = _decode_with_seek(container, stream, wanted, got, seek_threshold)  # type: ignore[arg-type]
    else:
      last = _decode_sequential(container, stream, wanted, got)
  except DecodeError:
    raise
  except (av.FFmpegError, OSError, ValueError, MemoryError) as e:
    # A clean decode never raises; an error part-way means a damaged or truncated file.
    kind = "truncated" if got else "no_frames"
    raise DecodeError(kind, label, str(e)) from e
  return got, last


def _decode_sequential(container, stream, wanted: np.ndarray, got: dict[int, np.ndarray]) -> int:
  wanted_set = {int(i) for i in wanted}
  last = int(wanted[-1])
  pos, frame = -1, None
  for pos, frame in enumerate(container.decode(stream)):  # noqa: B007 (frame used after loop)
    if pos in wanted_set:
      got[pos] = _to_array(frame)
    if pos >= last:
      break
  if frame is not None and pos not in got:
    got[pos] = _to_array(frame)  # early end of stream: the real last frame stands in (clamp)
  return pos


def _can_seek(stream) -> bool:
  rate = stream.average_rate
  return bool(rate) and stream.time_base is not None and float(rate) > 0


def _pts_to_index(pts: int, start: int, time_base, rate) -> int:
  return round(float((pts - start) * time_base * rate))


def _decode_with_seek(
  container,
  stream,
  wanted: np.ndarray,
  got: dict[int, np.ndarray],
  seek_threshold: int,
) -> int:
  """Decode with keyframe seeks for long gaps; frame positions come from timestamps (CFR).

  If a seek lands after its target (imprecise index), seeking is abandoned for this video and
  decoding restarts sequentially from the beginning, so the result never depends on seeking.
  """
  rate, time_base = stream.average_rate, stream.time_base
  start = stream.start_time or 0
  targets = [int(i) for i in wanted]
  k, pos, frames_iter, allow_seek, last_frame = 0, -1, None, True, None
  sought = -1  # target of the last seek: never seek twice for one target (GOP > threshold)
  while k < len(targets):
    fresh = False
    if frames_iter is None or (
      allow_seek and targets[k] - pos > seek_threshold and targets[k] != sought
    ):
      sought = targets[k]
      ts = start + int(np.floor(float(targets[k] / rate / time_base))) if allow_seek else start
      container.seek(ts, backward=True, any_frame=False, stream=stream)
      frames_iter, fresh = container.decode(stream), allow_seek
    interrupted = False
    for frame in frames_iter:
      if frame.pts is None:
        raise ValueError("frame without timestamp: cannot seek")
      idx = _pts_to_index(frame.pts, start, time_base, rate)
      if fresh:
        fresh = False
        if idx > targets[k]:
          allow_seek, frames_iter, pos, interrupted = False, None, -1, True
          break
      pos, last_frame = idx, frame
      if targets[k] <= idx:
        arr = _to_array(frame)
        # "<" covers timestamp gaps: a missing position takes the next frame.
        while k < len(targets) and targets[k] <= idx:
          got[targets[k]] = arr
          k += 1
      if k >= len(targets):
        return pos
      if allow_seek and targets[k] - pos > seek_threshold and targets[k] != sought:
        interrupted = True
        break
    if not interrupted:
      if last_frame is not None and pos not in got:
        got[pos] = _to_array(last_frame)  # early end of stream: the last frame stands in
      return pos
  return pos


def read_frame_folder(
  folder: str,
  frame_numbers: Sequence[int] | np.ndarray,
  template: str = "img_{:05d}.jpg",
  *,
  bgr: bool = False,
  max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
  """Read ``folder/template.format(n)`` for each frame number; uint8 ``[T, H, W, 3]``.

  ``bgr=True`` reverses the channels: the official SSv2 loader decodes JPEGs with OpenCV and
  never converts, so the released SSv1/SSv2 models were trained and tested on BGR input.
  """
  cache: dict[int, np.ndarray] = {}
  out = []
  for n in frame_numbers:
    n = int(n)
    if n not in cache:
      path = os.path.join(folder, template.format(n))
      _check_file(path)
      try:
        with Image.open(path) as im:
          if im.width * im.height > max_pixels:
            raise DecodeError("too_large", path, f"{im.width}x{im.height}")
          arr = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
      except DecodeError:
        raise
      except PermissionError as e:
        raise DecodeError("permission", path) from e
      except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
      ) as e:
        raise DecodeError("unreadable", path, str(e)) from e
      cache[n] = arr[..., ::-1] if bgr else arr
    out.append(cache[n])
  shapes = {a.shape for a in out}
  if len(shapes) > 1:
    raise DecodeError("unreadable", folder, f"frames of different sizes {sorted(shapes)}")
  return np.ascontiguousarray(np.stack(out))


def decode_jpeg_frames(
  jpegs: Sequence[bytes],
  indices: np.ndarray,
  *,
  bgr: bool = False,
  label: str = "<jpeg>",
) -> np.ndarray:
  """Decode the selected entries of a list of JPEG byte strings (the prepared ArrayRecord form)."""
  cache: dict[int, np.ndarray] = {}
  out = []
  for i in indices:
    i = int(i)
    if i not in cache:
      try:
        with Image.open(io.BytesIO(jpegs[i])) as im:
          arr = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
      except (OSError, ValueError, SyntaxError) as e:
        raise DecodeError("unreadable", label, f"frame {i}: {e}") from e
      cache[i] = arr[..., ::-1] if bgr else arr
    out.append(cache[i])
  return np.ascontiguousarray(np.stack(out))
