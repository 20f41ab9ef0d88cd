"""The official optimisation recipe as an optax chain.

AdamW (0.9, 0.999, 1e-8), decoupled weight decay 0.05 on tensors with >= 2 dims only (the
official ``ZERO_WD_1D_PARAM`` groups: conv/linear weights, positional_embedding and
temporal_cls_token decay; biases, norms, class_embedding, balance and BatchNorm do not),
global-norm clipping at 20 over the trainable parameters, one learning rate for all groups
following linear warmup from 1e-6 then a half cosine to 1e-6, evaluated per step at the
fractional epoch. FROZEN recipes leave the CLIP backbone untouched (zero updates).
Optional: layer-wise LR decay and gradient accumulation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

# Parameters the official FROZEN recipes exclude from training (name substrings, official code).
FROZEN_PATTERNS = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "resblocks")


def weight_decay_mask(model_or_state: nnx.Module | nnx.State) -> Any:
  """The official rule as a pytree of bools over Params: decay iff the torch tensor has >= 2
  dims (conv/linear weights, positional_embedding, temporal_cls_token); never BatchNorm.

  Stacked collections carry one extra leading axis, which is not counted.
  """
  state = nnx.state(model_or_state, nnx.Param) if isinstance(model_or_state, nnx.Module) \
    else model_or_state

  def rule(path, leaf):
    keys = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
    keys = [str(k) for k in keys]
    ndim = len(np.shape(leaf)) - (1 if keys[0] in ("resblocks", "dpe", "dec") else 0)
    return ndim >= 2 and "bn" not in keys

  return jax.tree_util.tree_map_with_path(rule, state)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  base_lr: float
  steps_per_epoch: int
  epochs: float
  warmup_epochs: float
  warmup_start_lr: float = 1e-6
  end_lr: float = 1e-6
  weight_decay: float = 0.05
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  clip_norm: float | None = 20.0
  frozen_backbone: bool = False
  layer_decay: float | None = None  # e.g. 0.75; None = one LR for all (official)
  accumulate_steps: int = 1  # gradient accumulation over k micro-batches (optax.MultiSteps)


def official_lr(epoch: float, c: OptimConfig) -> float:
  """The official ``get_lr_at_epoch`` (cosine policy, COSINE_AFTER_WARMUP) in plain Python."""
  def cosine(e):
    off = c.warmup_epochs
    return c.end_lr + (c.base_lr - c.end_lr) * (
      math.cos(math.pi * (e - off) / (c.epochs - off)) + 1) * 0.5

  if epoch < c.warmup_epochs:
    return epoch * (cosine(c.warmup_epochs) - c.warmup_start_lr) / c.warmup_epochs \
      + c.warmup_start_lr
  return cosine(epoch)


def lr_schedule(c: OptimConfig) -> optax.Schedule:
  """Per-step LR at fractional epoch ``step / steps_per_epoch`` (what the official loop sets)."""
  spe = float(c.steps_per_epoch)

  def schedule(count):
    e = jnp.asarray(count, jnp.float32) / spe
    decay_len = max(c.epochs - c.warmup_epochs, 1e-12)
    # (cos(x) + 1) / 2 written as cos(x / 2)^2: no float32 cancellation near the end.
    cos = c.end_lr + (c.base_lr - c.end_lr) * jnp.square(
      jnp.cos(0.5 * jnp.pi * (e - c.warmup_epochs) / decay_len))
    if c.warmup_epochs <= 0:
      return cos
    warm = e * (c.base_lr - c.warmup_start_lr) / c.warmup_epochs + c.warmup_start_lr
    return jnp.where(e < c.warmup_epochs, warm, cos)

  return schedule


def _path_names(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def trainable_labels(params, frozen_backbone: bool):
  """'train' / 'freeze' per parameter (FROZEN recipes: the whole CLIP backbone is frozen)."""
  def label(path, _):
    names = _path_names(path)
    if frozen_backbone and names[0] in FROZEN_PATTERNS:
      return "freeze"
    return "train"

  return jax.tree_util.tree_map_with_path(label, params)


def layer_lr_scales(params, num_layers: int, decay: float):
  """Layer-wise LR decay (not in the official recipe; an option): the stem gets decay^(L+1),
  backbone layer i decay^(L-i) (broadcast over the stacked axis), the rest 1."""
  def scale(path, leaf):
    names = _path_names(path)
    if names[0] in ("conv1", "class_embedding", "positional_embedding", "ln_pre"):
      return jnp.full(leaf.shape, decay ** (num_layers + 1), leaf.dtype)
    if names[0] == "resblocks":
      per_layer = decay ** (num_layers - jnp.arange(num_layers, dtype=leaf.dtype))
      return jnp.broadcast_to(per_layer.reshape((-1,) + (1,) * (leaf.ndim - 1)), leaf.shape)
    return jnp.ones(leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(scale, params)


class AdamWState(NamedTuple):
  """State of :func:`fused_adamw`: steps taken and Adam's moments (None for frozen leaves)."""

  count: jax.Array
  mu: Any
  nu: Any


