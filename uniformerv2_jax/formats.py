"""Reading, detecting and converting the checkpoint formats other code bases write.

Formats (``FORMATS``), all mapped onto the official UniFormerV2 key names of ``convert.py`` (the
one table that knows the Flax side):

``official``   OpenGVLab/UniFormerV2 ``.pyth``/``.pth``: flat ``backbone.*`` or ``{'model_state'}``.
``mmaction2``  MMAction2's port: ``{'meta', 'state_dict'}`` with ``backbone.transformer.norm.*`` and
               ``cls_head.fc_cls.*``, or a backbone-only dict without prefix (no head).
``clip``       OpenAI CLIP: a full state dict (``visual.*`` + text tower + integer scalars), the
               ``visual.``-stripped extraction of the official recipe, or the released TorchScript
               archive (read by ``read_torchscript_tensors`` without running any of its code).
``hf``         Hugging Face ``CLIPVisionModel`` / ``CLIPModel`` (safetensors or ``.bin``; a model
               directory with ``config.json`` too).
``timm``       timm CLIP ViTs (``vit_base_patch16_clip_224.openai`` layout).

CLIP-like formats initialise only the backbone (as the official loader does: centre-inflated patch
kernel, float32, ``proj``/``ln_post``/text tower dropped); everything else keeps the official
initialisation. Nothing read from a file is ever executed.

A CLIP tower's MLP activation (QuickGELU as OpenAI CLIP, or exact GELU as open_clip's LAION
ViT-B-16 and timm's ``vit_*_clip_*``) is part of its weights' meaning, and the key names do not
show it: ``clip_activation_of`` reads it where the source records it, and otherwise the caller
must state it (``--clip-activation``); the converter never guesses.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import logging
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from uniformerv2_jax import convert as C
from uniformerv2_jax.convert import PREFIX, CheckpointError
from uniformerv2_jax.model import ACTIVATIONS, ModelConfig
from uniformerv2_jax.trees import flat_state

log = logging.getLogger(__name__)

FORMATS = ("official", "mmaction2", "clip", "hf", "timm")
CLIP_LIKE = ("clip", "hf", "timm")
TORCH_SUFFIXES = (".pth", ".pyth", ".pt", ".bin", ".ckpt")
CONFIG_META_KEY = "uniformerv2_jax.model_config"  # safetensors metadata written on export


# ============================================================================= reading
@dataclasses.dataclass
class Source:
  """What a checkpoint file holds: flat tensors (wrappers removed) and side information."""

  path: Path
  tensors: dict[str, np.ndarray]
  container: str  # pickle | torchscript | safetensors | npz | hf-directory
  wrapper: str | None = None  # the unwrapped top-level key (state_dict, model_state, ...)
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # MMAction2 meta etc.
  hf_config: dict[str, Any] | None = None  # config.json next to HF weights
  file_metadata: dict[str, str] = dataclasses.field(default_factory=dict)  # safetensors
  # TorchScript: the class ("module.Name") of every scripted submodule, by attribute path
  module_classes: dict[str, str] = dataclasses.field(default_factory=dict)
  timm_config: dict[str, Any] | None = None  # timm hub config.json (``architecture``)
  open_clip_config: dict[str, Any] | None = None  # open_clip_config.json (``model_cfg``)


_STORAGE_DTYPES = {
  "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
  "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
  "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}


class _ScriptObject:
  """Stand-in for a TorchScript module or object: records its attributes, runs nothing."""

  def __init__(self, *args):
    self.state: Any = None

  def __setstate__(self, state):
    self.state = state


class _TorchScriptUnpickler(pickle.Unpickler):
  """Unpickles a TorchScript ``data.pkl`` allowing only tensor rebuilding and plain containers.

  ``__torch__.*`` classes (the scripted modules) become inert ``_ScriptObject``s; every other
  global is refused, so no code from the archive can run.
  """

  def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: Path):
    super().__init__(io.BytesIO(data))
    self.archive, self.prefix, self.path = archive, prefix, path
    self.storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str):
    if module == "__torch__" or module.startswith("__torch__."):
      return type(name, (_ScriptObject,), {"script_class": f"{module}.{name}"})
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return lambda data, requires_grad=False, hooks=None: data
    if module == "collections" and name == "OrderedDict":
      return OrderedDict
    if module == "torch" and name in _STORAGE_DTYPES:
      return name
    if module == "torch.jit._pickle" and name == "restore_type_tag":
      return lambda obj, tag: obj
    if module == "torch.jit._pickle" and name.startswith("build_") and name.endswith("list"):
      return lambda x: x
    raise CheckpointError(
      f"{self.path}: refused to read this TorchScript archive: its data.pkl needs "
      f"{module}.{name}, which is neither a tensor nor a plain container (nothing was "
      "executed). Export a state dict once with: torch.save(torch.jit.load(path, "
      "map_location='cpu').state_dict(), 'out.pth')")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 4 and pid[0] == "storage"):
      raise CheckpointError(f"{self.path}: unknown persistent id in TorchScript data.pkl")
    _, kind, key, _location = pid[:4]
    key = str(key)
    if key not in self.storages:
      raw = self.archive.read(f"{self.prefix}data/{key}")
      dtype = _STORAGE_DTYPES.get(kind)
      if dtype is None:
        raise CheckpointError(f"{self.path}: unsupported storage type {kind!r}")
      if dtype == "bfloat16":  # NumPy has no bfloat16: widen exactly to float32
        arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
      else:
        arr = np.frombuffer(raw, dtype)
      self.storages[key] = arr
    return self.storages[key]


def _rebuild_tensor(storage, offset, size, stride, *rest):
  flat = np.asarray(storage)
  if not size:
    return np.array(flat[offset])
  view = np.lib.stride_tricks.as_strided(
    flat[offset:], shape=tuple(size), strides=tuple(s * flat.itemsize for s in stride))
  return np.array(view)  # a C-contiguous copy


def _collect(obj: Any, prefix: str, out: dict[str, np.ndarray],
             classes: dict[str, str] | None = None) -> None:
  state = obj.state if isinstance(obj, _ScriptObject) else obj
  if not isinstance(state, Mapping):
    return
  for k, v in state.items():
    if isinstance(v, np.ndarray):
      out[prefix + str(k)] = v
    elif isinstance(v, _ScriptObject):
      if classes is not None:
        classes[prefix + str(k)] = getattr(v, "script_class", "")
      _collect(v, f"{prefix}{k}.", out, classes)


def is_torchscript(path: Path) -> bool:
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def read_torchscript_tensors(path: str | Path) -> dict[str, np.ndarray]:
  """Every tensor attribute of a TorchScript archive under its state-dict name, read from
  ``data.pkl`` + ``data/`` with a restricted unpickler (no code from the archive runs)."""
  return _read_torchscript(Path(path))[0]


def _read_torchscript(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(tensors, submodule classes), the classes read as the archive's class names (with a GELU
  module's ``approximate`` constant appended from its code text, which is read, not run)."""
  try:
    with zipfile.ZipFile(path) as z:
      pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
      if not pkl:
        raise CheckpointError(f"{path}: TorchScript archive without data.pkl")
      prefix = pkl[0][: -len("data.pkl")]
      order = [n for n in z.namelist() if n == f"{prefix}byteorder"]
      if order and z.read(order[0]).strip() not in (b"little", b""):
        raise CheckpointError(f"{path}: big-endian TorchScript archives are not supported")
      root = _TorchScriptUnpickler(z.read(pkl[0]), z, prefix, path).load()
  except CheckpointError:
    raise
  except Exception as e:  # noqa: BLE001 - one clear message for any damaged archive
    raise CheckpointError(f"{path}: not a readable TorchScript archive ({e})") from None
  out: dict[str, np.ndarray] = {}
  classes: dict[str, str] = {}
  _collect(root, "", out, classes)
  if not out:
    raise CheckpointError(f"{path}: no tensors found in the TorchScript archive")
  with zipfile.ZipFile(path) as z:
    names = set(z.namelist())
    for attr, cls in classes.items():
      if cls.endswith(".GELU"):
        # nn.GELU's ``approximate`` is a scripted constant: only its code file has it.
        code = f"{prefix}code/{cls.rsplit('.', 1)[0].replace('.', '/')}.py"
        text = z.read(code).decode("utf-8", "replace") if code in names else ""
        m = re.search(r'approximate\s*:\s*Final\[str\]\s*=\s*"(\w+)"', text)
        classes[attr] = f"{cls}(approximate={m.group(1) if m else '?'})"
  return out, classes


