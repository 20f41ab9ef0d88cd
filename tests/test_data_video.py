"""Decoding: exact frames from a lossless PyAV-written video (selective, in-order and seek
paths); selective H.264 decoding equals a full decode bit for bit (B-frames, several GOPs, open
GOPs, decoder threads); OpenCV's JPEG decode equals PIL's."""

import io

import av
import numpy as np
import pytest
from PIL import Image

from uniformerv2_jax.data import sampling
from uniformerv2_jax.data import video as V


def _lossless_codec():
  for codec, ext, opts, pix in (
    ("libx264rgb", "mp4", {"crf": "0", "g": "10", "bf": "2"}, "rgb24"),
    ("ffv1", "mkv", {"g": "10"}, "bgr0"),
    ("png", "mov", {}, "rgb24"),
  ):
    if codec in av.codecs_available:
      return codec, ext, opts, pix
  pytest.fail("no lossless codec in the bundled FFmpeg (PyAV wheels ship libx264rgb)")


@pytest.fixture(scope="module")
def lossless_video(tmp_path_factory):
  codec, ext, opts, pix = _lossless_codec()
  frames = np.random.default_rng(0).integers(0, 256, (150, 24, 32, 3), dtype=np.uint8)
  path = str(tmp_path_factory.mktemp("vid") / f"lossless.{ext}")
  with av.open(path, "w") as c:
    s = c.add_stream(codec, rate=30, options=opts)
    s.width, s.height, s.pix_fmt = 32, 24, pix
    for f in frames:
      for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return path, frames


@pytest.mark.parametrize(
  "seek_threshold,selective", [(None, True), (None, False), (5, False), (30, False)]
)
def test_decoded_frames_equal_written(lossless_video, seek_threshold, selective):
  path, frames = lossless_video
  for idx in ([0, 1, 1, 2], [3, 40, 41, 97, 98, 149], [120, 121, 149], [0, 149]):
    clip = V.read_video(
      path, lambda n, idx=idx: np.array(idx), seek_threshold=seek_threshold, selective=selective
    )
    assert clip.num_frames == 150
    np.testing.assert_array_equal(clip.frames, frames[idx])


def test_indices_past_end_repeat_last_frame(lossless_video):
  path, frames = lossless_video
  clip = V.read_video(path, lambda n: np.array([148, 150, 151]))
  np.testing.assert_array_equal(clip.frames, frames[[148, 149, 149]])


def test_bytes_input(lossless_video):
  path, frames = lossless_video
  with open(path, "rb") as f:
    data = f.read()
  clip = V.read_video(data, lambda n: np.array([5, 77]))
  np.testing.assert_array_equal(clip.frames, frames[[5, 77]])


def test_too_large(lossless_video):
  path, _ = lossless_video
  with pytest.raises(V.DecodeError) as e:
    V.read_video(path, lambda n: np.array([0]), max_pixels=100)
  assert e.value.kind == "too_large"


def test_frame_folder_rgb_and_bgr(tmp_path):
  frames = np.random.default_rng(1).integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
  for i, f in enumerate(frames):
    Image.fromarray(f).save(tmp_path / f"img_{i + 1:05d}.png")
  rgb = V.read_frame_folder(str(tmp_path), [1, 3, 3], "img_{:05d}.png")
  np.testing.assert_array_equal(rgb, frames[[0, 2, 2]])
  bgr = V.read_frame_folder(str(tmp_path), [2], "img_{:05d}.png", bgr=True)
  np.testing.assert_array_equal(bgr, frames[[1]][..., ::-1])
  with pytest.raises(V.DecodeError) as e:
    V.read_frame_folder(str(tmp_path), [9], "img_{:05d}.png")
  assert e.value.kind == "missing"


