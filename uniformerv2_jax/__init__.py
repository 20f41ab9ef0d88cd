"""UniFormerV2 in JAX / Flax NNX."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from uniformerv2_jax.checkpoint import load_checkpoint
  from uniformerv2_jax.checkpoint_files import CheckpointError
  from uniformerv2_jax.convert import load_official
  from uniformerv2_jax.exported import load_exported
  from uniformerv2_jax.model import ModelConfig, UniFormerV2, abstract_model, create_model
  from uniformerv2_jax.variants import config_from_official

# Public names -> their modules. Imported on first use: entry points import
# ``uniformerv2_jax.host_memory`` (standard library only) before JAX, and Orbax (~1 s) is
# imported only when a checkpoint is actually loaded.
_EXPORTS = {
  "CheckpointError": "checkpoint_files",
  "load_official": "convert",
  "ModelConfig": "model",
  "UniFormerV2": "model",
  "abstract_model": "model",
  "create_model": "model",
  "config_from_official": "variants",
  "load_checkpoint": "checkpoint",
  "load_exported": "exported",
}

__all__ = [
  "CheckpointError",
  "ModelConfig",
  "UniFormerV2",
  "abstract_model",
  "config_from_official",
  "create_model",
  "load_checkpoint",
  "load_exported",
  "load_official",
]


def __getattr__(name: str):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"uniformerv2_jax.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module 'uniformerv2_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_EXPORTS))
