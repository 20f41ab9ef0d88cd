"""Temporal sampling against the official index tables (tests/fixtures/data_sampling)."""

import math
from fractions import Fraction

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


# Dense clips follow SlowFast's decoder (slowfast/datasets/decoder.py), the loader the official
# UniFormerV2 code forks, with the official configs' DATA.USE_OFFSET_SAMPLING=True. Its two
# functions are written out below from their definitions, with clip_size = sampling_rate *
# num_frames (video fps == target_fps).


def _slowfast_start(video_size, clip_size, clip_idx, num_clips_uniform):
  """get_start_end_idx(..., use_offset=True) for a test view (clip_idx >= 0)."""
  delta = max(video_size - clip_size, 0)
  if num_clips_uniform == 1:
    return math.floor(delta / 2)
  return clip_idx * math.floor(delta / (num_clips_uniform - 1))


def _slowfast_temporal_sampling(video_size, start_idx, clip_size, num_samples):
  """floor(linspace(start, start + clip_size - 1, num_samples)) clamped to [0, len - 1], with
  the linspace evaluated in exact rational arithmetic."""
  end_idx = Fraction(start_idx) + clip_size - 1
  out = []
  for i in range(num_samples):
    x = Fraction(start_idx) if num_samples == 1 else (
      Fraction(start_idx) + (end_idx - Fraction(start_idx)) * i / (num_samples - 1))
    out.append(min(max(math.floor(x), 0), video_size - 1))
  return out


# (video length, frames, sampling rate, views): delta > 0 with exact and inexact divisions,
# delta == 0, delta < 0, a single view, a single frame, and (400, 22, 16) where float32
# linspace truncates an exactly integral frame one lower.
_DENSE_CASES = [(100, 4, 2, 3), (300, 8, 8, 3), (95, 8, 2, 4), (1000, 16, 4, 10), (64, 8, 8, 3),
                (50, 8, 8, 2), (10, 4, 4, 1), (100, 4, 2, 1), (101, 4, 2, 1), (30, 1, 4, 3),
                (400, 22, 16, 2), (7, 1, 1, 1)]


@pytest.mark.parametrize(("length", "frames", "rate", "views"), _DENSE_CASES)
def test_dense_test_views_equal_slowfast(length, frames, rate, views):
  clip_size = rate * frames
  for v in range(views):
    start = _slowfast_start(length, clip_size, v, views)
    expected = _slowfast_temporal_sampling(length, start, clip_size, frames)
    got = sampling.dense_test_indices(length, frames, rate, v, views)
    assert got.tolist() == expected, (v, start)


def test_dense_test_starts_named_values():
  # The offset starts spelled out: delta = 100 - 8 = 92 -> 0, 46, 92 (not 93 = last start
  # that still fits 7 frames); 95 - 16 = 79 -> floor(79 / 3) = 26 -> 0, 26, 52, 78.
  assert [int(sampling.dense_test_indices(100, 4, 2, v, 3)[0]) for v in range(3)] == [0, 46, 92]
  assert [int(sampling.dense_test_indices(95, 8, 2, v, 4)[0]) for v in range(4)] == [0, 26, 52,
                                                                                     78]
  assert int(sampling.dense_test_indices(101, 4, 2, 0, 1)[0]) == 46  # floor(93 / 2)


def test_dense_exact_linspace_vs_torch_float32():
  """The documented deviation from SlowFast's float32 torch.linspace: only where the exact value
  is an integer, and then torch is exactly one frame lower."""
  import torch

  rng = np.random.default_rng(1)
  deviations = 0
  for frames in range(2, 33):
    for rate in range(1, 17):
      clip_size = rate * frames
      length = clip_size + int(rng.integers(0, 2000))
      for v in range(3):
        start = _slowfast_start(length, clip_size, v, 3)
        ref = torch.linspace(start, start + clip_size - 1, frames)
        ref = torch.clamp(ref, 0, length - 1).long().numpy()
        got = sampling.dense_test_indices(length, frames, rate, v, 3)
        exact = [Fraction(start) + Fraction(i * (clip_size - 1), frames - 1)
                 for i in range(frames)]
        for g, r, x in zip(got.tolist(), ref.tolist(), exact, strict=True):
          if g != r:
            deviations += 1
            assert x.denominator == 1 and r == g - 1, (frames, rate, start)
  assert deviations < 0.01 * 31 * 16 * 3 * 16


@pytest.mark.parametrize(("length", "frames", "rate"),
                         [(300, 8, 8), (100, 4, 2), (95, 8, 2), (40, 6, 3), (64, 8, 8), (20, 8, 8)])
def test_dense_train_range(length, frames, rate):
  """clip_idx = -1: start ~ U(0, delta) real, so the first frame takes every value 0..delta-1
  (0 when delta = 0) and frame i ranges over [floor(c_i), ceil(delta + c_i) - 1] with
  c_i = i (rate T - 1) / (T - 1); each draw is SlowFast's temporal sampling of its own start."""
  clip_size = rate * frames
  delta = max(length - clip_size, 0)
  rng = np.random.default_rng(0)
  draws = np.stack([sampling.dense_train_indices(length, frames, rate, rng) for _ in range(4000)])
  if delta == 0:
    expected_first = {0}
  else:
    expected_first = set(range(delta))
  assert set(draws[:, 0].tolist()) == expected_first
  c = [Fraction(i * (clip_size - 1), frames - 1) for i in range(frames)]
  lo = [min(math.floor(x), length - 1) for x in c]
  hi = [min(math.ceil(delta + x) - 1 if delta else math.floor(x), length - 1) for x in c]
  assert draws.min(0).tolist() == lo
  assert draws.max(0).tolist() == hi
  # An integer start reproduces the reference exactly; a real start lies within one frame.
  for d in draws[:50]:
    ref = _slowfast_temporal_sampling(length, int(d[0]), clip_size, frames)
    assert ((d - np.array(ref) >= 0) & (d - np.array(ref) <= 1)).all()


def test_dense_short_video_clamp_and_loop():
  # delta = 0: start 0, floor(linspace(0, 15, 4)) = 0, 5, 10, 15 -> clamped to 9, or wrapped mod 10.
  rng = np.random.default_rng(0)
  assert sampling.dense_train_indices(10, 4, 4, rng).tolist() == \
    _slowfast_temporal_sampling(10, 0, 16, 4) == [0, 5, 9, 9]
  assert sampling.dense_train_indices(10, 4, 4, rng, "loop").tolist() == [0, 5, 0, 5]
  assert sampling.dense_test_indices(10, 4, 4, 0, 3, "loop").tolist() == [0, 5, 0, 5]


def test_temporal_downsample_helpers():
  assert sampling.frames_to_sample(8, True) == 16
  assert sampling.frames_to_sample(8, False) == 8
  assert sampling.validate_num_frames(16, True) == 16
  assert sampling.validate_num_frames(7, False) == 7
  with pytest.raises(ValueError, match="even"):
    sampling.validate_num_frames(7, True)
