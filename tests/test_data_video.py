"""Decoding: exact frames from a lossless PyAV-written video (sequential and seek paths)."""

import av
import numpy as np
import pytest
from PIL import Image

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


@pytest.mark.parametrize("seek_threshold", [None, 5, 30])
def test_decoded_frames_equal_written(lossless_video, seek_threshold):
  path, frames = lossless_video
  for idx in ([0, 1, 1, 2], [3, 40, 41, 97, 98, 149], [120, 121, 149], [0, 149]):
    clip = V.read_video(path, lambda n, idx=idx: np.array(idx), seek_threshold=seek_threshold)
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
    clip = V.read_video(path, lambda n: np.array(idx), seek_threshold=thr)
    np.testing.assert_array_equal(clip.frames, frames[idx])


@pytest.mark.parametrize("threads,count", [("NONE", 0), ("SLICE", 0), ("AUTO", 1), ("FRAME", 2)])
def test_decoder_threading_does_not_change_frames(lossless_video, threads, count):
  path, frames = lossless_video
  idx = np.array([0, 3, 3, 40, 77, 149])
  clip = V.read_video(path, lambda n: idx, threads=threads, thread_count=count)
  np.testing.assert_array_equal(clip.frames, frames[idx])
