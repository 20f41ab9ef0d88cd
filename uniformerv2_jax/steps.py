"""Jitted step functions as plain pytree code: ``nnx.split`` -> pure function -> ``nnx.merge``.

The train state holds the model's parameters and its other variables (BatchNorm statistics)
as ``nnx.State`` pytrees, the optax state, the step and a base PRNG key; the step's randomness
is ``fold_in(key, step)``, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # nnx.State of nnx.Param
  rest: Any  # nnx.State of everything else (BatchNorm statistics, RNG state)
  opt_state: Any
  key: jax.Array  # raw uint32 key data (checkpoints as a plain array)


def split_model(model: nnx.Module):
  """``(graphdef, params, rest)``."""
  return nnx.split(model, nnx.Param, ...)


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int):
  graphdef, params, rest = split_model(model)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                     opt_state=tx.init(params), key=jax.random.key_data(jax.random.key(seed)))
  return graphdef, state


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0):
  """Mean cross-entropy; ``labels`` int ``[B]`` or soft ``[B, K]`` (mixup / cutmix)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  k = logits.shape[-1]
  if labels.ndim == 1:
    labels = jax.nn.one_hot(labels, k, dtype=logp.dtype)
  if label_smoothing:
    labels = labels * (1 - label_smoothing) + label_smoothing / k
  return -(labels * logp).sum(-1).mean()


def make_train_step(graphdef, tx: optax.GradientTransformation, *, label_smoothing: float = 0.0):
  """``train_step(state, batch) -> (state, metrics)``; batch has ``video`` ``[B,T,H,W,3]`` and
  ``label`` (``[B]`` ints or ``[B, K]`` soft labels)."""

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)

    def loss_fn(params):
      model = nnx.merge(graphdef, params, state.rest, copy=True)
      logits = model(batch["video"], train=True, key=key)
      loss = cross_entropy(logits, batch["label"], label_smoothing)
      return loss, (logits, nnx.state(model, nnx.Not(nnx.Param)))

    (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    labels = batch["label"]
    hard = labels if labels.ndim == 1 else labels.argmax(-1)
    metrics = {
      "loss": loss,
      "top1": (logits.argmax(-1) == hard).mean(),
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(params),
      "update_norm": optax.tree.norm(updates),
    }
    new_state = state.replace(step=state.step + 1, params=params, rest=rest,
                              opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(graphdef):
  """``eval_step(params, rest, video) -> (probabilities [B, K], fused features [B, D])``."""

  def eval_step(params, rest, video):
    model = nnx.merge(graphdef, params, rest)
    logits, fused = model(video, train=False, return_features=True)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1), fused

  return eval_step
