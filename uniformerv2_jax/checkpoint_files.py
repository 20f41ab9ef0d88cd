"""Reading and writing the weight files of other code bases, without running any of their code.

This module owns the files, not their meaning: it turns a file (or a Hugging Face model folder)
into flat ``{name: NumPy array}`` tensors plus the side information stored with them, and writes
such a dict back. What the names mean (which model variable each tensor is) is ``mapping.py``'s;
deciding the format and building a model is ``convert.py``'s.

Containers read:
  pickle        ``torch.save`` files (``.pth/.pyth/.pt/.bin/.ckpt``), read with
                ``torch.load(weights_only=True)``: a pickle that needs any code is refused.
  torchscript   ``torch.jit.save`` archives (OpenAI CLIP's release files): tensors and submodule
                class names read from ``data.pkl`` by a restricted unpickler; no code runs.
  safetensors   ``.safetensors`` with its string metadata.
  npz           ``.npz`` without pickled objects.
  hf-directory  a Hugging Face model folder (``config.json`` + single or sharded weights).
One list of wrappers (``WRAPPERS``) is unwrapped for every pickle; the configs that hub folders
keep next to the weights (HF ``config.json``, timm ``config.json``, ``open_clip_config.json``)
are attached to the ``Source``. ``write_tensors`` writes ``.pth``-like pickles (tensors only),
``.safetensors`` and ``.npz``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from uniformerv2_jax.errors import InputError

TORCH_SUFFIXES = (".pth", ".pyth", ".pt", ".bin", ".ckpt")
FILE_SUFFIXES = TORCH_SUFFIXES + (".safetensors", ".npz")
# Top-level keys whose value is the state dict, first match wins: MMAction2 / Lightning
# ``state_dict``, the official training checkpoints' ``model_state``, other trainers' ``model``
# and DDP-style ``module``.
WRAPPERS = ("state_dict", "model_state", "model", "module")


class CheckpointError(InputError):
  """A checkpoint that cannot be read or does not fit the model (the message says why)."""


# ----------------------------------------------------------------------------- sources
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


# ----------------------------------------------------------------------------- TorchScript
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
  """Whether ``path`` is a ``torch.jit.save`` archive (code and constants beside the data)."""
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


# ----------------------------------------------------------------------------- pickles
def _to_numpy(t) -> np.ndarray:
  if isinstance(t, np.ndarray):
    return t
  import torch  # only reached for objects torch.load returned

  if isinstance(t, torch.Tensor):
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
      return t.float().numpy()  # NumPy has no bfloat16; float32 holds it exactly
    return t.numpy()
  return np.asarray(t)


def read_torch_file(path: str | Path) -> Any:
  """``torch.load(path, weights_only=True)``: a pickle that needs any code is refused."""
  path = Path(path)
  try:
    import torch
  except ImportError:  # pragma: no cover - torch is a dev dependency
    raise CheckpointError(
      f"{path}: reading a PyTorch file needs torch (pip install torch); or convert it once "
      "to .npz / .safetensors") from None
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 - every failure becomes one clear message
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
      raise CheckpointError(
        f"{path}: refused to unpickle: the file needs code or objects other than tensors and "
        f"plain containers (nothing was executed). Detail: {msg}") from None
    raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({msg})") from None


def unwrap(obj: Any) -> tuple[Any, str | None, dict[str, Any]]:
  """(the state dict inside ``obj``, the wrapper key or None, the ``meta`` dict beside it)."""
  if isinstance(obj, Mapping):
    for w in WRAPPERS:
      if w in obj and isinstance(obj[w], Mapping):
        meta = dict(obj["meta"]) if isinstance(obj.get("meta"), Mapping) else {}
        return obj[w], w, meta
  return obj, None, {}


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
      out[k] = _to_numpy(v)
    except Exception:  # noqa: BLE001
      bad.append(f"{k} ({type(v).__name__})")
    else:
      if out[k].dtype == object:
        bad.append(f"{k} ({type(v).__name__})")
  if bad:
    raise CheckpointError(f"{path}: entries that are not tensors: {', '.join(bad[:10])}")
  return out


# ----------------------------------------------------------------------------- safetensors, npz
def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(tensors, string metadata) of a ``.safetensors`` file."""
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


def _read_npz(path: Path) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"{path}: not a readable .npz file ({e})") from None


