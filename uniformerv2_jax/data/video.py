"""Frame reading: PyAV video decoding of only the frames a clip needs, and JPEG frame folders.

Everything returns uint8 ``[T, H, W, 3]`` arrays. Failures raise :class:`DecodeError` with a
``kind`` from :data:`SKIP_KINDS`, which the pipeline counts and uses to replace the sample.

H.264 in MP4/MOV (Kinetics, the prepared ArrayRecord mp4 format) is read selectively
(:func:`read_video`, ``selective=True``): of the packets before a wanted frame only those it
depends on are decoded. Two properties of H.264 make that exact: an IDR picture empties the
decoder's reference buffer (no later picture in decode order refers to anything before it), so
decoding can start at the last IDR before a wanted frame; and a picture with ``nal_ref_idc == 0``
is never a reference, so FFmpeg may drop such pictures (``skip_frame="NONREF"``) unless they are
wanted themselves. Frames are identified by timestamp (rank of the packet's pts among all
packets: the display index), never by counting decoder output. Anything unexpected (missing
timestamps, a wanted frame that does not come out, a decoder error) falls back to the plain
in-order decode. tests/test_data_video.py checks bit-equality with a full decode.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

from uniformerv2_jax import storage
from uniformerv2_jax.data.transforms import optional_cv2

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
  """Classify the common failures of a local file before handing it to FFmpeg."""
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


def read_file_bytes(path: str) -> bytes:
  """The bytes of a local file or a URL (``gs://...``); what is wrong with it is raised as
  :class:`DecodeError` (missing, permission, empty, unreadable), for URLs as for local files."""
  if not storage.is_url(path):
    _check_file(path)
  try:
    with storage.open_file(path, "rb") as f:
      data = f.read()
  except FileNotFoundError as e:
    raise DecodeError("missing", path) from e
  except PermissionError as e:
    raise DecodeError("permission", path) from e
  except OSError as e:
    raise DecodeError("unreadable", path, str(e)) from e
  if not data:
    raise DecodeError("empty", path)
  return data


def _open(src: str | bytes, label: str, probe_decode: bool = True):
  """Open a container. ``probe_decode=False`` stops FFmpeg's stream probing from decoding
  frames (about 7 ms for a 320p H.264 video: it decodes until it has guessed the reorder delay);
  MP4 headers give everything the selective reader needs without it."""
  if isinstance(src, (bytes, bytearray, memoryview)):
    if len(src) == 0:
      raise DecodeError("empty", label)
    handle: str | io.BytesIO = io.BytesIO(bytes(src))
  else:  # a local path (read_video fetched a URL's bytes already)
    _check_file(src)
    handle = src
  # skip_frame here reaches only the probing decoder, not the one that decodes the frames.
  options = None if probe_decode else {"skip_frame": "all"}
  try:
    return av.open(handle, mode="r", metadata_errors="ignore", options=options)
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
  selective: bool = True,
) -> Clip:
  """Decode the frames ``indices_for_length(L)`` of a video file or in-memory bytes.

  ``selective`` (default): H.264 in MP4/MOV decodes only the packets the wanted frames depend on
  (see the module docstring; bit-identical to a full decode). Other inputs, and
  ``selective=False``, are decoded in order: only the requested frames are converted to RGB and
  decoding stops after the last one; with ``seek_threshold`` set, a jump of more than that many
  frames to the next requested frame seeks to the preceding keyframe instead of decoding
  through. ``threads``/``thread_count`` set FFmpeg's decoder threading (``thread_type``
  'AUTO'/'FRAME'/'SLICE'/'NONE'; count 0 = FFmpeg's default). Requested indices past the real
  end of the stream (container metadata overcounting) repeat the last decoded frame, like the
  official clamp to L - 1. ``indices_for_length`` is called once per length (it may draw random
  numbers), also when the selective reader falls back to the in-order one.
  """
  label = label or (src if isinstance(src, str) else "<bytes>")
  if isinstance(src, str) and storage.is_url(src):
    # Fetched whole, once: the selective reader may open the file twice, and FFmpeg's seeks
    # over an object store would each be a ranged request.
    src = read_file_bytes(src)
  drawn: dict[int, np.ndarray] = {}

  def indices_once(length: int) -> np.ndarray:
    if length not in drawn:
      drawn[length] = np.asarray(indices_for_length(length), dtype=np.int64)
    return drawn[length]

  decoded = None
  if selective:
    decoded = _read_selective(src, indices_once, label, max_pixels, threads, thread_count)
  if decoded is None:
    decoded = _read_in_order(
      src, indices_once, label, max_pixels, seek_threshold, threads, thread_count
    )
  got, last_pos, length, indices = decoded
  wanted = np.unique(indices)
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


# (decoded frames by position, last position decoded, length L, the requested indices)
_Decoded = tuple[dict[int, np.ndarray], int, int, np.ndarray]


def _check_size(stream, label: str, max_pixels: int) -> None:
  width, height = stream.codec_context.width, stream.codec_context.height
  if width * height > max_pixels:
    raise DecodeError("too_large", label, f"{width}x{height} > {max_pixels} pixels")


def _set_threads(stream, threads: str, thread_count: int) -> None:
  stream.thread_type = threads
  if thread_count:
    stream.codec_context.thread_count = thread_count  # 0 = FFmpeg's choice (one per core)


def _read_in_order(
  src: str | bytes,
  indices_once: Callable[[int], np.ndarray],
  label: str,
  max_pixels: int,
  seek_threshold: int | None,
  threads: str,
  thread_count: int,
) -> _Decoded:
  container = _open(src, label)
  try:
    if not container.streams.video:
      raise DecodeError("unreadable", label, "no video stream")
    stream = container.streams.video[0]
    _check_size(stream, label, max_pixels)
    _set_threads(stream, threads, thread_count)
    length = _stream_length(container, stream)
    if length <= 0:
      length = _count_frames(container, stream, label)
      container.seek(0)
    indices = indices_once(length)
    got, last_pos = _decode_wanted(container, stream, np.unique(indices), label, seek_threshold)
  finally:
    container.close()
  return got, last_pos, length, indices


# ----------------------------------------------------------------------------- selective H.264
class _Fallback(Exception):
  """The selective reader cannot vouch for this input: use the in-order reader."""


def _read_selective(
  src: str | bytes,
  indices_once: Callable[[int], np.ndarray],
  label: str,
  max_pixels: int,
  threads: str,
  thread_count: int,
) -> _Decoded | None:
  """Selective decoding of H.264 in MP4/MOV, or None where the in-order reader must be used."""
  try:
    container = _open(src, label, probe_decode=False)
  except DecodeError:
    return None  # the in-order reader raises the same error with its own classification
  try:
    return _decode_selective(container, indices_once, label, max_pixels, threads, thread_count)
  except DecodeError:
    raise  # too_large: the same check and message as the in-order reader
  except (_Fallback, av.FFmpegError, OSError, ValueError, KeyError, MemoryError):
    return None
  finally:
    container.close()


def _decode_selective(
  container,
  indices_once: Callable[[int], np.ndarray],
  label: str,
  max_pixels: int,
  threads: str,
  thread_count: int,
) -> _Decoded:
  if "mp4" not in container.format.name.split(",") or not container.streams.video:
    raise _Fallback
  stream = container.streams.video[0]
  cc = stream.codec_context
  # MP4 stores the exact sample count; without it the in-order reader counts frames.
  if cc.name != "h264" or not stream.frames or stream.frames <= 0:
    raise _Fallback
  _check_size(stream, label, max_pixels)
  _set_threads(stream, threads, thread_count)
  length = _stream_length(container, stream)
  indices = indices_once(length)
  wanted = np.unique(indices)
  if len(wanted) == 0 or wanted[0] < 0:
    raise _Fallback
  packets = [p for p in container.demux(stream) if p.size]
  pts = [p.pts for p in packets]
  if not packets or None in pts or len(set(pts)) != len(pts):
    raise _Fallback  # frames could not be told apart by timestamp
  # Display index = rank of the pts among the packets whose frames the decoder outputs (packets
  # flagged "discard", e.g. before an MP4 edit list's start, are decoded but never shown).
  shown = sorted(t for t, p in zip(pts, packets, strict=True) if not p.is_discard)
  rank = {t: i for i, t in enumerate(shown)}
  disp = [-1 if p.is_discard else rank[t] for t, p in zip(pts, packets, strict=True)]
  n = len(shown)
  if n == 0:
    raise _Fallback
  where = {d: i for i, d in enumerate(disp) if d >= 0}
  targets = sorted({min(int(w), n - 1) for w in wanted})
  segments = _segments([where[t] for t in targets], packets, _nal_length_size(cc))
  tset = set(targets)
  got: dict[int, np.ndarray] = {}

  def keep(frames) -> None:
    for frame in frames:
      d = rank.get(frame.pts, -1)
      if d in tset and d not in got:
        got[d] = _to_array(frame)

  for k, (start, end) in enumerate(segments):
    if k:
      cc.flush_buffers()  # the next segment starts at an IDR: nothing carries over
    mode = ""
    for i in range(start, end + 1):
      # Unwanted non-reference pictures are dropped by the decoder (after their slice header).
      want = "DEFAULT" if disp[i] in tset else "NONREF"
      if want != mode:
        cc.skip_frame = mode = want
      keep(cc.decode(packets[i]))
    keep(cc.decode(None))  # drain the frames still held for reordering
  if len(got) != len(tset):
    raise _Fallback
  return got, min(int(wanted[-1]), n - 1), length, indices


def _segments(ends: list[int], packets: list, nal_length_size: int) -> list[tuple[int, int]]:
  """Packet ranges (decode order, inclusive) to decode: from the last IDR at or before each
  wanted packet to that packet; overlapping or touching ranges are merged."""
  idr: dict[int, bool] = {}

  def is_idr(i: int) -> bool:
    if i not in idr:
      idr[i] = packets[i].is_keyframe and _h264_is_idr(bytes(packets[i]), nal_length_size)
    return idr[i]

  ranges = []
  for end in ends:
    start = end
    while start > 0 and not is_idr(start):
      start -= 1
    ranges.append((start, end))
  merged: list[tuple[int, int]] = []
  for start, end in sorted(ranges):
    if merged and start <= merged[-1][1] + 1:
      merged[-1] = (merged[-1][0], max(merged[-1][1], end))
    else:
      merged.append((start, end))
  return merged


def _nal_length_size(cc) -> int:
  """NAL length-prefix size from an avcC extradata record (MP4); 0 = Annex B start codes."""
  extra = cc.extradata or b""
  if len(extra) >= 7 and extra[0] == 1:
    return (extra[4] & 3) + 1
  return 0


def _nal_header_bytes(data: bytes, nal_length_size: int) -> Iterator[int]:
  """The first byte of every NAL unit in an H.264 access unit."""
  if nal_length_size:
    i = 0
    while i + nal_length_size < len(data):
      size = int.from_bytes(data[i : i + nal_length_size], "big")
      yield data[i + nal_length_size]
      i += nal_length_size + size
  else:
    i = data.find(b"\x00\x00\x01")
    while 0 <= i < len(data) - 3:
      yield data[i + 3]
      i = data.find(b"\x00\x00\x01", i + 3)


def _h264_is_idr(data: bytes, nal_length_size: int) -> bool:
  """True if the access unit holds an IDR slice (nal_unit_type 5). A keyframe that is not an
  IDR (open GOP recovery point) may be followed by pictures that refer to earlier ones, so
  decoding never starts there."""
  return any(b & 0x1F == 5 for b in _nal_header_bytes(data, nal_length_size))


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


def decode_image(data: bytes, bgr: bool, max_pixels: int, label: str) -> np.ndarray:
  """Decode image bytes to uint8 ``[H, W, 3]`` (RGB, or BGR with ``bgr``).

  Complete RGB/greyscale JPEGs are decoded by OpenCV when it is installed: the same libjpeg-turbo
  computation as PIL's (islow IDCT, fancy upsampling; tests/test_data_video.py compares them
  bit for bit) writing packed RGB (or BGR) directly, ~20% less time per frame than PIL's decode
  plus its RGBX->RGB copy. PIL reads the header first (size limit, mode) and decodes everything
  else, including truncated files (no end-of-image marker), which it reports as errors.
  """
  with Image.open(io.BytesIO(data)) as im:
    if im.width * im.height > max_pixels:
      raise DecodeError("too_large", label, f"{im.width}x{im.height}")
    cv2 = optional_cv2() if im.format == "JPEG" and im.mode in ("RGB", "L") else None
    if cv2 is not None and data[-2:] == b"\xff\xd9":
      order = cv2.IMREAD_COLOR_BGR if bgr else cv2.IMREAD_COLOR_RGB
      flags = order | cv2.IMREAD_IGNORE_ORIENTATION  # PIL does not apply EXIF rotation either
      arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
      if arr is not None and arr.shape == (im.height, im.width, 3):
        return arr
    arr = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
  return arr[..., ::-1] if bgr else arr


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
  paths = [os.path.join(folder, template.format(int(n))) for n in frame_numbers]
  return read_image_files(paths, label=folder, bgr=bgr, max_pixels=max_pixels)


def read_image_files(
  paths: Sequence[str], *, label: str, bgr: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
  """uint8 ``[T, H, W, 3]`` of the image files ``paths`` (each distinct file decoded once).
  Failures are :class:`DecodeError` naming the file; frames of different sizes name ``label``."""
  cache: dict[str, np.ndarray] = {}
  for path in paths:
    if path in cache:
      continue
    try:
      cache[path] = decode_image(read_file_bytes(path), bgr, max_pixels, path)
    except DecodeError:
      raise
    except PermissionError as e:
      raise DecodeError("permission", path) from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
      raise DecodeError("unreadable", path, str(e)) from e
  out = [cache[p] for p in paths]
  shapes = {a.shape for a in out}
  if len(shapes) > 1:
    raise DecodeError("unreadable", label, f"frames of different sizes {sorted(shapes)}")
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
        cache[i] = decode_image(jpegs[i], bgr, DEFAULT_MAX_PIXELS, label)
      except DecodeError:
        raise
      except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DecodeError("unreadable", label, f"frame {i}: {e}") from e
    out.append(cache[i])
  return np.ascontiguousarray(np.stack(out))
