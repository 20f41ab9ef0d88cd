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
  "load_official",
]
