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

import jax
import jax.numpy as jnp
import optax

from uniformerv2_jax.convert import weight_decay_mask

# Parameters the official FROZEN recipes exclude from training (name substrings, official code).
FROZEN_PATTERNS = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "resblocks")


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


def make_optimizer(c: OptimConfig, params, *, num_layers: int = 0,
                   schedule: Callable | None = None) -> optax.GradientTransformation:
  """The full chain for ``params`` (an ``nnx.State`` of Params or any matching pytree)."""
  schedule = schedule or lr_schedule(c)
  decay_mask = weight_decay_mask(params)
  parts = []
  if c.clip_norm is not None:
    parts.append(optax.clip_by_global_norm(c.clip_norm))
  parts.append(optax.scale_by_adam(b1=c.b1, b2=c.b2, eps=c.eps))
  parts.append(optax.add_decayed_weights(c.weight_decay, mask=decay_mask))
  if c.layer_decay:
    scales = layer_lr_scales(params, num_layers, c.layer_decay)
    parts.append(optax.GradientTransformation(
      lambda p: optax.EmptyState(),
      lambda u, s, p=None: (jax.tree.map(lambda a, b: a * b, u, scales), s)))
  parts.append(optax.scale_by_learning_rate(schedule))
  tx = optax.chain(*parts)
  if c.frozen_backbone:
    tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()},
                               trainable_labels(params, True))
  if c.accumulate_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=c.accumulate_steps)
  return tx