def _tensors_from(obj: Any, path: Path) -> dict[str, np.ndarray]:
  if not isinstance(obj, Mapping) or not obj:
    raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got "
                          f"{type(obj).__name__}")
  out, bad = {}, []
  for k, v in obj.items():
    if not isinstance(k, str):
      bad.append(repr(k))
      continue
    try:
      out[k] = C._to_numpy(v)
    except Exception:  # noqa: BLE001
      bad.append(f"{k} ({type(v).__name__})")
    else:
      if out[k].dtype == object:
        bad.append(f"{k} ({type(v).__name__})")
  if bad:
    raise CheckpointError(f"{path}: entries that are not tensors: {', '.join(bad[:10])}")
  return out


def _json_near(path: Path, name: str) -> dict[str, Any] | None:
  cfg = (path if path.is_dir() else path.parent) / name
  if cfg.is_file():
    try:
      d = json.loads(cfg.read_text())
    except (OSError, ValueError):
      return None
    if isinstance(d, dict):
      return d
  return None


def _hf_config_near(path: Path) -> dict[str, Any] | None:
  d = _json_near(path, "config.json")
  if d is not None and str(d.get("model_type", "")).startswith("clip"):
    return d
  return None


def _side_configs(src: Source) -> Source:
  """Attach the configs that hub folders keep next to the weights (timm, open_clip)."""
  timm = _json_near(src.path, "config.json")
  if timm is not None and isinstance(timm.get("architecture"), str):
    src.timm_config = timm
  open_clip = _json_near(src.path, "open_clip_config.json")
  if open_clip is not None and isinstance(open_clip.get("model_cfg"), Mapping):
    src.open_clip_config = open_clip
  return src


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  from safetensors import safe_open

  try:
    out = {}
    with safe_open(str(path), framework="np") as f:
      meta = dict(f.metadata() or {})
      for k in f.keys():
        out[k] = f.get_tensor(k)
    return out, meta
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"{path}: not a readable .safetensors file ({e})") from None


