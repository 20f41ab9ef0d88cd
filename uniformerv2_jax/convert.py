"""PyTorch <-> Flax weights for UniFormerV2: ONE mapping table serving both directions.

Every official state-dict key (``backbone.`` prefix dropped) has one rule: the Flax state path,
whether the tensor is one slice of a stacked layer axis, and a named transform whose forward
(torch -> flax) and inverse (flax -> torch) are pure transposes / reshapes / casts, so a round
trip is bit-exact. Loading is strict: missing, unexpected and wrongly shaped keys are collected
and reported together in one error.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uniformerv2_jax.model import ModelConfig, UniFormerV2, create_model
from uniformerv2_jax.variants import config_from_official

PREFIX = "backbone."


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or does not fit the model (the message says why)."""


# ----------------------------------------------------------------------------- transforms
# Each transform: (torch -> flax, flax -> torch). Written with array methods only so they run on
# NumPy arrays (conversion) and under ``jax.eval_shape`` (expected shapes, no memory).
def _heads(cfg: ModelConfig, collection: str) -> int:
  return cfg.heads if collection == "resblocks" else cfg.n_head


Transform = tuple[Callable[[Any, ModelConfig, str], Any], Callable[[Any, ModelConfig, str], Any]]

TRANSFORMS: dict[str, Transform] = {
  "identity": (lambda a, cfg, c: a, lambda a, cfg, c: a),
  # Linear weight [out, in] <-> Dense kernel [in, out].
  "linear": (lambda a, cfg, c: a.T, lambda a, cfg, c: a.T),
  # Packed in_proj_weight [3C, C] (rows q|k|v, head-major) <-> [C, 3, H, Dh].
  "in_proj": (
    lambda a, cfg, c: a.T.reshape(a.shape[1], 3, _heads(cfg, c), a.shape[1] // _heads(cfg, c)),
    lambda a, cfg, c: a.reshape(a.shape[0], -1).T,
  ),
  # out_proj.weight [C, C] (input index h*Dh + d) <-> [H, Dh, C].
  "out_proj": (
    lambda a, cfg, c: a.T.reshape(_heads(cfg, c), a.shape[1] // _heads(cfg, c), a.shape[0]),
    lambda a, cfg, c: a.reshape(-1, a.shape[-1]).T,
  ),
  # Conv3d weight [O, I, kt, kh, kw] <-> [kt, kh, kw, I, O] (conv1 and the depthwise DPE).
  "conv3d": (lambda a, cfg, c: a.transpose(2, 3, 4, 1, 0),
             lambda a, cfg, c: a.transpose(4, 3, 0, 1, 2)),
  # 1x1x1 Conv3d [O, I, 1, 1, 1] <-> Dense kernel [I, O].
  "pointwise": (lambda a, cfg, c: a[:, :, 0, 0, 0].T,
                lambda a, cfg, c: a.T[:, :, None, None, None]),
  # Depthwise temporal Conv3d [R, 1, 3, 1, 1] <-> [3, R].
  "temporal_dw": (lambda a, cfg, c: a[:, 0, :, 0, 0].T,
                  lambda a, cfg, c: a.T[:, None, :, None, None]),
}

# Dtype of integer buffers on each side (torch saves num_batches_tracked as int64).
TORCH_INT = np.int64


@dataclasses.dataclass(frozen=True)
class Rule:
  """One official key pattern <-> one Flax path. ``{i}`` marks a stacked layer index."""

  torch: str
  flax: tuple[str, ...]
  transform: str = "identity"

  @property
  def collection(self) -> str:
    return self.flax[0]


def _block_rules(cfg: ModelConfig) -> list[Rule]:
  rules = []
  lmhras = [] if cfg.no_lmhra else (["lmhra1", "lmhra2"] if cfg.double_lmhra else ["lmhra1"])
  for name in lmhras:
    t, f = f"transformer.resblocks.{{i}}.{name}.pos_embed", ("resblocks", name)
    rules += [
      Rule(f"{t}.0.weight", f + ("bn", "scale")),
      Rule(f"{t}.0.bias", f + ("bn", "bias")),
      Rule(f"{t}.0.running_mean", f + ("bn", "mean")),
      Rule(f"{t}.0.running_var", f + ("bn", "var")),
      Rule(f"{t}.0.num_batches_tracked", f + ("bn", "num_batches_tracked")),
      Rule(f"{t}.1.weight", f + ("down", "kernel"), "pointwise"),
      Rule(f"{t}.1.bias", f + ("down", "bias")),
      Rule(f"{t}.2.weight", f + ("dw_kernel",), "temporal_dw"),
      Rule(f"{t}.2.bias", f + ("dw_bias",)),
      Rule(f"{t}.3.weight", f + ("up", "kernel"), "pointwise"),
      Rule(f"{t}.3.bias", f + ("up", "bias")),
    ]
  rules += _attention_block_rules("transformer.resblocks.{i}", "resblocks", ln3=False)
  return rules


def _attention_block_rules(t: str, f: str, ln3: bool) -> list[Rule]:
  rules = [
    Rule(f"{t}.attn.in_proj_weight", (f, "attn", "in_proj_kernel"), "in_proj"),
    Rule(f"{t}.attn.in_proj_bias", (f, "attn", "in_proj_bias")),
    Rule(f"{t}.attn.out_proj.weight", (f, "attn", "out_proj_kernel"), "out_proj"),
    Rule(f"{t}.attn.out_proj.bias", (f, "attn", "out_proj_bias")),
    Rule(f"{t}.ln_1.weight", (f, "ln_1", "scale")),
    Rule(f"{t}.ln_1.bias", (f, "ln_1", "bias")),
    Rule(f"{t}.mlp.c_fc.weight", (f, "mlp", "c_fc", "kernel"), "linear"),
    Rule(f"{t}.mlp.c_fc.bias", (f, "mlp", "c_fc", "bias")),
    Rule(f"{t}.mlp.c_proj.weight", (f, "mlp", "c_proj", "kernel"), "linear"),
    Rule(f"{t}.mlp.c_proj.bias", (f, "mlp", "c_proj", "bias")),
    Rule(f"{t}.ln_2.weight", (f, "ln_2", "scale")),
    Rule(f"{t}.ln_2.bias", (f, "ln_2", "bias")),
  ]
  if ln3:
    rules += [Rule(f"{t}.ln_3.weight", (f, "ln_3", "scale")),
              Rule(f"{t}.ln_3.bias", (f, "ln_3", "bias"))]
  return rules


def mapping_rules(cfg: ModelConfig) -> list[Rule]:
  """The table, in the official save order (so exports keep the released key order)."""
  rules = [
    Rule("class_embedding", ("class_embedding",)),
    Rule("positional_embedding", ("positional_embedding",)),
    Rule("conv1.weight", ("conv1", "kernel"), "conv3d"),
    Rule("ln_pre.weight", ("ln_pre", "scale")),
    Rule("ln_pre.bias", ("ln_pre", "bias")),
    Rule("transformer.temporal_cls_token", ("temporal_cls_token",)),
  ]
  if not cfg.frozen:
    rules.append(Rule("transformer.balance", ("balance",)))
  rules += _block_rules(cfg)
  rules += [
    Rule("transformer.dpe.{i}.weight", ("dpe", "kernel"), "conv3d"),
    Rule("transformer.dpe.{i}.bias", ("dpe", "bias")),
  ]
  rules += _attention_block_rules("transformer.dec.{i}", "dec", ln3=True)
  rules += [
    Rule("transformer.proj.0.weight", ("head_norm", "scale")),
    Rule("transformer.proj.0.bias", ("head_norm", "bias")),
    Rule("transformer.proj.2.weight", ("head", "kernel"), "linear"),
    Rule("transformer.proj.2.bias", ("head", "bias")),
  ]
  return rules


def _stack_size(cfg: ModelConfig, collection: str) -> int | None:
  return {"resblocks": cfg.layers, "dpe": cfg.n_layers, "dec": cfg.n_layers}.get(collection)


@dataclasses.dataclass(frozen=True)
class Entry:
  """A concrete table row: one torch key <-> (flax path, slice index or None)."""

  key: str  # without the "backbone." prefix
  rule: Rule
  index: int | None


def entries(cfg: ModelConfig) -> Iterator[Entry]:
  """Concrete keys in official save order (blocks interleaved per layer as torch saves them)."""
  rules = mapping_rules(cfg)
  i = 0
  while i < len(rules):
    r = rules[i]
    n = _stack_size(cfg, r.collection)
    if n is None:
      yield Entry(r.torch, r, None)
      i += 1
      continue
    group = [q for q in rules[i:] if q.collection == r.collection]
    for layer in range(n):
      for q in group:
        yield Entry(q.torch.format(i=layer), q, layer)
    i += len(group)


# ----------------------------------------------------------------------------- model state I/O
def flat_state(model: nnx.Module, *filters) -> dict[tuple[str, ...], Any]:
  """{path: array} for the model's variables (Params and BatchStats unless filtered)."""
  state = nnx.state(model, filters or (nnx.Param, nnx.BatchStat))
  return {tuple(str(k) for k in path): v.get_value() if hasattr(v, "get_value") else v.value
          for path, v in nnx.to_flat_state(state)}


def expected_torch_shapes(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Official key -> (shape, dtype) for this config, derived from the table (no memory)."""
  abstract = nnx.eval_shape(lambda: create_model(cfg))
  shapes = flat_state(abstract)
  out = {}
  for e in entries(cfg):
    a = shapes[e.rule.flax]
    shape = a.shape[1:] if e.index is not None else a.shape
    fn = TRANSFORMS[e.rule.transform][1]
    t = jax.eval_shape(lambda x, fn=fn, c=e.rule.collection: fn(x, cfg, c),
                       jax.ShapeDtypeStruct(shape, a.dtype))
    dtype = TORCH_INT if jnp.issubdtype(a.dtype, jnp.integer) else np.dtype(np.float32)
    out[e.key] = (tuple(t.shape), dtype)
  return out


def strip_prefix(sd: Mapping[str, Any]) -> dict[str, Any]:
  """Drop the wrapper's ``backbone.`` (and DDP's ``module.``) prefix from every key."""
  out = {}
  for k, v in sd.items():
    k2 = k[len("module."):] if k.startswith("module.") else k
    k2 = k2[len(PREFIX):] if k2.startswith(PREFIX) else k2
    out[k2] = v
  return out


def _describe(a) -> str:
  return f"{list(np.shape(a))} {np.asarray(a).dtype if not hasattr(a, 'dtype') else a.dtype}"


def check_keys(sd: Mapping[str, Any], cfg: ModelConfig, *, allow_missing: bool = False,
               source: str = "checkpoint") -> list[str]:
  """Raise one CheckpointError naming every missing, unexpected and wrongly shaped key.

  Returns the list of missing keys when ``allow_missing`` (deliberate partial loads).
  """
  want = expected_torch_shapes(cfg)
  missing = [k for k in want if k not in sd]
  unexpected = [k for k in sd if k not in want]
  wrong = [k for k in want if k in sd and tuple(np.shape(sd[k])) != want[k][0]]
  problems = []
  if missing and not allow_missing:
    problems.append(f"{len(missing)} missing key(s):\n" + "\n".join(
      f"  {PREFIX}{k}  expected {list(want[k][0])}" for k in missing))
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected key(s):\n" + "\n".join(
      f"  {PREFIX}{k}  {list(np.shape(sd[k]))}" for k in unexpected))
  if wrong:
    problems.append(f"{len(wrong)} key(s) with the wrong shape:\n" + "\n".join(
      f"  {PREFIX}{k}  got {list(np.shape(sd[k]))}, expected {list(want[k][0])}" for k in wrong))
  if problems:
    raise CheckpointError(f"{source} does not match the model config "
                          f"({_config_summary(cfg)}):\n" + "\n".join(problems))
  return missing


def _config_summary(cfg: ModelConfig) -> str:
  return (f"width {cfg.width}, {cfg.layers} layers, patch {cfg.patch_size}, "
          f"{cfg.input_resolution}px, {cfg.num_classes} classes, "
          f"lmhra {'off' if cfg.no_lmhra else ('double' if cfg.double_lmhra else 'single')}, "
          f"temporal downsample {cfg.temporal_downsample}, return_list {list(cfg.return_list)}, "
          f"frozen {cfg.frozen}")


def flax_from_torch(sd: Mapping[str, Any], cfg: ModelConfig, *, allow_missing: bool = False,
                    source: str = "checkpoint") -> dict[tuple[str, ...], np.ndarray]:
  """Official state dict (prefix stripped) -> {flax path: stacked NumPy array}.

  With ``allow_missing``, paths with any missing slice are left out (the caller keeps init).
  """
  missing = set(check_keys(sd, cfg, allow_missing=allow_missing, source=source))
  pieces: dict[tuple[str, ...], dict[int | None, np.ndarray]] = {}
  for e in entries(cfg):
    if e.key in missing:
      pieces.setdefault(e.rule.flax, {})[e.index] = None
      continue
    fn = TRANSFORMS[e.rule.transform][0]
    pieces.setdefault(e.rule.flax, {})[e.index] = fn(np.asarray(sd[e.key]), cfg,
                                                     e.rule.collection)
  out = {}
  for path, parts in pieces.items():
    if any(v is None for v in parts.values()):
      continue
    out[path] = parts[None] if None in parts else np.stack([parts[i] for i in sorted(parts)])
  return out


def torch_from_flax(flat: Mapping[tuple[str, ...], Any], cfg: ModelConfig,
                    prefix: str = PREFIX) -> OrderedDict[str, np.ndarray]:
  """{flax path: array} -> the official flat state dict (NumPy, official key order)."""
  sd: OrderedDict[str, np.ndarray] = OrderedDict()
  for e in entries(cfg):
    a = np.asarray(flat[e.rule.flax])
    if e.index is not None:
      a = a[e.index]
    a = np.array(TRANSFORMS[e.rule.transform][1](a, cfg, e.rule.collection), order="C")
    a = a.astype(TORCH_INT) if np.issubdtype(a.dtype, np.integer) else a
    sd[prefix + e.key] = a
  return sd


def model_from_flax(flat: Mapping[tuple[str, ...], Any], cfg: ModelConfig, *,
                    seed: int = 0, allow_missing: bool = False) -> UniFormerV2:
  """Build a model whose variables are ``flat`` (all of them, unless ``allow_missing``: the
  rest keep the official initialisation)."""
  if not allow_missing:
    missing = [p for p in flat_state(nnx.eval_shape(lambda: create_model(cfg))) if p not in flat]
    if missing:
      raise CheckpointError("no value for model variable(s): " +
                            ", ".join("/".join(p) for p in missing))
  try:
    return create_model(cfg, seed, values=flat)
  except ValueError as e:
    raise CheckpointError(str(e)) from None


def load_state_dict_into(model: UniFormerV2, sd: Mapping[str, Any], *,
                         allow_missing: bool = False, source: str = "checkpoint") -> list[str]:
  """Load an official state dict into an existing model (strict unless ``allow_missing``)."""
  sd = strip_prefix(sd)
  flat = flax_from_torch(sd, model.cfg, allow_missing=allow_missing, source=source)
  current = flat_state(model)
  missing = [p for p in current if p not in flat]
  state = nnx.state(model, (nnx.Param, nnx.BatchStat))
  updates = []
  for path, var in nnx.to_flat_state(state):
    key = tuple(str(k) for k in path)
    if key in flat:
      updates.append((path, var.replace(jnp.asarray(flat[key], var.get_value().dtype))))
  nnx.update(model, nnx.from_flat_state(updates))
  return ["/".join(p) for p in missing]


# ----------------------------------------------------------------------------- file readers
_WRAPPERS = ("model_state", "state_dict", "model")


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
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as z:
      names = z.namelist()
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
      raise CheckpointError(
        f"{path}: this is a TorchScript archive (e.g. an OpenAI CLIP release file). Its tensors "
        "are read by the converter's TorchScript reader (convert_torch_weights.py); or export "
        "a state dict once with: torch.save(torch.jit.load(path, map_location='cpu')"
        ".state_dict(), 'out.pth')")
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 - every failure becomes one clear message
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
      raise CheckpointError(
        f"{path}: refused to unpickle: the file needs code or objects other than tensors and "
        f"plain containers (nothing was executed). Detail: {msg}") from None
    raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({msg})") from None


def read_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
  """Read a flat {key: array} from ``.pth/.pyth/.pt/.bin`` (torch), ``.npz`` or ``.safetensors``.

  Wrappers ``{'model_state': ...}`` (official training checkpoints) and
  ``{'state_dict': ...}`` (MMAction2) are unwrapped.
  """
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"{path}: no such file")
  if path.is_dir():
    raise CheckpointError(f"{path}: is a directory; Orbax checkpoints load with "
                          "uniformerv2_jax.load_checkpoint(dir)")
  if path.stat().st_size == 0:
    raise CheckpointError(f"{path}: empty file")
  suffix = path.suffix.lower()
  if suffix == ".npz":
    try:
      with np.load(path, allow_pickle=False) as z:
        obj = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"{path}: not a readable .npz file ({e})") from None
  elif suffix == ".safetensors":
    from safetensors.numpy import load_file

    try:
      obj = load_file(str(path))
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"{path}: not a readable .safetensors file ({e})") from None
  else:
    obj = read_torch_file(path)
  for w in _WRAPPERS:
    if isinstance(obj, Mapping) and w in obj and isinstance(obj[w], Mapping):
      obj = obj[w]
      break
  if not isinstance(obj, Mapping) or not obj:
    raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got "
                          f"{type(obj).__name__}")
  out = {}
  bad = []
  for k, v in obj.items():
    if not isinstance(k, str):
      bad.append(repr(k))
      continue
    try:
      out[k] = _to_numpy(v)
    except Exception:  # noqa: BLE001
      bad.append(f"{k} ({type(v).__name__})")
  if bad:
    raise CheckpointError(f"{path}: entries that are not tensors: {', '.join(bad[:10])}")
  return out


# ----------------------------------------------------------------------------- public entry
def load_official(path: str | Path, official_config: Mapping[str, Any] | str | Path,
                  **overrides) -> UniFormerV2:
  """Load an official UniFormerV2 checkpoint strictly. Returns the NNX model in eval mode.

  ``official_config``: dict (or JSON path) with the official names (``MODEL``, ``DATA``,
  ``UNIFORMERV2`` and optionally ``backbone_arch``). ``path``: ``.pth``/``.pyth``/``.npz``/
  ``.safetensors``, flat ``backbone.*`` keys or wrapped in ``model_state``.
  """
  cfg = config_from_official(official_config, **overrides)
  sd = strip_prefix(read_checkpoint(path))
  flat = flax_from_torch(sd, cfg, source=str(path))
  return model_from_flax(flat, cfg)


def weight_decay_mask(model_or_state, cfg: ModelConfig | None = None):
  """The official rule as a pytree of bools over Params: decay iff the torch tensor has >= 2
  dims (conv/linear weights, positional_embedding, temporal_cls_token); never BatchNorm.

  Stacked collections carry one extra leading axis, which is not counted.
  """
  state = nnx.state(model_or_state, nnx.Param) if isinstance(model_or_state, nnx.Module) \
    else model_or_state

  def rule(path, leaf):
    keys = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
    keys = [str(k) for k in keys]
    ndim = len(np.shape(leaf)) - (1 if keys[0] in ("resblocks", "dpe", "dec") else 0)
    return ndim >= 2 and "bn" not in keys

  return jax.tree_util.tree_map_with_path(rule, state)
