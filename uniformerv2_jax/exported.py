"""A model's eval forward as a self-contained file for serving, with what a consumer needs to feed
it: ``.jax`` (``jax.export`` StableHLO, loadable with jax alone) or ``.onnx`` (onnxruntime,
TensorRT, ...).

    python main.py --mode export --checkpoint DIR --output model.jax|model.onnx [--config CFG]
    f = uniformerv2_jax.load_exported("model.jax"); logits = f(video)  # [B, T, H, W, 3] float32

The file is a zip archive of ``forward.stablehlo`` (``jax.export.Exported.serialize()``: the
forward ``(weights, video) -> (logits, features)`` with a symbolic batch size, frames and
resolution fixed by the model, for CPU, CUDA and TPU), ``weights.npz`` (the weights as a list of
arrays, the forward's first argument: kept out of the program so that it stays small and
loads without copying constants) and ``metadata.json``: the model config, the label names, the
test views (frames, sampling, crops, normalisation mean/std, channel order) and the input and
output layouts. ``--mode predict --checkpoint model.jax`` runs on it.

The ``.onnx`` file is the same forward converted by ``jax2onnx`` (optional extra ``onnx``, then
jax2onnx itself with ``--no-deps``: ``requirements-onnx.txt`` says why): it
translates the traced program directly, ``lax.scan`` over the layers included, so no second
framework is involved (the other route, jax -> TensorFlow -> tf2onnx, needs TensorFlow). Input
``video`` ``[batch, T, H, W, 3]`` float32 with a dynamic batch axis, outputs ``logits`` and
``features``; the metadata (the same JSON) is the model's ``metadata_props["uniformerv2_jax"]``.
``load_exported`` runs it with onnxruntime on the CPU.

The forward is traced with the portable forms of ``ops`` (those chosen for TPU: no
CPU-specific flat projections, no cuDNN attention), since one trace serves every platform; the
numbers are the model's within float32 round-off.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from uniformerv2_jax.errors import InputError, InputNotFound

FORMAT = "uniformerv2_jax.exported/1"
SUFFIX = ".jax"
ONNX_SUFFIX = ".onnx"
ONNX_METADATA_KEY = "uniformerv2_jax"
PLATFORMS = ("cpu", "cuda", "tpu")
_FORWARD, _METADATA, _WEIGHTS = "forward.stablehlo", "metadata.json", "weights.npz"


def is_exported(path: str | Path) -> bool:
  """Whether ``path`` names an exported forward file (by its extension)."""
  return str(path).lower().endswith((SUFFIX, ONNX_SUFFIX))


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


@dataclasses.dataclass
class OnnxModel:
  """A loaded ``.onnx`` export, run by onnxruntime: the same calls as :class:`ExportedModel`."""

  session: Any  # onnxruntime.InferenceSession
  metadata: dict[str, Any]

  def forward(self, video) -> tuple[np.ndarray, np.ndarray]:
    logits, features = self.session.run(["logits", "features"],
                                        {"video": np.asarray(video, np.float32)})
    return logits, features

  def __call__(self, video) -> np.ndarray:
    return self.forward(video)[0]


def _load_onnx(path: Path) -> OnnxModel:
  try:
    import onnxruntime
  except ImportError:
    raise InputError(f"{path}: running an .onnx export needs onnxruntime (pip install "
                     "'uniformerv2_jax[onnx]')") from None
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # errors only: its notes on unused constants are noise here
  try:
    session = onnxruntime.InferenceSession(str(path), options,
                                           providers=["CPUExecutionProvider"])
  except Exception as e:  # noqa: BLE001 - onnxruntime raises its own error types
    raise InputError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0]})") from None
  props = session.get_modelmeta().custom_metadata_map
  if ONNX_METADATA_KEY not in props:
    raise InputError(f"{path}: an ONNX model without uniformerv2_jax metadata (not written by "
                     "--mode export)")
  metadata = json.loads(props[ONNX_METADATA_KEY])
  if metadata.get("format") != FORMAT:
    raise InputError(f"{path}: format {metadata.get('format')!r}, expected {FORMAT!r}")
  return OnnxModel(session, metadata)


def load_exported(path: str | Path) -> ExportedModel | OnnxModel:
  """Read a file written by :func:`export` (nothing in it is executed but the exported
  program)."""
  path = Path(path)
  if not path.is_file():
    raise InputNotFound(f"{path}: no such exported model file")
  if path.suffix.lower() == ONNX_SUFFIX:
    return _load_onnx(path)
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
  checkpoint's own) to ``output`` (``.jax`` or ``.onnx``). Returns the metadata written."""
  from flax import nnx

  from uniformerv2_jax import ops, predict
  from uniformerv2_jax.checkpoint import config_to_json

  if not is_exported(output):
    raise InputError(f"--output {output}: an export is written as a {SUFFIX} file (StableHLO "
                     f"for jax) or an {ONNX_SUFFIX} file (ONNX)")
  onnx = str(output).lower().endswith(ONNX_SUFFIX)
  if onnx:
    try:
      import jax2onnx  # noqa: F401
    except ImportError:
      raise InputError(f"--output {output}: ONNX export needs jax2onnx (pip install "
                       "'uniformerv2_jax[onnx]', then pip install --no-deps "
                       "jax2onnx==0.17.0)") from None
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
    "platforms": ["onnx"] if onnx else list(PLATFORMS),
    "source": str(checkpoint),
  }
  if onnx:
    _write_onnx(forward, leaves, (frames, size), metadata, output)
    return metadata
  batch = jax.export.symbolic_shape("batch")[0]
  video = jax.ShapeDtypeStruct((batch, frames, size, size, 3), np.float32)
  weights = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in leaves]
  with ops.target_platform("tpu"):  # the portable forms: one trace for every platform
    exp = jax.export.export(jax.jit(forward), platforms=PLATFORMS)(weights, video)
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