def read_source(path: str | Path) -> Source:
  """Read any supported checkpoint file (or a Hugging Face model directory)."""
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"{path}: no such file")
  if path.is_dir():
    return _side_configs(_read_hf_directory(path))
  return _side_configs(_read_file(path))


def _read_file(path: Path) -> Source:
  if path.stat().st_size == 0:
    raise CheckpointError(f"{path}: empty file")
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    tensors, meta = _read_safetensors(path)
    return Source(path, tensors, "safetensors", file_metadata=meta,
                  hf_config=_hf_config_near(path))
  if suffix == ".npz":
    return Source(path, C.read_checkpoint(path), "npz")
  if is_torchscript(path):
    tensors, classes = _read_torchscript(path)
    return Source(path, tensors, "torchscript", module_classes=classes)
  obj = C.read_torch_file(path)
  wrapper, meta = None, {}
  if isinstance(obj, Mapping):
    for w in ("state_dict", "model_state", "model", "module"):
      if w in obj and isinstance(obj[w], Mapping):
        wrapper = w
        if isinstance(obj.get("meta"), Mapping):
          meta = dict(obj["meta"])
        obj = obj[w]
        break
  src = Source(path, _tensors_from(obj, path), "pickle", wrapper, meta)
  if suffix == ".bin":
    src.hf_config = _hf_config_near(path)
  return src


def _read_hf_directory(path: Path) -> Source:
  cfg = _hf_config_near(path)
  files: list[Path] = []
  for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
    if (path / index).is_file():
      weight_map = json.loads((path / index).read_text()).get("weight_map", {})
      files = [path / f for f in sorted(set(weight_map.values()))]
      break
  if not files:
    for name in ("model.safetensors", "pytorch_model.bin"):
      if (path / name).is_file():
        files = [path / name]
        break
  if not files:
    if (path / "_CHECKPOINT_METADATA").exists() or any(p.name.isdigit() for p in path.iterdir()):
      raise CheckpointError(f"{path}: this is an Orbax checkpoint directory; to export it give "
                            "a .pth/.pyth/.safetensors file as --output")
    raise CheckpointError(f"{path}: a directory, but neither a Hugging Face model directory "
                          "(config.json + model.safetensors / pytorch_model.bin) nor an Orbax "
                          "checkpoint")
  tensors: dict[str, np.ndarray] = {}
  for f in files:
    tensors.update(read_source(f).tensors)
  return Source(path, tensors, "hf-directory", hf_config=cfg)


# ============================================================================= detection
def _looks(keys: set[str]) -> str | None:
  def any_start(*prefixes):
    return any(k.startswith(prefixes) for k in keys)

  if any_start("vision_model.", "text_model.") or "embeddings.patch_embedding.weight" in keys:
    return "hf"
  if {"cls_token", "patch_embed.proj.weight"} & keys or any_start("blocks."):
    return "timm"
  if any_start("cls_head.") or {"backbone.transformer.norm.weight",
                                "transformer.norm.weight"} & keys:
    return "mmaction2"
  if any_start("visual."):
    return "clip"
  stripped = {k[len("module."):] if k.startswith("module.") else k for k in keys}
  stripped = {k[len(PREFIX):] if k.startswith(PREFIX) else k for k in stripped}
  if "transformer.temporal_cls_token" in stripped or any(k.startswith(PREFIX) for k in keys):
    return "official"
  if "conv1.weight" in keys and "class_embedding" in keys:
    return "clip"
  return None


_SIGNATURES = {
  "official": "backbone.* keys with transformer.temporal_cls_token / proj.2",
  "mmaction2": "backbone.transformer.norm.* and cls_head.fc_cls.* (or a prefix-less backbone)",
  "clip": "visual.* keys (full CLIP) or class_embedding / conv1.weight / transformer.resblocks.N",
  "hf": "vision_model.embeddings.* / vision_model.encoder.layers.N.*",
  "timm": "cls_token / pos_embed / patch_embed.proj.weight / blocks.N.*",
}


def detect_format(src: Source, requested: str | None = None) -> str:
  """The format of ``src`` from its key names; ``requested`` must agree when given."""
  keys = set(src.tensors)
  found = _looks(keys)
  sample = ", ".join(sorted(keys)[:4])
  if requested is not None:
    if requested not in FORMATS:
      raise CheckpointError(f"unknown format {requested!r}; one of {', '.join(FORMATS)}")
    if found != requested:
      seen = f"its keys look like {found}" if found else "its keys match no known format"
      raise CheckpointError(
        f"{src.path}: --format {requested} does not fit this checkpoint: expected "
        f"{_SIGNATURES[requested]}; {seen} (e.g. {sample})")
    return requested
  if found is None:
    raise CheckpointError(f"{src.path}: cannot tell the checkpoint format from its keys (e.g. "
                          f"{sample}); pass --format {'|'.join(FORMATS)}")
  return found


# ============================================================================= model configs
MMACTION2_BACKBONE_DEFAULTS: dict[str, Any] = {
  # MMAction2's UniFormerV2.__init__ defaults (differ from the official factories).
  "input_resolution": 224, "patch_size": 16, "width": 768, "layers": 12, "heads": 12,
  "backbone_drop_path_rate": 0.0, "t_size": 8, "kernel_size": 3, "dw_reduction": 1.5,
  "temporal_downsample": False, "no_lmhra": True, "double_lmhra": False,
  "return_list": [8, 9, 10, 11], "n_layers": 4, "n_dim": 768, "n_head": 12, "mlp_factor": 4.0,
  "drop_path_rate": 0.0, "mlp_dropout": [0.5, 0.5, 0.5, 0.5],
}


