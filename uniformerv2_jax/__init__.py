"""UniFormerV2 in JAX / Flax NNX."""

from uniformerv2_jax.convert import CheckpointError, load_official
from uniformerv2_jax.model import ModelConfig, UniFormerV2, abstract_model, create_model
from uniformerv2_jax.variants import config_from_official

__all__ = [
  "CheckpointError",
  "ModelConfig",
  "UniFormerV2",
  "abstract_model",
  "config_from_official",
  "create_model",
  "load_checkpoint",
  "load_official",
]


def __getattr__(name: str):
  # Orbax is imported only when a checkpoint is actually loaded (it adds ~1 s to imports).
  if name == "load_checkpoint":
    from uniformerv2_jax.checkpoint import load_checkpoint

    return load_checkpoint
  raise AttributeError(f"module 'uniformerv2_jax' has no attribute {name!r}")
