"""Every model-zoo setting's train step lowers at full size from shapes alone (nothing is
allocated); B/16 8x224 also compiles (XLA:CPU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from uniformerv2_jax import zoo
from uniformerv2_jax.model import abstract_model
from uniformerv2_jax.optim import OptimConfig, make_optimizer
from uniformerv2_jax.steps import TrainState, make_train_step, split_model


def abstract_train_step(cfg, batch: int = 1):
  graphdef, params, batch_stats, other = split_model(abstract_model(cfg))
  oc = OptimConfig(base_lr=1e-5, steps_per_epoch=100, epochs=5, warmup_epochs=1,
                   frozen_backbone=cfg.frozen)
  tx = make_optimizer(oc, params, num_layers=cfg.layers)
  state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                     batch_stats=batch_stats, opt_state=jax.eval_shape(tx.init, params),
                     key=jax.ShapeDtypeStruct((2,), jnp.uint32))
  video = jax.ShapeDtypeStruct((batch, cfg.num_frames, cfg.input_resolution,
                                cfg.input_resolution, 3), jnp.float32)
  data = {"video": video, "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}
  return jax.jit(make_train_step(graphdef, other, tx), donate_argnums=(0,)), state, data


def _unique_model_configs():
  seen = {}
  for e in zoo.ZOO:
    cfg = e.model_config()
    seen.setdefault(cfg, e.name)
  return [(name, cfg) for cfg, name in seen.items()]


@pytest.mark.parametrize("name,cfg", _unique_model_configs(), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_train_step_lowers_for_every_zoo_setting(name, cfg):
  step, state, data = abstract_train_step(cfg)
  lowered = step.lower(state, data)
  out_state, metrics = lowered.out_info
  assert set(metrics) >= {"loss", "grad_norm"}
  assert jax.tree.structure(out_state.params) == jax.tree.structure(state.params)


def test_b16_train_step_compiles():
  cfg = zoo.get("k400", "b16_8x224").model_config()
  step, state, data = abstract_train_step(cfg)
  compiled = step.lower(state, data).compile()
  mem = compiled.memory_analysis()
  assert mem is None or mem.argument_size_in_bytes > 4 * 114_000_000