class _NotLiteral:
  pass


def _literal(node: ast.AST) -> Any:
  """A Python-literal value of an expression, allowing ``dict(k=v)``; other leaves become
  ``_NotLiteral`` (nothing is evaluated)."""
  if isinstance(node, ast.Constant):
    return node.value
  if isinstance(node, (ast.List, ast.Tuple)):
    return [_literal(e) for e in node.elts]
  if isinstance(node, ast.Dict):
    pairs = zip(node.keys, node.values, strict=True)
    return {_literal(k): _literal(v) for k, v in pairs if k is not None}
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
    return {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg}
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
    v = _literal(node.operand)
    return -v if isinstance(v, (int, float)) else _NotLiteral()
  return _NotLiteral()


def mmaction2_model_dict(meta: Mapping[str, Any]) -> dict[str, Any] | None:
  """The ``model = ...`` dict of an MMAction2 checkpoint's ``meta['cfg']`` text, if literal."""
  cfg = meta.get("cfg")
  if isinstance(cfg, Mapping):
    return dict(cfg.get("model", cfg))
  if not isinstance(cfg, str):
    return None
  try:
    tree = ast.parse(cfg)
  except SyntaxError:
    return None
  for stmt in tree.body:
    if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
        and isinstance(stmt.targets[0], ast.Name) and stmt.targets[0].id == "model"):
      value = _literal(stmt.value)
      return value if isinstance(value, dict) else None
  return None


def config_from_mmaction2(model: Mapping[str, Any], **overrides) -> ModelConfig:
  """ModelConfig from an MMAction2 ``Recognizer3D`` model dict (backbone + cls_head)."""
  b = {**MMACTION2_BACKBONE_DEFAULTS, **dict(model.get("backbone", {}))}
  head = dict(model.get("cls_head", {}))
  needed = list(MMACTION2_BACKBONE_DEFAULTS)
  bad = [k for k in needed if isinstance(b[k], _NotLiteral)]
  if bad or "num_classes" not in head or isinstance(head["num_classes"], _NotLiteral):
    raise ValueError("the MMAction2 config in the checkpoint is not plain literals "
                     f"({bad or ['cls_head.num_classes']}); pass --official-config or --config")
  kw = dict(
    num_classes=int(head["num_classes"]), num_frames=int(b["t_size"]),
    input_resolution=int(b["input_resolution"]), patch_size=int(b["patch_size"]),
    width=int(b["width"]), layers=int(b["layers"]), heads=int(b["heads"]),
    temporal_kernel=int(b["kernel_size"]), temporal_downsample=bool(b["temporal_downsample"]),
    no_lmhra=bool(b["no_lmhra"]), double_lmhra=bool(b["double_lmhra"]),
    dw_reduction=float(b["dw_reduction"]), return_list=tuple(int(i) for i in b["return_list"]),
    n_layers=int(b["n_layers"]), n_dim=int(b["n_dim"]), n_head=int(b["n_head"]),
    mlp_factor=float(b["mlp_factor"]), backbone_drop_path_rate=float(b["backbone_drop_path_rate"]),
    drop_path_rate=float(b["drop_path_rate"]),
    mlp_dropout=tuple(float(p) for p in b["mlp_dropout"]),
    cls_dropout=float(head.get("dropout_ratio", 0.0)),
  )
  kw.update(overrides)
  return ModelConfig(**kw)


def mmaction2_config_text(cfg: ModelConfig) -> str:
  """``model = {...}`` (Python-literal text) of the MMAction2 model equivalent to ``cfg``.

  MMAction2 has no FROZEN option: the exported ``balance`` of -1e4 emulates it exactly.
  """
  import pprint

  model = {
    "type": "Recognizer3D",
    "backbone": {
      "type": "UniFormerV2", "input_resolution": cfg.input_resolution,
      "patch_size": cfg.patch_size, "width": cfg.width, "layers": cfg.layers,
      "heads": cfg.heads, "t_size": cfg.num_frames, "kernel_size": cfg.temporal_kernel,
      "dw_reduction": cfg.dw_reduction, "backbone_drop_path_rate": cfg.backbone_drop_path_rate,
      "temporal_downsample": cfg.temporal_downsample, "no_lmhra": cfg.no_lmhra,
      "double_lmhra": cfg.double_lmhra, "return_list": list(cfg.return_list),
      "n_layers": cfg.n_layers, "n_dim": cfg.n_dim, "n_head": cfg.n_head,
      "mlp_factor": cfg.mlp_factor, "drop_path_rate": cfg.drop_path_rate,
      "mlp_dropout": list(cfg.mlp_dropout), "clip_pretrained": False,
    },
    "cls_head": {"type": "UniFormerHead", "dropout_ratio": cfg.cls_dropout,
                 "num_classes": cfg.num_classes, "in_channels": cfg.n_dim,
                 "average_clips": "prob"},
    "data_preprocessor": {"type": "ActionDataPreprocessor", "mean": [114.75] * 3,
                          "std": [57.375] * 3, "format_shape": "NCTHW"},
  }
  return "model = " + pprint.pformat(model, sort_dicts=False)