# ----------------------------------------------------------------------------- hub folders
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
  if d is not None and (str(d.get("model_type", "")).startswith("clip")
                        or d.get("model_type") == "vit"):
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
  file_metadata: dict[str, str] = {}
  for f in files:
    part = read_source(f)
    tensors.update(part.tensors)
    file_metadata.update(part.file_metadata)  # our hub folders' model config rides here
  return Source(path, tensors, "hf-directory", hf_config=cfg, file_metadata=file_metadata)


# ----------------------------------------------------------------------------- entry points
def read_source(path: str | Path) -> Source:
  """Read any supported checkpoint file (or a Hugging Face model directory)."""
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"{path}: no such file")
  if path.is_dir():
    return _side_configs(_read_hf_directory(path))
  return _side_configs(_read_file(path))


def read_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
  """Read a flat {key: array} from one ``.pth/.pyth/.pt/.bin/.ckpt`` (torch), ``.npz`` or
  ``.safetensors`` file, the ``WRAPPERS`` unwrapped.

  A TorchScript archive or a directory is refused with a message naming the reader that
  handles it (``read_source``, ``uniformerv2_jax.load_checkpoint``).
  """
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"{path}: no such file")
  if path.is_dir():
    raise CheckpointError(f"{path}: is a directory; Orbax checkpoints load with "
                          "uniformerv2_jax.load_checkpoint(dir)")
  return _read_file(path, torchscript=False).tensors


def _read_file(path: Path, torchscript: bool = True) -> Source:
  if path.stat().st_size == 0:
    raise CheckpointError(f"{path}: empty file")
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    tensors, meta = _read_safetensors(path)
    return Source(path, tensors, "safetensors", file_metadata=meta,
                  hf_config=_hf_config_near(path))
  if suffix == ".npz":
    return Source(path, _tensors_from(_read_npz(path), path), "npz")
  if is_torchscript(path):
    if not torchscript:
      raise CheckpointError(
        f"{path}: this is a TorchScript archive (e.g. an OpenAI CLIP release file). Its tensors "
        "are read by the converter's TorchScript reader (convert_torch_weights.py); or export "
        "a state dict once with: torch.save(torch.jit.load(path, map_location='cpu')"
        ".state_dict(), 'out.pth')")
    tensors, classes = _read_torchscript(path)
    return Source(path, tensors, "torchscript", module_classes=classes)
  obj, wrapper, meta = unwrap(read_torch_file(path))
  src = Source(path, _tensors_from(obj, path), "pickle", wrapper, meta)
  if suffix == ".bin":
    src.hf_config = _hf_config_near(path)
  return src


# ----------------------------------------------------------------------------- writing
def write_tensors(path: str | Path, tensors: Mapping[str, np.ndarray], *,
                  metadata: Mapping[str, str] | None = None,
                  torch_wrapper: Mapping[str, Any] | None = None,
                  progress: bool = False) -> Path:
  """Write ``tensors`` (in their order) as ``.safetensors`` (with ``metadata``), ``.npz``, or a
  torch pickle (``TORCH_SUFFIXES``): an OrderedDict of tensors, or, with ``torch_wrapper``,
  ``{**torch_wrapper, 'state_dict': tensors}`` (MMAction2's layout)."""
  path = Path(path)
  suffix = path.suffix.lower()
  if suffix not in FILE_SUFFIXES:
    raise CheckpointError(f"{path}: unknown output type {suffix!r}; use .pth, .pyth, .pt, "
                          ".safetensors or .npz (or a directory for an Orbax checkpoint)")
  path.parent.mkdir(parents=True, exist_ok=True)
  if suffix == ".safetensors":
    from safetensors.numpy import save_file

    # "format": "pt" is what transformers / timm check before reading a safetensors file.
    info = {"format": "pt", **{k: str(v) for k, v in (metadata or {}).items()}}
    save_file({k: np.array(v, order="C") for k, v in tensors.items()}, str(path), metadata=info)
  elif suffix == ".npz":
    np.savez(path, **tensors)
  else:
    import torch
    from tqdm import tqdm

    items = tqdm(tensors.items(), total=len(tensors), desc="tensors", unit="t",
                 disable=not progress)
    out = OrderedDict((k, torch.from_numpy(np.array(v, order="C"))) for k, v in items)
    torch.save({**torch_wrapper, "state_dict": out} if torch_wrapper is not None else out, path)
  return path
