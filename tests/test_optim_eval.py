"""Optimizer recipe facts (weight-decay groups, frozen backbone) and multi-view aggregation."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import uniformerv2_jax as u
from tests.conftest import FIXTURES
from uniformerv2_jax.evaluate import ViewAccumulator, summarize
from uniformerv2_jax.mapping import entries
from uniformerv2_jax.model import ModelConfig, create_model
from uniformerv2_jax.optim import OptimConfig, make_optimizer, weight_decay_mask
from uniformerv2_jax.steps import init_train_state, make_train_step


def test_weight_decay_groups_match_the_official_optimizer():
  """Every official parameter falls in the official group: decay 0.05 iff in that group."""
  cfg_json = json.loads((FIXTURES / "train_step_ssv2" / "config.json").read_text())
  decayed = {n for g in cfg_json["param_groups"] if g["weight_decay"] > 0 for n in g["names"]}
  not_decayed = {n for g in cfg_json["param_groups"] if g["weight_decay"] == 0
                 for n in g["names"]}
  model = u.load_official(FIXTURES / "tiny_ssv2" / "model.npz", cfg_json)
  mask = weight_decay_mask(model)
  flat = {tuple(str(getattr(k, "key", k)) for k in p): bool(v)
          for p, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(mask))[0]}
  checked = 0
  for e in entries(model.cfg):
    name = "backbone." + e.key
    if name in decayed or name in not_decayed:
      assert flat[e.rule.flax] == (name in decayed), name
      checked += 1
  assert checked == len(decayed) + len(not_decayed) == 171


def _tiny_frozen_cfg():
  return ModelConfig(num_classes=5, num_frames=2, input_resolution=16, patch_size=8, width=16,
                     layers=2, heads=2, return_list=(1,), n_layers=1, n_dim=16, n_head=2,
                     mlp_dropout=(0.0,), cls_dropout=0.0, frozen=True)


def test_frozen_recipe_leaves_the_backbone_bit_unchanged():
  cfg = _tiny_frozen_cfg()
  model = create_model(cfg, seed=1)
  oc = OptimConfig(base_lr=1e-2, steps_per_epoch=1, epochs=2, warmup_epochs=0,
                   frozen_backbone=True)
  tx = make_optimizer(oc, nnx.state(model, nnx.Param))
  graphdef, other, state = init_train_state(model, tx, seed=0)
  before = nnx.to_pure_dict(state.params)
  step = jax.jit(make_train_step(graphdef, other, tx))
  batch = {"video": jnp.asarray(np.random.default_rng(0).standard_normal((2, 2, 16, 16, 3)),
                                jnp.float32), "label": jnp.asarray([1, 3])}
  state, _ = step(state, batch)
  after = nnx.to_pure_dict(state.params)
  for name in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "resblocks"):
    for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name]), strict=True):
      np.testing.assert_array_equal(a, b, err_msg=name)
  changed = [k for k in ("dec", "dpe", "head", "head_norm")
             if any(not np.array_equal(a, b) for a, b in
                    zip(jax.tree.leaves(before[k]), jax.tree.leaves(after[k]), strict=True))]
  assert set(changed) == {"dec", "dpe", "head", "head_norm"}


def _optax_chain(oc: OptimConfig, params, num_layers: int):
  """The recipe as the plain optax chain: the reference the fused update must reproduce."""
  from uniformerv2_jax.optim import layer_lr_scales, lr_schedule, trainable_labels

  parts = [optax.clip_by_global_norm(oc.clip_norm),
           optax.scale_by_adam(b1=oc.b1, b2=oc.b2, eps=oc.eps),
           optax.add_decayed_weights(oc.weight_decay, mask=weight_decay_mask(params))]
  if oc.layer_decay:
    scales = layer_lr_scales(params, num_layers, oc.layer_decay)
    parts.append(optax.GradientTransformation(
      lambda p: optax.EmptyState(),
      lambda upd, s, p=None: (jax.tree.map(lambda a, b: a * b, upd, scales), s)))
  parts.append(optax.scale_by_learning_rate(lr_schedule(oc)))
  tx = optax.chain(*parts)
  if oc.frozen_backbone:
    tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()},
                               trainable_labels(params, True))
  return tx


@pytest.mark.parametrize("frozen,layer_decay", [(False, None), (True, None), (False, 0.75)])
def test_fused_update_equals_the_optax_chain(frozen, layer_decay):
  """make_optimizer's one-expression-per-leaf AdamW reproduces clip -> Adam -> decoupled decay
  -> (layer scales) -> LR of optax over steps that clip and steps that do not (its clip factor
  is the official min(1, max_norm / (norm + 1e-6)), optax's has no 1e-6)."""
  cfg = _tiny_frozen_cfg().replace(frozen=frozen)
  params = nnx.state(create_model(cfg, seed=3), nnx.Param)
  oc = OptimConfig(base_lr=1e-2, steps_per_epoch=2, epochs=4, warmup_epochs=1, clip_norm=1.0,
                   frozen_backbone=frozen, layer_decay=layer_decay)
  fused, ref = make_optimizer(oc, params, num_layers=cfg.layers), _optax_chain(oc, params, 2)
  rng = np.random.default_rng(0)
  pf, sf, pr, sr = params, fused.init(params), params, ref.init(params)
  for step in range(6):
    scale = 0.01 if step % 2 else 10.0  # global norm below / above the clip
    grads = jax.tree.map(lambda p, s=scale: jnp.asarray(s * rng.standard_normal(p.shape), p.dtype),
                         params)
    uf, sf = jax.jit(fused.update)(grads, sf, pf)
    ur, sr = jax.jit(ref.update)(grads, sr, pr)
    for a, b in zip(jax.tree.leaves(uf), jax.tree.leaves(ur), strict=True):
      # Rounding-level differences only: the clip factor differs by the official 1e-6 in the
      # norm's denominator (~1e-7 relative here); 1e-6 of the leaf's largest update.
      np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6 * np.abs(b).max(),
                                 err_msg=f"step {step}")
    pf, pr = optax.apply_updates(pf, uf), optax.apply_updates(pr, ur)
  assert int(sf.count) == 6