def config_from_source(src: Source, fmt: str) -> ModelConfig | None:
  """A model config carried by the checkpoint itself, if any (MMAction2 meta, our safetensors
  export metadata)."""
  from uniformerv2_jax.checkpoint import config_from_json

  for meta in (src.file_metadata, src.meta):
    if isinstance(meta.get(CONFIG_META_KEY), str):
      return config_from_json(json.loads(meta[CONFIG_META_KEY]))
  if fmt == "mmaction2" and src.meta:
    model = mmaction2_model_dict(src.meta)
    if model is not None:
      return config_from_mmaction2(model)
  return None


# ============================================================================= conversion
@dataclasses.dataclass
class Converted:
  """An official-key state dict (``backbone.`` prefix dropped) and what happened on the way."""

  fmt: str
  state: OrderedDict[str, np.ndarray]
  ignored: list[str] = dataclasses.field(default_factory=list)  # source keys deliberately dropped
  renamed: int = 0  # source keys whose name changed
  inflated: list[str] = dataclasses.field(default_factory=list)
  resized: list[str] = dataclasses.field(default_factory=list)
  cast: list[str] = dataclasses.field(default_factory=list)  # cast to float32
  notes: list[str] = dataclasses.field(default_factory=list)
  partial: bool = False  # only part of the model comes from the checkpoint (CLIP-like)


def _apply_rules(tensors: Mapping[str, np.ndarray], rules, ignored_patterns, outside_prefix: str,
                 outside_ignored=()) -> tuple[dict[str, np.ndarray], list[str], list[str], int]:
  """Rename a foreign ViT state dict with a rule table. Returns (visual dict with official
  names, ignored source keys, unknown source keys, renamed count)."""
  parts: dict[str, dict[str, np.ndarray]] = {}
  out: dict[str, np.ndarray] = {}
  ignored, unknown = [], []
  renamed = 0
  for key, value in tensors.items():
    if outside_prefix and not key.startswith(outside_prefix):
      if any(re.fullmatch(p, key) for p in outside_ignored):
        ignored.append(key)
      else:
        unknown.append(key)
      continue
    k = key[len(outside_prefix):]
    if any(re.fullmatch(p, k) for p in ignored_patterns):
      ignored.append(key)
      continue
    for pattern, template, transform in rules:
      m = re.fullmatch(pattern, k)
      if m is None:
        continue
      target = m.expand(template)
      renamed += target != key
      if transform.startswith("pack_"):
        parts.setdefault(target, {})[transform[-1]] = value
      elif transform == "squeeze":  # drop leading length-1 axes
        shape = list(value.shape)
        while len(shape) > 1 and shape[0] == 1:
          shape.pop(0)
        out[target] = value.reshape(shape)
      else:
        out[target] = value
      break
    else:
      unknown.append(key)
  for target, qkv in parts.items():
    if set(qkv) != {"q", "k", "v"}:
      raise CheckpointError(f"{target}: the source has only the {sorted(qkv)} projection(s) of "
                            "q, k, v")
    out[target] = np.concatenate([qkv["q"], qkv["k"], qkv["v"]], axis=0)
  return out, ignored, unknown, renamed


# ============================================================================= CLIP activation
CLIP_ACTIVATION_FLAG = "--clip-activation"
# transformers' ACT2FN names that are exactly one of the model's activations ("gelu" is
# torch.nn.functional.gelu with approximate="none"). gelu_new / gelu_pytorch_tanh (tanh
# approximations), gelu_fast, quick_gelu variants with other constants... are refused.
HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}


def _hf_vision_config(hf: Mapping[str, Any]) -> Mapping[str, Any]:
  return hf.get("vision_config", hf) if hf.get("model_type") == "clip" else hf


def timm_name_activation(name: str) -> tuple[str | None, str]:
  """The MLP activation of a timm model name (``architecture[.tag]``), or None with the reason.

  timm builds ``*_clip_quickgelu_*`` models with QuickGELU and every other ``vit_*_clip_*`` with
  exact GELU. One case stays open: ``vit_*_clip_*.openai`` (no ``quickgelu``) holds OpenAI's
  weights, trained with QuickGELU, in a model timm runs with GELU.
  """
  arch, _, tag = name.partition(".")
  if "quickgelu" in arch:
    return "quick_gelu", f"timm model {name} is built with QuickGELU"
  if re.fullmatch(r"vit_\w*_clip_\w*", arch):
    if tag.startswith("openai"):
      return None, (f"timm model {name} holds OpenAI's weights (trained with QuickGELU) in an "
                    "architecture timm runs with exact GELU")
    return "gelu", f"timm model {name} is built with exact GELU (its *_quickgelu_* twins are not)"
  return None, f"{name!r} is not a timm CLIP ViT name (vit_*_clip_*)"