def _write_onnx(forward, weights: list, frames_size: tuple[int, int], metadata: dict[str, Any],
                output: str) -> None:
  """Convert with the weights as graph inputs (jax2onnx then traces shapes only, and no weight
  passes through its IR), then make them initializers, check the model and write it."""
  import onnx
  from jax2onnx import to_onnx
  from onnx import numpy_helper

  from uniformerv2_jax import ops, predict

  # onnx_ir warns once per shape constant it cannot type (hundreds of lines, harmless).
  logging.getLogger("onnx_ir").setLevel(logging.ERROR)
  frames, size = frames_size
  names = [f"weight_{i}" for i in range(len(weights))]
  specs = [jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights]

  def flat_forward(*args):
    return forward(list(args[:-1]), args[-1])

  with ops.target_platform("tpu"):  # the same portable forms as the .jax export
    proto = to_onnx(flat_forward, [*specs, ("batch", frames, size, size, 3)],
                    model_name="uniformerv2", input_names=[*names, "video"],
                    output_names=["logits", "features"], return_mode="proto")
  graph = proto.graph
  if _dense_einsums_as_matmuls(graph, {}):
    _drop_unused_nodes(graph)
  kept = [i for i in graph.input if i.name not in set(names)]
  del graph.input[:]
  graph.input.extend(kept)
  graph.initializer.extend(numpy_helper.from_array(np.asarray(w), name)
                           for name, w in zip(names, weights, strict=True))
  entry = proto.metadata_props.add()
  entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(metadata)
  # One serialisation, checked and written as it is: check_model(proto) would serialise a
  # second copy of the weights (B/16: 440 MB each), and the proto is dropped before the check
  # parses its own.
  blob = proto.SerializeToString()
  del proto, graph
  onnx.checker.check_model(blob)
  predict._write_atomically(output, lambda f: f.write(blob))


# jax2onnx's form of ``jnp.einsum("...i,io->...o", x, kernel)`` (Dense): the kernel padded with
# leading axes (Unsqueeze), inside a Loop body also broadcast to x's leading shape (Expand), then
# an Einsum.
_DENSE_EINSUM = "...i,...io->...o"


def _dense_einsums_as_matmuls(graph, outer_constants: Mapping[str, np.ndarray]) -> int:
  """Rewrite every Dense einsum of ``graph`` and its subgraphs as ``MatMul(x, kernel)`` (the same
  product: MatMul broadcasts the 2-D kernel itself). Returns how many were rewritten.

  Why: in the scanned layers' Loop body the Expand materialises the MLP kernel once per token
  (B/16 8x224: [8, 197, 768, 3072], 14.9 GB), which made onnxruntime run out of memory.
  """
  from onnx import AttributeProto, TensorProto, numpy_helper

  constants = dict(outer_constants)  # the small int64 initializers: Unsqueeze axes
  constants.update({i.name: numpy_helper.to_array(i) for i in graph.initializer
                    if i.data_type == TensorProto.INT64 and len(i.dims) <= 1})
  producer = {out: node for node in graph.node for out in node.output}
  rewritten = 0
  for node in graph.node:
    for attr in node.attribute:
      subgraphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
      rewritten += sum(_dense_einsums_as_matmuls(g, constants) for g in subgraphs)
    equation = next((a.s.decode() for a in node.attribute if a.name == "equation"), "")
    if node.op_type != "Einsum" or equation.replace(" ", "") != _DENSE_EINSUM:
      continue
    pad = producer.get(node.input[1])
    if pad is not None and pad.op_type == "Expand":
      pad = producer.get(pad.input[0])
    if pad is None or pad.op_type != "Unsqueeze" or len(pad.input) != 2:
      continue
    axes = constants.get(pad.input[1])
    if axes is None or axes.ravel().tolist() != list(range(axes.size)):
      continue  # not a padding with leading axes: leave it as it is
    node.op_type = "MatMul"
    del node.attribute[:]
    node.input[1] = pad.input[0]
    rewritten += 1
  return rewritten


def _all_graphs(graph):
  yield graph
  for node in graph.node:
    for attr in node.attribute:
      for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
        yield from _all_graphs(g)


def _drop_unused_nodes(graph) -> None:
  """Remove the nodes whose outputs nothing reads, in ``graph`` and its subgraphs, until none
  is left (ONNX operators have no side effects)."""
  while True:
    graphs = list(_all_graphs(graph))
    used = {name for g in graphs for node in g.node for name in node.input}
    used |= {out.name for g in graphs for out in g.output}
    removed = 0
    for g in reversed(graphs):  # subgraphs first: rewriting a graph copies its nodes' subgraphs
      kept = [node for node in g.node if any(out in used for out in node.output)]
      removed += len(g.node) - len(kept)
      if len(kept) < len(g.node):
        del g.node[:]
        g.node.extend(kept)
    if not removed:
      return


def views_from_metadata(metadata: Mapping[str, Any]):
  """The ``predict.ViewSettings`` an export was made with."""
  from uniformerv2_jax.data.pipeline import ReaderConfig, SamplingConfig
  from uniformerv2_jax.data.transforms import EvalConfig
  from uniformerv2_jax.predict import ViewSettings

  v = metadata["views"]
  eval_cfg = {k: tuple(x) if isinstance(x, list) else x for k, x in v["eval_cfg"].items()}
  return ViewSettings(SamplingConfig(**v["sampling"]), EvalConfig(**eval_cfg), bool(v["bgr"]),
                      ReaderConfig(**v["reader"]))