def test_seek_with_gop_longer_than_threshold(tmp_path):
  """Smooth content keeps x264 from inserting keyframes, so GOP 30 > seek threshold 5."""
  codec, ext, opts, pix = _lossless_codec()
  if codec != "libx264rgb":
    pytest.fail("needs libx264rgb for a long GOP (PyAV wheels ship it)")
  y, x = np.mgrid[0:24, 0:32]
  frames = np.stack(
    [
      np.stack([(x * 4 + t) % 256, (y * 6 + 2 * t) % 256, np.full_like(x, 90)], -1)
      for t in range(90)
    ]
  ).astype(np.uint8)
  path = str(tmp_path / "smooth.mp4")
  with av.open(path, "w") as c:
    s = c.add_stream(codec, rate=30, options={"crf": "0", "g": "30", "sc_threshold": "0"})
    s.width, s.height, s.pix_fmt = 32, 24, pix
    for f in frames:
      for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  idx = [2, 20, 47, 48, 80, 89]
  for thr in (None, 5, 12):
    clip = V.read_video(path, lambda n: np.array(idx), seek_threshold=thr, selective=False)
    np.testing.assert_array_equal(clip.frames, frames[idx])


@pytest.mark.parametrize("threads,count", [("NONE", 0), ("SLICE", 0), ("AUTO", 1), ("FRAME", 2)])
def test_decoder_threading_does_not_change_frames(lossless_video, threads, count):
  path, frames = lossless_video
  idx = np.array([0, 3, 3, 40, 77, 149])
  clip = V.read_video(path, lambda n: idx, threads=threads, thread_count=count)
  np.testing.assert_array_equal(clip.frames, frames[idx])