def clip_activation_of(src: Source, fmt: str) -> tuple[str | None, str]:
  """What a CLIP-like source itself says about its MLP activation: (activation or None when it
  does not record it, the evidence in words)."""
  if fmt == "hf":
    if src.hf_config is None:
      return None, ("Hugging Face weights without their config.json do not record hidden_act")
    act = _hf_vision_config(src.hf_config).get("hidden_act", "quick_gelu")
    if act not in HF_ACTIVATIONS:
      raise CheckpointError(
        f"{src.path}: the Hugging Face config has hidden_act={act!r}; the model implements "
        f"{', '.join(repr(a) for a in HF_ACTIVATIONS)} only (exact GELU or QuickGELU)")
    return HF_ACTIVATIONS[act], f"the Hugging Face config.json says hidden_act={act!r}"
  if fmt == "timm":
    t = src.timm_config
    if t is None:
      return None, "a timm state dict does not record its model name or activation"
    name = t["architecture"]
    tag = (t.get("pretrained_cfg") or {}).get("tag")
    if tag and "." not in name:
      name = f"{name}.{tag}"
    return timm_name_activation(name)
  if fmt == "clip":
    if src.container == "torchscript":
      acts = {k: v for k, v in src.module_classes.items()
              if re.fullmatch(r"(visual\.)?transformer\.resblocks\.\d+\.mlp\.gelu", k)}
      kinds = {v.rsplit(".", 1)[-1] for v in acts.values()}
      # OpenAI's released archives script clip.model.QuickGELU; open_clip's QuickGELU has the
      # same name and formula. torch.nn.GELU is exact only with approximate="none".
      if acts and kinds == {"QuickGELU"}:
        return "quick_gelu", "the TorchScript archive's MLP activation modules are QuickGELU"
      if acts and kinds == {"GELU(approximate=none)"}:
        return "gelu", "the TorchScript archive's MLP activation modules are torch.nn.GELU()"
      if acts:
        raise CheckpointError(f"{src.path}: the TorchScript archive's MLP activation modules are "
                              f"{sorted(set(acts.values()))}; the model implements QuickGELU "
                              "and exact GELU only")
    oc = src.open_clip_config
    if oc is not None:
      quick = bool(oc["model_cfg"].get("quick_gelu", False))  # open_clip's default: nn.GELU
      return ("quick_gelu" if quick else "gelu",
              f"open_clip_config.json has model_cfg.quick_gelu={quick}")
    return None, ("a state dict in OpenAI CLIP layout does not record its activation (OpenAI's "
                  "released weights use QuickGELU, open_clip's LAION ViT-B-16 exact GELU)")
  raise ValueError(fmt)


def resolve_clip_activation(src: Source, fmt: str, requested: str | None) -> tuple[str, str]:
  """The activation a CLIP-like source is converted with, and a note saying why. What the
  source records wins; ``requested`` (``--clip-activation``) must agree with it, and is
  required when the source records nothing."""
  if requested is not None and requested not in ACTIVATIONS:
    raise CheckpointError(f"{CLIP_ACTIVATION_FLAG} {requested!r}: one of {', '.join(ACTIVATIONS)}")
  known, why = clip_activation_of(src, fmt)
  if known is not None:
    if requested is not None and requested != known:
      raise CheckpointError(f"{src.path}: {CLIP_ACTIVATION_FLAG} {requested} contradicts the "
                            f"source: {why}")
    return known, f"activation {known}: {why}"
  if requested is None:
    raise CheckpointError(
      f"{src.path}: {why}; pass {CLIP_ACTIVATION_FLAG} quick_gelu (OpenAI CLIP) or "
      f"{CLIP_ACTIVATION_FLAG} gelu (towers trained with exact GELU)")
  return requested, f"activation {requested}: as given by {CLIP_ACTIVATION_FLAG} ({why})"


def _check_hf_config(src: Source, cfg: ModelConfig) -> list[str]:
  notes = []
  hf = src.hf_config
  if hf is None:
    return notes
  vision = _hf_vision_config(hf)
  act = vision.get("hidden_act", "quick_gelu")
  eps = float(vision.get("layer_norm_eps", 1e-5))
  if abs(eps - 1e-5) > 1e-12:
    raise CheckpointError(f"{src.path}: layer_norm_eps={eps} in the Hugging Face config; the "
                          "model uses 1e-5")
  heads = vision.get("num_attention_heads")
  if heads is not None and int(heads) != cfg.heads:
    raise CheckpointError(f"{src.path}: the Hugging Face model has {heads} attention heads, the "
                          f"config {cfg.heads}")
  notes.append(f"Hugging Face config: hidden_act {act}, layer_norm_eps {eps:g}, heads {heads}")
  return notes


