"""``model(x)`` on a loaded model (the README's Python API) runs one compiled program: the same
numbers as the op-by-op forward, one compilation per input shape, the current parameters on
every call, and the plain forward inside the caller's own transformations."""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import pytest
from flax import nnx

import uniformerv2_jax as u
from tests.conftest import FIXTURES
from uniformerv2_jax.model import compiled_eval_forward

FIXTURE = FIXTURES / "tiny_k400"
EPS = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def model():
  return u.load_official(FIXTURE / "model.pth", FIXTURE / "config.json")


@pytest.fixture(scope="module")
def video():
  # Official [B, 3, T, H, W] -> ours [B, T, H, W, 3]; NumPy, so building it compiles nothing.
  return np.load(FIXTURE / "input.npy").transpose(0, 2, 3, 4, 1).astype(np.float32)


@contextlib.contextmanager
def count_compilations():
  """Counts XLA backend compilations while the block runs (``len`` of the yielded list)."""
  seen: list[float] = []

  def listener(event: str, duration: float, **_) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
      seen.append(duration)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield seen
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def _close(got, want):
  """Equal up to float32 rounding of a differently fused evaluation order: a few hundred ulps
  of the largest magnitude (the tiny model's activations are O(1) after each LayerNorm)."""
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=256 * EPS * max(np.abs(want).max(), 1.0))


def test_compiled_call_matches_the_op_by_op_forward(model, video):
  logits, inter = model(video, return_intermediates=True)
  eager_logits, eager_inter = model.forward(video, return_intermediates=True)
  assert isinstance(logits, jax.Array) and logits.dtype == np.float32
  _close(logits, eager_logits)
  assert set(inter) == set(eager_inter)
  for name in inter:
    _close(inter[name], eager_inter[name])
  plain = model(video)
  _close(plain, eager_logits)
  feat_logits, feats = model(video, return_features=True)
  _close(feat_logits, eager_logits)
  _close(feats, eager_inter["fused"])
  # The official logits of the fixture, as the float32 parity test checks them.
  np.testing.assert_allclose(plain, np.load(FIXTURE / "logits.npy"), atol=1e-4, rtol=1e-4)


def test_one_compilation_per_input_shape(model, video):
  model(video)  # compiled here or by an earlier test: either way warm afterwards
  with count_compilations() as compiles:
    model(video)
  assert len(compiles) == 0, "a second call with the same input shape compiled again"
  size = compiled_eval_forward._cache_size()
  bigger = np.concatenate([video, video[:1]])
  with count_compilations() as compiles:
    model(bigger)
  assert len(compiles) == 1, f"a new batch size compiled {len(compiles)} times"
  assert compiled_eval_forward._cache_size() == size + 1
  with count_compilations() as compiles:
    model(bigger)
    model(video)
  assert len(compiles) == 0


def test_parameter_edits_are_seen_by_the_next_call():
  model = u.load_official(FIXTURE / "model.pth", FIXTURE / "config.json")
  x = np.load(FIXTURE / "input.npy").transpose(0, 2, 3, 4, 1).astype(np.float32)
  before = np.asarray(model(x))
  model.head.bias[...] = model.head.bias[...] + 1.0
  after = np.asarray(model(x))
  _close(after, before + 1.0)
  # A whole-variable replacement too (a new array object, not an in-place update).
  model.balance.set_value(model.balance[...] + 3.0)
  _close(model(x), model.forward(x))
  assert np.abs(np.asarray(model(x)) - after).max() > 1e-3


def test_training_and_traced_calls_run_the_plain_forward(model, video, monkeypatch):
  """Training mode and calls inside the caller's transformations never reach the compiled
  dispatch (that would nest a second program, or capture traced parameters)."""
  from uniformerv2_jax import model as model_lib

  dispatched = []

  def counting(*args, **kwargs):
    dispatched.append(1)
    return compiled_eval_forward(*args, **kwargs)

  monkeypatch.setattr(model_lib, "compiled_eval_forward", counting)
  graphdef, state = nnx.split(model)

  @jax.jit
  def traced(state, x):
    return nnx.merge(graphdef, state)(x)

  _close(traced(state, video[:1]), model.forward(video[:1]))
  # Concrete input, traced parameters.
  jax.eval_shape(lambda s: nnx.merge(graphdef, s)(video[:1, :2]), state)
  training = u.load_official(FIXTURE / "model.pth", FIXTURE / "config.json")
  training.train()
  training(video[:1, :2], key=jax.random.key(0))
  assert not dispatched
  model(video[:1, :2])  # the counter does see the eval call outside any transformation
  assert len(dispatched) == 1