# ----------------------------------------------------------------------------- selective H.264
def _moving_texture(n=90, h=48, w=64):
  """Smooth content moving slowly: x264 then uses B-frames, B-pyramid references and skips."""
  rng = np.random.default_rng(0)
  base = rng.integers(0, 256, (h // 4 + 2, w // 4 + 2, 3), dtype=np.uint8)
  tex = np.asarray(Image.fromarray(base).resize((w + 24, h + 24), Image.Resampling.BICUBIC))
  return np.stack(
    [
      tex[int(12 + 10 * np.sin(t / 9)) :][:h, int(12 + 10 * np.cos(t / 7)) :][:, :w]
      for t in range(n)
    ]
  )


def _h264(frames, opts) -> bytes:
  buf = io.BytesIO()
  with av.open(buf, "w", format="mp4") as c:
    s = c.add_stream("libx264", rate=30, options=opts)
    s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    s.codec_context.thread_type = "FRAME"  # no slices, like ordinary encodes
    for f in frames:
      for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return buf.getvalue()


# Closed GOPs of 15 (every keyframe an IDR); open GOPs of 30 (non-IDR keyframes, where decoding
# must not start). Both lossy yuv420p with B-frames, some of them references (B-pyramid).
H264_CASES = {
  "closed_gop15": {"g": "15", "bf": "3", "crf": "28"},
  "open_gop30": {"g": "30", "bf": "3", "crf": "28", "x264-params": "open-gop=1:keyint-min=30"},
}


@pytest.fixture(scope="module", params=sorted(H264_CASES))
def h264_video(request):
  data = _h264(_moving_texture(), H264_CASES[request.param])
  full = V.read_video(data, lambda n: np.arange(n), selective=False).frames
  assert len(full) == 90
  return data, full


def _no_fallback(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("the selective reader fell back to the in-order one")

  monkeypatch.setattr(V, "_read_in_order", fail)


def test_h264_test_videos_have_bframes_and_keyframe_kinds(h264_video):
  data, _ = h264_video
  with av.open(io.BytesIO(data)) as c:
    s = c.streams.video[0]
    packets = [p for p in c.demux(s) if p.size]
    nls = V._nal_length_size(s.codec_context)
    keys = [V._h264_is_idr(bytes(p), nls) for p in packets if p.is_keyframe]
    nonref = sum(
      next(b for b in V._nal_header_bytes(bytes(p), nls) if b & 0x1F in (1, 5)) >> 5 == 0
      for p in packets
    )
  assert len(keys) >= 3 and keys[0] and nonref >= 10
  with av.open(io.BytesIO(data)) as c:
    assert sum(f.pict_type == 3 for f in c.decode(video=0)) >= 20  # B-frames


@pytest.mark.parametrize("threads", ["NONE", "AUTO", "FRAME"])
def test_selective_equals_full_decode(h264_video, threads, monkeypatch):
  """Bit-identical frames at every sampled index: train/test sparse clips, dense clips,
  duplicates, single frames, both ends, and indices past the end (clamped)."""
  data, full = h264_video
  _no_fallback(monkeypatch)
  rng = np.random.default_rng(0)
  n = len(full)
  sets = [sampling.sparse_train_indices(n, 8, rng) for _ in range(12)]
  sets += [sampling.sparse_test_indices(n, 8, v, 4) for v in range(4)]
  sets += [sampling.dense_train_indices(n, 8, 4, rng) for _ in range(4)]
  sets += [np.array(i) for i in ([0], [89], [44, 44, 3], [88, 89, 90, 91], [15, 16, 29, 30, 31])]
  for idx in sets:
    clip = V.read_video(data, lambda length, idx=idx: idx, threads=threads)
    expect = np.minimum(idx, n - 1)
    np.testing.assert_array_equal(clip.indices, expect)
    np.testing.assert_array_equal(clip.frames, full[expect])


def test_selective_skips_gops_and_nonref_frames(h264_video):
  """The decode plan: a frame late in the video starts at an IDR after packet 0 (closed GOPs);
  frames in one GOP share one range; an open-GOP keyframe is never a start."""
  data, _ = h264_video
  with av.open(io.BytesIO(data)) as c:
    s = c.streams.video[0]
    packets = [p for p in c.demux(s) if p.size]
    nls = V._nal_length_size(s.codec_context)
  idr = [i for i, p in enumerate(packets) if p.is_keyframe and V._h264_is_idr(bytes(p), nls)]
  segs = V._segments([len(packets) - 1], packets, nls)
  assert segs == [(idr[-1], len(packets) - 1)]
  assert all(V._segments([e], packets, nls)[0][0] in idr for e in range(len(packets)))
  if len(idr) > 2:  # closed GOPs: wanted frames in the first and last GOP only
    assert V._segments([2, len(packets) - 1], packets, nls) == [
      (0, 2),
      (idr[-1], len(packets) - 1),
    ]


def test_selective_fallback_draws_indices_once(h264_video, monkeypatch):
  """When the selective reader gives up after drawing the indices, the in-order reader uses the
  same draw (sampling may consume random numbers)."""
  data, full = h264_video
  calls = []

  def draw(length):
    calls.append(length)
    return np.array([5, 50, 70])

  def give_up(*args, **kwargs):
    raise V._Fallback

  monkeypatch.setattr(V, "_segments", give_up)
  clip = V.read_video(data, draw)
  assert calls == [90]
  np.testing.assert_array_equal(clip.frames, full[[5, 50, 70]])


def test_selective_needs_h264_in_mp4(lossless_video, monkeypatch):
  """Other codecs/containers use the in-order reader (ffv1 in mkv, if that is the codec here)."""
  path, frames = lossless_video
  if path.endswith(".mp4"):  # libx264rgb: H.264 in MP4, read selectively
    _no_fallback(monkeypatch)
  clip = V.read_video(path, lambda n: np.array([7, 77, 149]))
  np.testing.assert_array_equal(clip.frames, frames[[7, 77, 149]])


# ----------------------------------------------------------------------------- JPEG decoding
@pytest.mark.parametrize("bgr", [False, True])
def test_opencv_jpeg_decode_equals_pil(bgr):
  import cv2  # noqa: F401  (a dependency: the test must fail, not skip, without it)
  rng = np.random.default_rng(0)
  smooth = _moving_texture(n=1, h=61, w=83)[0]
  noise = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
  for img in (smooth, noise, np.ascontiguousarray(smooth[:, :, :1].repeat(3, 2))):
    for quality, subsampling in ((90, 2), (75, 0), (95, 1)):
      for mode in ("RGB", "L"):
        buf = io.BytesIO()
        Image.fromarray(img).convert(mode).save(
          buf, format="JPEG", quality=quality, subsampling=subsampling
        )
        data = buf.getvalue()
        with Image.open(io.BytesIO(data)) as im:
          ref = np.asarray(im.convert("RGB"))
        got = V.decode_image(data, bgr, V.DEFAULT_MAX_PIXELS, "x")
        np.testing.assert_array_equal(got, ref[..., ::-1] if bgr else ref)


def test_truncated_jpeg_is_unreadable():
  buf = io.BytesIO()
  Image.fromarray(_moving_texture(n=1)[0]).save(buf, format="JPEG")
  data = buf.getvalue()
  with pytest.raises(V.DecodeError) as e:
    V.decode_jpeg_frames([data[: len(data) // 2]], np.array([0]))
  assert e.value.kind == "unreadable"