def fused_adamw(schedule: Callable, *, b1: float, b2: float, eps: float, weight_decay: float,
                decay_mask, clip_norm: float | None, trainable=None,
                lr_scales=None) -> optax.GradientTransformation:
  """``clip_by_global_norm -> scale_by_adam -> add_decayed_weights(decay_mask) -> [x lr_scales]
  -> scale_by_learning_rate(schedule)`` as one expression per parameter.

  The arithmetic of that optax chain, operation for operation, except the clipping, which
  follows the official ``clip_grad_norm_`` (tests/test_optim_eval.py compares the two over
  several steps; tests/test_train_step.py the official training steps). One expression per
  leaf because XLA:CPU ran the chain as separate passes over the 115M B/16 parameters: a B/16
  update took 210 ms instead of ~100 ms.
  ``trainable`` (a tree of bools, default all): leaves with False get zero updates and keep no
  moments, and the clipping norm is over the trainable gradients only (what
  ``optax.multi_transform`` with ``set_to_zero`` did). ``decay_mask``/``trainable``/``lr_scales``
  are trees shaped like the parameters.
  """

  def init(params):
    leaves, treedef = jax.tree.flatten(params)
    train = treedef.flatten_up_to(trainable) if trainable is not None else [True] * len(leaves)

    def moments():
      return treedef.unflatten([jnp.zeros_like(p) if t else None
                                for p, t in zip(leaves, train, strict=True)])

    return AdamWState(jnp.zeros([], jnp.int32), moments(), moments())

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("fused_adamw needs the params (weight decay)")
    g_leaves, treedef = jax.tree.flatten(grads)
    n = len(g_leaves)
    p_leaves = treedef.flatten_up_to(params)
    m_leaves = treedef.flatten_up_to(state.mu)
    v_leaves = treedef.flatten_up_to(state.nu)
    decay = treedef.flatten_up_to(decay_mask)
    train = treedef.flatten_up_to(trainable) if trainable is not None else [True] * n
    scales = treedef.flatten_up_to(lr_scales) if lr_scales is not None else [None] * n
    count_inc = optax.safe_increment(state.count)
    bc1, bc2 = 1 - b1 ** count_inc, 1 - b2 ** count_inc
    step_size = -1 * schedule(state.count)
    if clip_norm is not None:
      g_norm = optax.tree.norm([g for g, t in zip(g_leaves, train, strict=True) if t])
      # The official clip_grad_norm_: multiply by min(1, max_norm / (norm + 1e-6)). (optax's
      # select(norm < clip, g, g / norm * clip) differs by that 1e-6, and its per-element
      # division and select ran 2x slower on XLA:CPU.)
      clip_coef = jnp.minimum(1.0, clip_norm / (g_norm + 1e-6))

    def leaf(g, m, v, p, dec, scale):
      if clip_norm is not None:
        g = g * clip_coef.astype(g.dtype)
      m = (1 - b1) * (g ** 1) + b1 * m
      v = (1 - b2) * (g ** 2) + b2 * v
      u = (m / bc1.astype(m.dtype)) / (jnp.sqrt(v / bc2.astype(v.dtype) + 0.0) + eps)
      if dec:
        u = u + weight_decay * p
      if scale is not None:
        u = u * scale
      return jnp.array(step_size, dtype=u.dtype) * u, m, v

    out = [leaf(*a) if t else (jnp.zeros_like(a[0]), None, None) for t, a in zip(
      train, zip(g_leaves, m_leaves, v_leaves, p_leaves, decay, scales, strict=True),
      strict=True)]
    updates, mu, nu = ([o[k] for o in out] for k in range(3))
    return treedef.unflatten(updates), AdamWState(count_inc, treedef.unflatten(mu),
                                                  treedef.unflatten(nu))

  return optax.GradientTransformation(init, update)


def make_optimizer(c: OptimConfig, params, *, num_layers: int = 0,
                   schedule: Callable | None = None) -> optax.GradientTransformation:
  """The official update for ``params`` (an ``nnx.State`` of Params or any matching pytree):
  :func:`fused_adamw` with the recipe's settings, accumulated over ``accumulate_steps``."""
  tx = fused_adamw(
    schedule or lr_schedule(c), b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
    decay_mask=weight_decay_mask(params), clip_norm=c.clip_norm,
    trainable=jax.tree.map(lambda label: label == "train",
                           trainable_labels(params, c.frozen_backbone)),
    lr_scales=layer_lr_scales(params, num_layers, c.layer_decay) if c.layer_decay else None)
  if c.accumulate_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=c.accumulate_steps)
  return tx