def _views(num_videos, views, k, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.standard_normal((num_videos, views, k))
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  labels = rng.integers(0, k, num_videos)
  return probs, labels


def test_multiview_aggregation_equals_numpy_reference_for_any_batching():
  n, views, k = 7, 6, 9
  probs, labels = _views(n, views, k)
  ref_scores = probs.sum(1)  # softmax per view, summed (official TEST.ADD_SOFTMAX)
  ref = summarize(ref_scores, labels)
  order = np.argsort(-ref_scores, 1)
  assert ref["top1"] == np.mean(order[:, 0] == labels)
  assert ref["top5"] == np.mean([labels[i] in order[i, :5] for i in range(n)])
  items = [(v, w) for v in range(n) for w in range(views)]
  for batch in (1, 3, 8):
    acc = ViewAccumulator(n, k, views)
    padded = items + [(-1, -1)] * (-len(items) % batch)
    for s in range(0, len(padded), batch):
      chunk = padded[s : s + batch]
      vid = np.array([v for v, _ in chunk])
      view = np.array([w for _, w in chunk])
      valid = vid >= 0
      p = np.stack([probs[v, w] if v >= 0 else np.full(k, 1.0 / k) for v, w in chunk])
      acc.add(p, vid, view, valid, np.where(valid, labels[vid], 0))
    np.testing.assert_allclose(acc.scores, ref_scores, rtol=1e-12)
    assert acc.summary() == ref


def test_bad_videos_are_excluded_not_counted():
  n, views, k = 4, 2, 3
  probs, labels = _views(n, views, k, seed=1)
  acc = ViewAccumulator(n, k, views)
  for v in range(n):
    for w in range(views):
      acc.add(probs[v, w][None], np.array([v]), np.array([w]), np.array([v != 2]),
              labels[[v]])
  s = acc.summary()
  assert s["num_videos"] == 3
  assert s == summarize(probs.sum(1)[[0, 1, 3]], labels[[0, 1, 3]])