def clip_visual(src: Source, fmt: str, cfg: ModelConfig) -> tuple[
    dict[str, np.ndarray], list[str], list[str], list[str], int]:
  """The CLIP image tower of a clip/hf/timm source under the official names.

  Returns (visual, ignored source keys, unknown source keys, notes, renamed count).
  """
  t = src.tensors
  notes: list[str] = []
  if fmt == "clip":
    full = any(k.startswith("visual.") for k in t)
    rules = [(r"(.*)", r"\1", "identity")]
    ignored_visual = [re.escape(k) for k in C.CLIP_VISUAL_IGNORED] + [r".*\.attn_mask"]
    if full:  # text tower, logit_scale and the integer scalars are all outside visual.
      visual, ignored, unknown, renamed = _apply_rules(t, rules, ignored_visual, "visual.",
                                                       outside_ignored=(r".*",))
    else:
      visual, ignored, unknown, renamed = _apply_rules(t, rules, ignored_visual, "")
    if cfg.heads != cfg.width // 64:
      notes.append(f"OpenAI CLIP towers use width // 64 = {cfg.width // 64} heads; the config has "
                   f"{cfg.heads}")
  elif fmt == "hf":
    notes += _check_hf_config(src, cfg)
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in t) else ""
    visual, ignored, unknown, renamed = _apply_rules(
      t, C.HF_CLIP_VISION_RULES, C.HF_CLIP_IGNORED, prefix, C.HF_CLIP_OUTSIDE_IGNORED)
  elif fmt == "timm":
    tensors = dict(t)
    bias = tensors.pop(C.TIMM_PATCH_BIAS, None)
    visual, ignored, unknown, renamed = _apply_rules(tensors, C.TIMM_CLIP_RULES,
                                                     C.TIMM_CLIP_IGNORED, "")
    if bias is not None:
      if np.any(np.asarray(bias) != 0):
        raise CheckpointError(
          f"{src.path}: {C.TIMM_PATCH_BIAS} is non-zero (max |b| {np.abs(bias).max():.3g}); the "
          "model's patch embedding (like OpenAI CLIP's) has no bias")
      ignored.append(C.TIMM_PATCH_BIAS)
  else:
    raise ValueError(fmt)
  return visual, ignored, unknown, notes, renamed


def convert_source(src: Source, fmt: str, cfg: ModelConfig, *,
                   allow_missing: bool = False) -> Converted:
  """Any supported source -> official-key state dict for ``cfg``, strictly checked."""
  name = str(src.path)
  if fmt == "official":
    state = OrderedDict(C.strip_prefix(src.tensors))
    C.check_keys(state, cfg, allow_missing=allow_missing, source=name)
    return Converted(fmt, state)
  if fmt == "mmaction2":
    full, notes = C.official_from_mmaction2(src.tensors, cfg)
    renamed = sum(1 for k in src.tensors if k in {m for _, m in C.MMACTION2_RENAMES})
    dropped = [n.split(":")[0] for n in notes]
    state = OrderedDict(C.strip_prefix(full))
    C.check_keys(state, cfg, allow_missing=allow_missing, source=name)
    return Converted(fmt, state, ignored=dropped, renamed=renamed, notes=notes)
  if fmt not in CLIP_LIKE:
    raise CheckpointError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
  visual, ignored, unknown, notes, renamed = clip_visual(src, fmt, cfg)
  res = Converted(fmt, OrderedDict(), ignored=ignored, renamed=renamed, notes=notes, partial=True)
  want = C.expected_torch_shapes(cfg)
  for key in list(visual):
    a = np.asarray(visual[key])
    if key == "conv1.weight" and a.ndim == 4:
      a = C.inflate_patch_kernel(a, cfg.kt)
      res.inflated.append(f"conv1.weight {list(visual[key].shape)} -> {list(a.shape)} (centre "
                          f"of kt={cfg.kt})")
    if (key == "positional_embedding" and a.ndim == 2 and a.shape[0] != cfg.tokens
        and a.shape[1] == cfg.width):
      g = int(round((a.shape[0] - 1) ** 0.5))
      if g * g == a.shape[0] - 1:
        b = C.resize_positional_embedding(a, cfg.grid)
        msg = (f"positional_embedding resized {list(a.shape)} -> {list(b.shape)}: grid "
               f"{g}x{g} -> {cfg.grid}x{cfg.grid} by bicubic interpolation (class-token row "
               "kept); the official loader would leave it at random init")
        log.info(msg)
        res.resized.append(msg)
        a = b
    if a.dtype != np.float32:
      if np.issubdtype(a.dtype, np.floating):
        res.cast.append(f"{key} {a.dtype}")
      a = a.astype(np.float32)
    res.state[key] = a
  if unknown:
    raise CheckpointError(
      f"{name}: {len(unknown)} key(s) of this {fmt} checkpoint have no counterpart in the "
      "model:\n" + "\n".join(f"  {k}  {list(np.shape(src.tensors[k]))}" for k in unknown))
  C.check_keys(res.state, cfg, allow_missing=True, source=name)  # unexpected / wrong shape
  missing = [k for k in C.clip_derived_keys(cfg) if k not in res.state]
  if missing and not allow_missing:
    raise CheckpointError(
      f"{name}: {len(missing)} CLIP image-tower key(s) missing for a {cfg.layers}-layer, width "
      f"{cfg.width} backbone (pass --allow-missing to keep them at init):\n" + "\n".join(
        f"  {k}  expected {list(want[k][0])}" for k in missing))
  order = [k for k in want if k in res.state]
  res.state = OrderedDict((k, res.state[k]) for k in order)
  return res


# ============================================================================= import / export
@dataclasses.dataclass
class Imported:
  model: Any  # UniFormerV2
  cfg: ModelConfig
  source: Source
  converted: Converted
  flat: dict[tuple[str, ...], np.ndarray]  # the variables that came from the checkpoint
  kept_at_init: list[str]  # official keys left at the official initialisation


