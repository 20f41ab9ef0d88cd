"""The training step against the official one (train_step_ssv2 fixture: two AdamW steps with
clipping, weight-decay groups, LR schedule and BatchNorm updates), and the LR schedule."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import uniformerv2_jax as u
from tests.conftest import FIXTURES
from tests.test_model import channels_last
from uniformerv2_jax.mapping import flax_from_torch, model_from_flax, strip_prefix, torch_from_flax
from uniformerv2_jax.optim import OptimConfig, lr_schedule, make_optimizer, official_lr
from uniformerv2_jax.steps import (
  cross_entropy,
  init_train_state,
  make_train_step,
  merge_model,
  split_model,
)

D = FIXTURES / "train_step_ssv2"


def _torch_named(*states, cfg):
  """Flax params (+ buffers) -> official names, for comparison with the fixture files."""
  flat = {}
  for tree in states:
    for path, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(tree))[0]:
      names = tuple(str(getattr(k, "key", k)) for k in path)
      if names[0] != "rngs":
        flat[names] = np.asarray(v)
  return torch_from_flax(flat, cfg, partial=True)


def test_lr_schedule_matches_official_values():
  info = json.loads((D / "lr.json").read_text())
  for name in ("fixture", "official_ssv2_b16_f16x224"):
    f = info[name]
    c = OptimConfig(base_lr=f["BASE_LR"], steps_per_epoch=4, epochs=f["MAX_EPOCH"],
                    warmup_epochs=f["WARMUP_EPOCHS"])
    sched = lr_schedule(c)
    for epoch, want in f["lr_at_epoch"].items():
      assert official_lr(float(epoch), c) == pytest.approx(want, rel=1e-12)
      got = float(sched(float(epoch) * 4))  # step = epoch * steps_per_epoch
      assert got == pytest.approx(want, rel=2e-6, abs=1e-12), epoch


def test_two_official_training_steps():
  cfg_json = json.loads((D / "config.json").read_text())
  steps = cfg_json["steps"]
  # The steps start from the tiny_ssv2 weights (the fixture does not store a second copy).
  model = u.load_official(FIXTURES / "tiny_ssv2" / "model.npz", cfg_json)
  cfg = model.cfg
  # The fixture's two steps sit at epochs 2.5 and 12.25 (not neighbours): feed those LRs.
  lrs = jnp.asarray([s["lr"] for s in steps], jnp.float32)
  oc = OptimConfig(base_lr=1e-3, steps_per_epoch=1, epochs=22, warmup_epochs=5)
  tx = make_optimizer(oc, nnx.state(model, nnx.Param), schedule=lambda count: lrs[count])
  graphdef, other, state = init_train_state(model, tx, seed=0)
  train_step = make_train_step(graphdef, other, tx)
  batch = {"video": channels_last(np.load(D / "input.npy")),
           "label": jnp.asarray(np.load(D / "labels.npy"), jnp.int32)}
  noise = {k: slice(*v) for k, v in cfg_json["noise_elements"]["slices"].items()}
  files = [("loss.npy", "grads.npz", "params_after.npz", "bn_after.npz"),
           ("step2_loss.npy", "step2_grads.npz", "step2_params_after.npz",
            "step2_bn_after.npz")]
  grad_fn = jax.grad(lambda p, s: _loss(graphdef, other, p, s, batch))

  # The gradients and the step in one program: one compile instead of two (XLA shares the
  # forward pass; each output is computed as by itself).
  @jax.jit
  def grads_and_step(state):
    return grad_fn(state.params, state.batch_stats), train_step(state, batch)

  for i, (loss_f, grads_f, params_f, bn_f) in enumerate(files):
    if i == 1:
      # Step 2 starts from the official step-1 result (as the fixture's step-2 files do), with
      # our Adam moments: elements whose gradient is round-off (|g| ~ 1e-9) get arbitrary
      # +-lr Adam updates in any implementation, and would otherwise leak into step 2.
      official = {**np.load(D / "params_after.npz"), **np.load(D / "bn_after.npz")}
      start = model_from_flax(flax_from_torch(strip_prefix(official), cfg), cfg)
      _, params, batch_stats, _ = split_model(start)
      state = state.replace(params=params, batch_stats=batch_stats)
    g_flax, (state, metrics) = grads_and_step(state)
    g = _torch_named(g_flax, cfg=cfg)
    assert float(metrics["loss"]) == pytest.approx(float(np.load(D / loss_f)), abs=2e-5)
    assert float(metrics["grad_norm"]) == pytest.approx(steps[i]["grad_norm"], rel=1e-5)
    want_g = np.load(D / grads_f)
    for k in want_g.files:
      a, b = g[k].copy(), want_g[k].copy()
      if k in noise:  # mathematically zero: round-off only
        a[noise[k]] = b[noise[k]] = 0
      err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)
      assert err < 1e-4, f"step {i + 1} grad {k}: relative error {err:.2e}"
    after = _torch_named(state.params, state.batch_stats, cfg=cfg)
    want_p, want_bn = np.load(D / params_f), np.load(D / bn_f)
    for k in want_p.files:
      a, b = after[k], want_p[k]
      keep = np.abs(want_g[k]) > 1e-6  # Adam normalises away tiny gradients' round-off
      if k in noise:
        keep[noise[k]] = False
      np.testing.assert_allclose(a[keep], b[keep], atol=2e-6, rtol=0,
                                 err_msg=f"step {i + 1} {k}")
    for k in want_bn.files:
      np.testing.assert_allclose(after[k], want_bn[k], atol=2e-5, rtol=1e-4,
                                 err_msg=f"step {i + 1} {k}")


def _loss(graphdef, other, params, batch_stats, batch):
  model = merge_model(graphdef, params, batch_stats, other)
  return cross_entropy(model(batch["video"], train=True), batch["label"])
