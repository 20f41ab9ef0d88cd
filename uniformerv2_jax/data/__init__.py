"""Video input pipeline: sources -> decode + sampling -> transforms -> grain batches.

The names below are imported on first use, so that importing one submodule (``prepare`` in a
Beam worker process, which never builds a pipeline) does not load grain and JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from uniformerv2_jax.data.demo_dataset import ensure_demo_dataset
  from uniformerv2_jax.data.pipeline import (
    EvalLayout,
    ReaderConfig,
    SamplingConfig,
    make_eval_dataset,
    make_eval_iterator,
    make_train_dataset,
    make_train_iterator,
    to_iterator,
  )
  from uniformerv2_jax.data.sources import (
    ArrayRecordSource,
    FrameFolderListSource,
    ListFileError,
    TfdsSource,
    VideoListSource,
    read_clip,
  )
  from uniformerv2_jax.data.splits import SplitSource
  from uniformerv2_jax.data.transforms import EvalConfig, MixupConfig, TrainAugConfig
  from uniformerv2_jax.data.video import SKIP_KINDS, DecodeError

# Public names -> their modules.
_EXPORTS = {
  "ensure_demo_dataset": "demo_dataset",
  **dict.fromkeys(("EvalLayout", "ReaderConfig", "SamplingConfig", "make_eval_dataset",
                   "make_eval_iterator", "make_train_dataset", "make_train_iterator",
                   "to_iterator"), "pipeline"),
  **dict.fromkeys(("ArrayRecordSource", "FrameFolderListSource", "ListFileError", "TfdsSource",
                   "VideoListSource", "read_clip"), "sources"),
  "SplitSource": "splits",
  **dict.fromkeys(("EvalConfig", "MixupConfig", "TrainAugConfig"), "transforms"),
  **dict.fromkeys(("SKIP_KINDS", "DecodeError"), "video"),
}

__all__ = [
  "SKIP_KINDS",
  "ArrayRecordSource",
  "DecodeError",
  "EvalConfig",
  "EvalLayout",
  "FrameFolderListSource",
  "ListFileError",
  "MixupConfig",
  "ReaderConfig",
  "SamplingConfig",
  "SplitSource",
  "TfdsSource",
  "TrainAugConfig",
  "VideoListSource",
  "ensure_demo_dataset",
  "make_eval_dataset",
  "make_eval_iterator",
  "make_train_dataset",
  "make_train_iterator",
  "read_clip",
  "to_iterator",
]


# Submodules reachable as attributes (``data.splits.KINDS``), as when they were imported eagerly.
_SUBMODULES = frozenset({"demo_dataset", "pipeline", "sampling", "sources", "splits", "transforms",
                         "video"})


def __getattr__(name: str):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"uniformerv2_jax.data.{_EXPORTS[name]}"), name)
  if name in _SUBMODULES:
    return importlib.import_module(f"uniformerv2_jax.data.{name}")
  raise AttributeError(f"module 'uniformerv2_jax.data' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_EXPORTS))
