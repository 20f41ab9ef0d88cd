"""Temporal sampling against the official index tables (tests/fixtures/data_sampling)."""


import numpy as np
import pytest

from tests.conftest import sampling_fixture
from uniformerv2_jax.data import sampling

_load = sampling_fixture


def test_kinetics_test_indices_exact():
  entries = _load("kinetics_sparse.json")["test"]["entries"]
  assert len(entries) > 100
  for e in entries:
    for v, expected in enumerate(e["indices"]):
      got = sampling.sparse_test_indices(e["video_length"], e["num_frames"], v, e["num_clips"])
      assert got.tolist() == expected, e


def test_kinetics_val_indices_exact():
  for e in _load("kinetics_sparse.json")["val"]["entries"]:
    got = sampling.sparse_test_indices(e["video_length"], e["num_frames"], 0, 1)
    assert got.tolist() == e["indices"], e


def test_sth_test_and_val_frame_numbers_exact():
  d = _load("sth.json")
  for e in d["test"]["entries"]:
    for v, expected in enumerate(e["frame_numbers"]):
      got = sampling.sparse_test_indices(
        e["video_length"], e["num_frames"], v, e["num_clips"], index_base=1
      )
      assert got.tolist() == expected, e
  for e in d["val"]["entries"]:
    got = sampling.sparse_test_indices(
      e["video_length"], e["num_frames"], 0, e["TEST.NUM_ENSEMBLE_VIEWS"], index_base=1
    )
    assert got.tolist() == e["frame_numbers"], e


@pytest.mark.parametrize(
  ("name", "key", "base"),
  [("kinetics_sparse.json", "segment_min_max", 0), ("sth.json", "segment_min_max_frame_number", 1)],
)
def test_train_bounds(name, key, base):
  rng = np.random.default_rng(0)
  for e in _load(name)["train"]["entries"]:
    bounds = np.array(e[key])
    draws = np.stack(
      [
        sampling.sparse_train_indices(e["video_length"], e["num_frames"], rng, base)
        for _ in range(400)
      ]
    )
    assert (draws >= bounds[:, 0]).all() and (draws <= bounds[:, 1]).all(), e
    assert (draws.min(0) == bounds[:, 0]).all() and (draws.max(0) == bounds[:, 1]).all(), e
    assert (np.diff(draws, axis=1) >= 0).all()


def test_half_even_quirks():
  assert sampling.sparse_test_indices(5, 8).tolist() == [0, 0, 1, 2, 2, 2, 3, 4]
  assert sampling.sparse_test_indices(8, 8).tolist() == [0, 1, 2, 3, 4, 4, 5, 6]
  assert sampling.sparse_test_indices(1, 8).tolist() == [0] * 8


def test_dense_sampling():
  rng = np.random.default_rng(0)
  for _ in range(50):
    idx = sampling.dense_train_indices(300, 8, 8, rng)
    assert (np.diff(idx) == 8).all() and idx[0] >= 0 and idx[-1] < 300
  starts = {int(sampling.dense_train_indices(300, 8, 8, rng)[0]) for _ in range(500)}
  assert min(starts) == 0 or max(starts) == 300 - 57
  # Short video: clamp or loop.
  assert sampling.dense_train_indices(10, 4, 4, rng).tolist() == [0, 4, 8, 9]
  assert sampling.dense_train_indices(10, 4, 4, rng, "loop").tolist() == [0, 4, 8, 2]
  # Test clips: first and last possible starts, evenly spaced.
  views = [sampling.dense_test_indices(100, 4, 2, v, 3)[0] for v in range(3)]
  assert views == [0, 46, 93]
  assert sampling.dense_test_indices(100, 4, 2, 0, 1)[0] == 46


def test_temporal_downsample_helpers():
  assert sampling.frames_to_sample(8, True) == 16
  assert sampling.frames_to_sample(8, False) == 8
  assert sampling.validate_num_frames(16, True) == 16
  assert sampling.validate_num_frames(7, False) == 7
  with pytest.raises(ValueError, match="even"):
    sampling.validate_num_frames(7, True)
