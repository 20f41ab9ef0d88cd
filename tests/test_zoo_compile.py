"""Every model-zoo setting's train step lowers at full size from shapes alone (nothing is
allocated); B/16 8x224 also compiles (XLA:CPU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
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


def _nbytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def test_b16_train_step_compiles():
  """The compiled step takes the whole training state as arguments: at least the parameters,
  AdamW's two float32 moments per parameter and the batch, counted here from the shapes."""
  cfg = zoo.get("k400", "b16_8x224").model_config()
  assert not cfg.frozen  # every parameter is trained, so every parameter has two moments
  step, state, data = abstract_train_step(cfg)
  compiled = step.lower(state, data).compile()
  mem = compiled.memory_analysis()
  assert mem is not None
  shapes = jax.eval_shape(lambda p: p, state.params)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert 80_000_000 < num_params < 150_000_000  # a ViT-B/16 (86M) plus the global blocks
  state_bytes = (_nbytes(shapes) + 2 * 4 * num_params + _nbytes(state.batch_stats)
                 + _nbytes(state.step) + _nbytes(state.key))
  expected = state_bytes + _nbytes(data)
  assert mem.argument_size_in_bytes >= expected
  # Beyond that the optimizer state holds only its step counter (a few scalars at most).
  assert mem.argument_size_in_bytes - expected <= 64, mem.argument_size_in_bytes - expected
