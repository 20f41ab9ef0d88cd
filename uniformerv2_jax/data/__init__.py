"""Video input pipeline: sources -> decode + sampling -> transforms -> grain batches."""

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
from uniformerv2_jax.data.transforms import (
  EvalConfig,
  MixupConfig,
  TrainAugConfig,
)
from uniformerv2_jax.data.video import SKIP_KINDS, DecodeError

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
