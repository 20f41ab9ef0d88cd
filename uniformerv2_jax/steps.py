"""Jitted step functions as plain pytree code: ``nnx.split`` -> pure function -> ``nnx.merge``.

The train state holds the parameters and the BatchNorm statistics as ``nnx.State`` pytrees, the
optax state, the step, a base PRNG key (raw uint32 data) and optionally an EMA of the params.
The step's randomness is ``fold_in(key, step)``: a resumed run draws exactly what an
uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from uniformerv2_jax.activation_sharding import activation_sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # nnx.State of nnx.Param
  batch_stats: Any  # nnx.State of nnx.BatchStat (empty without local MHRA)
  opt_state: Any
  key: jax.Array  # raw uint32 key data
  ema: Any = None  # nnx.State like params, or None


def split_model(model: nnx.Module):
  """``(graphdef, params, batch_stats, other)``; ``other`` (the module's own RNG state) is not
  trained and not checkpointed: steps pass explicit keys."""
  return nnx.split(model, nnx.Param, nnx.BatchStat, ...)


def merge_model(graphdef, params, batch_stats, other):
  # copy=True: the step's inputs are tracers of the enclosing jit; the model mutates its
  # BatchNorm statistics inside jax.grad, which must own fresh Variables.
  return nnx.merge(graphdef, params, batch_stats, other, copy=True)


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int,
                     ema: bool = False):
  graphdef, params, batch_stats, other = split_model(model)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                     opt_state=tx.init(params),
                     key=jax.random.key_data(jax.random.key(seed)),
                     ema=jax.tree.map(jnp.copy, params) if ema else None)
  return graphdef, other, state


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0):
  """Mean cross-entropy; ``labels`` int ``[B]`` or soft ``[B, K]`` (mixup / cutmix)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  k = logits.shape[-1]
  if labels.ndim == 1:
    labels = jax.nn.one_hot(labels, k, dtype=logp.dtype)
  if label_smoothing:
    labels = labels * (1 - label_smoothing) + label_smoothing / k
  return -(labels * logp).sum(-1).mean()


def make_train_step(graphdef, other, tx: optax.GradientTransformation, *,
                    label_smoothing: float = 0.0, ema_decay: float = 0.0, mesh=None,
                    rules: Mapping[str, Any] | None = None):
  """``train_step(state, batch) -> (state, metrics)``; ``batch`` has ``video`` ``[B,T,H,W,3]``
  (float, normalised) and ``label`` (``[B]`` ints or ``[B, K]`` soft labels). With ``mesh``
  (and the sharding ``rules``) the model's activations are pinned to the batch axes, and a
  model with ``bn_sync=False`` normalises each batch shard with its own BatchNorm
  statistics (without ``mesh`` the whole batch is one shard)."""

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    with activation_sharding(mesh, rules or {}):
      return _train_step(state, batch)

  def _train_step(state: TrainState, batch: dict[str, jax.Array]):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)

    def loss_fn(params):
      model = merge_model(graphdef, params, state.batch_stats, other)
      logits = model(batch["video"], train=True, key=key)
      loss = cross_entropy(logits, batch["label"], label_smoothing)
      return loss, (logits, nnx.state(model, nnx.BatchStat))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    labels = batch["label"]
    hard = labels if labels.ndim == 1 else labels.argmax(-1)
    metrics = {
      "loss": loss,
      "top1": (logits.argmax(-1) == hard).mean(),
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(params),
    }
    ema = state.ema
    if ema is not None:
      ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, ema=ema)
    return new_state, metrics

  return train_step


def make_eval_step(graphdef, other, *, mesh=None, rules: Mapping[str, Any] | None = None):
  """``eval_step(params, batch_stats, video) -> (probabilities [B, K], features [B, D])``."""

  def eval_step(params, batch_stats, video):
    model = merge_model(graphdef, params, batch_stats, other)
    with activation_sharding(mesh, rules or {}):
      logits, fused = model(video, train=False, return_features=True)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1), fused

  return eval_step
