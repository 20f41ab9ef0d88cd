"""A model's eval forward as a self-contained file: ``jax.export`` (StableHLO) plus what a consumer
needs to feed it, loadable with jax alone.

    python main.py --mode export --checkpoint DIR --output model.jax [--config CFG]
    f = uniformerv2_jax.load_exported("model.jax"); logits = f(video)  # [B, T, H, W, 3] float32

The file is a zip archive of ``forward.stablehlo`` (``jax.export.Exported.serialize()``: the
forward ``(weights, video) -> (logits, features)`` with a symbolic batch size, frames and
resolution fixed by the model, for CPU, CUDA and TPU), ``weights.npz`` (the weights as a list of
arrays, the forward's first argument: kept out of the program so that it stays small and
loads without copying constants) and ``metadata.json``: the model config, the label names, the
test views (frames, sampling, crops, normalisation mean/std, channel order) and the input and
output layouts. ``--mode predict --checkpoint model.jax`` runs on it.

The forward is traced with the portable forms of ``ops`` (those chosen for TPU: no
CPU-specific flat projections, no cuDNN attention), since one trace serves every platform; the
numbers are the model's within float32 round-off.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from uniformerv2_jax.errors import InputError, InputNotFound

FORMAT = "uniformerv2_jax.exported/1"
SUFFIX = ".jax"
PLATFORMS = ("cpu", "cuda", "tpu")
_FORWARD, _METADATA, _WEIGHTS = "forward.stablehlo", "metadata.json", "weights.npz"


def is_exported(path: str | Path) -> bool:
  """Whether ``path`` names an exported forward file (by its extension)."""
  return str(path).lower().endswith(SUFFIX)


@dataclasses.dataclass
class ExportedModel:
  """A loaded export: ``model(video)`` gives logits, ``model.forward(video)`` (logits,
  features); ``metadata`` says how to make ``video``."""

  exported: jax.export.Exported
  weights: list[np.ndarray]
  metadata: dict[str, Any]

  def forward(self, video) -> tuple[jax.Array, jax.Array]:
    return self.exported.call(self.weights, np.asarray(video, np.float32))

  def __call__(self, video) -> jax.Array:
    return self.forward(video)[0]


def load_exported(path: str | Path) -> ExportedModel:
  """Read a file written by :func:`export` (nothing in it is executed but the StableHLO)."""
  path = Path(path)
  if not path.is_file():
    raise InputNotFound(f"{path}: no such exported model file")
  try:
    with zipfile.ZipFile(path) as z:
      metadata = json.loads(z.read(_METADATA))
      if metadata.get("format") != FORMAT:
        raise InputError(f"{path}: format {metadata.get('format')!r}, expected {FORMAT!r}")
      blob = z.read(_FORWARD)
      with np.load(io.BytesIO(z.read(_WEIGHTS)), allow_pickle=False) as w:
        weights = [w[str(i)] for i in range(len(w.files))]
  except (zipfile.BadZipFile, KeyError, ValueError) as e:
    raise InputError(f"{path}: not an exported UniFormerV2 model ({e})") from None
  return ExportedModel(jax.export.deserialize(bytearray(blob)), weights, metadata)


def export(checkpoint: str, output: str, *, config: Any = None, use_ema: bool = False,
           labels: str | None = None) -> dict[str, Any]:
  """Export the eval forward of ``checkpoint`` (with the test views of ``config`` or the
  checkpoint's own) to ``output`` (``.jax``). Returns the metadata written."""
  from flax import nnx

  from uniformerv2_jax import ops, predict
  from uniformerv2_jax.checkpoint import config_to_json

  if not is_exported(output):
    raise InputError(f"--output {output}: an export is written as a {SUFFIX} file (the forward "
                     "as StableHLO with its metadata)")
  predict.check_output(output, "the exported model")
  prepared = predict.prepare(checkpoint, config, labels=labels, use_ema=use_ema)
  model, views = prepared.model, prepared.views
  cfg = model.cfg
  frames, size = views.sampling.num_frames, views.eval_cfg.crop_size
  # Parameters and BatchNorm statistics are the weights; the rest (the dropout key, unused in
  # eval) is rebuilt from the graph as it was.
  graphdef, state, rest = nnx.split(model, (nnx.Param, nnx.BatchStat), ...)
  leaves, treedef = jax.tree.flatten(state)

  def forward(weights, video):
    m = nnx.merge(graphdef, jax.tree.unflatten(treedef, weights), rest)
    logits, features = m(video, train=False, return_features=True)
    return logits.astype(np.float32), features.astype(np.float32)

  batch = jax.export.symbolic_shape("batch")[0]
  video = jax.ShapeDtypeStruct((batch, frames, size, size, 3), np.float32)
  weights = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in leaves]
  with ops.target_platform("tpu"):  # the portable forms: one trace for every platform
    exp = jax.export.export(jax.jit(forward), platforms=PLATFORMS)(weights, video)
  metadata = {
    "format": FORMAT,
    "model": config_to_json(cfg),
    "precision": str(np.dtype(cfg.dtype)),
    "labels": prepared.names,
    "views": dataclasses.asdict(views),
    "input": {"name": "video", "shape": ["batch", frames, size, size, 3], "dtype": "float32",
              "layout": "batch, frames, height, width, RGB (BGR when views.bgr)",
              "normalised": "(pixel / 255 - mean) / std, mean and std in views.eval_cfg"},
    "outputs": {"logits": ["batch", cfg.num_classes], "features": ["batch", cfg.n_dim]},
    "platforms": list(PLATFORMS),
    "source": str(checkpoint),
  }
  blob = exp.serialize()
  arrays = io.BytesIO()
  np.savez(arrays, **{str(i): np.asarray(a) for i, a in enumerate(leaves)})

  def write(f):
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
      z.writestr(_METADATA, json.dumps(metadata, indent=1))
      z.writestr(_FORWARD, bytes(blob))
      z.writestr(_WEIGHTS, arrays.getvalue())

  predict._write_atomically(output, write)
  return metadata


def views_from_metadata(metadata: Mapping[str, Any]):
  """The ``predict.ViewSettings`` an export was made with."""
  from uniformerv2_jax.data.pipeline import ReaderConfig, SamplingConfig
  from uniformerv2_jax.data.transforms import EvalConfig
  from uniformerv2_jax.predict import ViewSettings

  v = metadata["views"]
  eval_cfg = {k: tuple(x) if isinstance(x, list) else x for k, x in v["eval_cfg"].items()}
  return ViewSettings(SamplingConfig(**v["sampling"]), EvalConfig(**eval_cfg), bool(v["bgr"]),
                      ReaderConfig(**v["reader"]))