def import_model(path: str | Path, cfg: ModelConfig | None = None, fmt: str | None = None, *,
                 allow_missing: bool = False, seed: int = 0, src: Source | None = None,
                 clip_activation: str | None = None) -> Imported:
  """Read ``path`` in any supported format and build the model (strict unless
  ``allow_missing``; CLIP-like sources initialise the backbone only, the rest keeps the
  official initialisation drawn from ``seed``).

  A CLIP-like source sets the model's ``activation`` (``resolve_clip_activation``: what the
  source records, else ``clip_activation``, else an error); ``cfg.activation`` is replaced, as
  the tower's weights only mean something with the activation they were trained with. An
  official / MMAction2 checkpoint is QuickGELU unless the config it carries says otherwise, and
  ``cfg`` must agree.
  """
  src = src or read_source(path)
  fmt = detect_format(src, fmt)
  carried = config_from_source(src, fmt)
  if cfg is None:
    cfg = carried
    if cfg is None:
      raise CheckpointError(f"{src.path}: a {fmt} checkpoint does not say which model it is; "
                            "pass --official-config CFG.json or --config CONFIG")
  notes = []
  if fmt in CLIP_LIKE:
    act, note = resolve_clip_activation(src, fmt, clip_activation)
    if cfg.activation != act:
      note += f" (replaces the config's {cfg.activation})"
      cfg = cfg.replace(activation=act)
    notes.append(note)
  else:
    if clip_activation is not None:
      raise CheckpointError(f"{CLIP_ACTIVATION_FLAG} applies to CLIP image towers (clip, hf, "
                            f"timm), not to a {fmt} checkpoint, whose config sets the activation")
    # The official code and MMAction2 hard-code QuickGELU; only our own exports (.safetensors
    # with the config in their metadata) can hold another activation.
    src_act = carried.activation if carried is not None else "quick_gelu"
    if cfg.activation != src_act:
      raise CheckpointError(
        f"{src.path}: the config has activation {cfg.activation}, the {fmt} checkpoint "
        f"{src_act}" + ("" if carried is not None else " (the official code and MMAction2 "
                        "hard-code QuickGELU)"))
  conv = convert_source(src, fmt, cfg, allow_missing=allow_missing)
  conv.notes[:0] = notes
  flat = C.flax_from_torch(conv.state, cfg, allow_missing=allow_missing or conv.partial,
                           source=str(src.path))
  from uniformerv2_jax.model import create_model

  try:
    model = create_model(cfg, seed, values=flat)
  except ValueError as e:
    raise CheckpointError(str(e)) from None
  kept = [e.key for e in C.entries(cfg) if e.rule.flax not in flat]
  return Imported(model, cfg, src, conv, flat, kept)


def official_state(model) -> OrderedDict[str, np.ndarray]:
  """The official flat state dict (``backbone.*``, official order, NumPy) of a model."""
  return C.torch_from_flax(flat_state(model), model.cfg)


def export_state(model, fmt: str = "official") -> OrderedDict[str, np.ndarray]:
  sd = official_state(model)
  if fmt == "official":
    return sd
  if fmt == "mmaction2":
    return C.mmaction2_from_official(sd, model.cfg)
  raise CheckpointError(f"export writes the official or the mmaction2 layout, not {fmt!r}")


def write_state(path: str | Path, sd: Mapping[str, np.ndarray], cfg: ModelConfig, fmt: str,
                meta: Mapping[str, str] | None = None, progress: bool = False) -> Path:
  """Write a state dict as ``.pth/.pyth/.pt`` (torch.save of an OrderedDict of tensors; MMAction2:
  ``{'meta', 'state_dict'}``), ``.safetensors`` or ``.npz``."""
  from uniformerv2_jax.checkpoint import config_to_json

  path = Path(path)
  suffix = path.suffix.lower()
  if cfg.activation != "quick_gelu" and (fmt != "official" or suffix != ".safetensors"):
    # The official code and MMAction2 hard-code QuickGELU, and a .pth/.npz state dict has no
    # room for the config: the weights would silently be run with the wrong activation.
    raise CheckpointError(
      f"{path}: the model's backbone uses activation {cfg.activation}, which the official code "
      "and MMAction2 cannot run and a .pth/.pyth/.npz file cannot record; export it as an "
      "official-layout .safetensors (its metadata carries the config)")
  path.parent.mkdir(parents=True, exist_ok=True)
  meta = {k: str(v) for k, v in (meta or {}).items()}
  if suffix == ".safetensors":
    from safetensors.numpy import save_file

    info = {"format": "pt", CONFIG_META_KEY: json.dumps(config_to_json(cfg)), **meta}
    save_file({k: np.array(v, order="C") for k, v in sd.items()}, str(path), metadata=info)
  elif suffix == ".npz":
    np.savez(path, **sd)
  elif suffix in TORCH_SUFFIXES:
    import torch
    from tqdm import tqdm

    items = tqdm(sd.items(), total=len(sd), desc="tensors", unit="t", disable=not progress)
    tensors = OrderedDict((k, torch.from_numpy(np.array(v, order="C"))) for k, v in items)
    if fmt == "mmaction2":
      # MMAction2 reads ``cfg``; our own config rides along (it knows FROZEN, MMAction2 not).
      full_meta = {"cfg": mmaction2_config_text(cfg),
                   CONFIG_META_KEY: json.dumps(config_to_json(cfg)), **meta}
      torch.save({"meta": full_meta, "state_dict": tensors}, path)
    else:
      torch.save(tensors, path)
  else:
    raise CheckpointError(f"{path}: unknown output type {suffix!r}; use .pth, .pyth, .pt, "
                          ".safetensors or .npz (or a directory for an Orbax checkpoint)")
  return path
