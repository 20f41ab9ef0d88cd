"""PyTorch <-> Flax weights for UniFormerV2: ONE mapping table serving both directions.

This module owns what the tensors mean; reading and writing files is ``checkpoint_files.py``'s,
choosing a format and building a model ``convert.py``'s.

Every official state-dict key (``backbone.`` prefix dropped) has one rule: the Flax state path,
whether the tensor is one slice of a stacked layer axis, and a named transform whose forward
(torch -> flax) and inverse (flax -> torch) are pure transposes / reshapes / casts, so a round
trip is bit-exact. ``flax_from_torch`` (import) and ``torch_from_flax`` (export) both walk this
table. Loading is strict: missing, unexpected and wrongly shaped keys are collected and
reported together in one error.

The other layouts are mapped onto the official names only, never onto Flax paths, so the table
stays the one place that knows the Flax side:
  MMAction2   a rename list read in both directions (plus the frozen-model ``balance``), and its
              model config text <-> ``ModelConfig``.
  CLIP towers (OpenAI, Hugging Face, timm) rename tables for import, the centre inflation of
              the patch kernel and the bicubic resize of the positional embedding.
"""

from __future__ import annotations

import ast
import dataclasses
import pprint
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uniformerv2_jax.checkpoint_files import CheckpointError
from uniformerv2_jax.model import ModelConfig, UniFormerV2, create_model
from uniformerv2_jax.trees import flat_state

PREFIX = "backbone."


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
  if cfg.layer_scale:
    # Not in the official code (CLIP has no layer scale); named as open_clip names its own.
    rules += [Rule("transformer.resblocks.{i}.ls_1.gamma", ("resblocks", "ls_1")),
              Rule("transformer.resblocks.{i}.ls_2.gamma", ("resblocks", "ls_2"))]
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
  ]
  if cfg.patch_bias:  # towers other than CLIP; the official code has no such key
    rules.append(Rule("conv1.bias", ("conv1", "bias")))
  if cfg.ln_pre:
    rules += [Rule("ln_pre.weight", ("ln_pre", "scale")), Rule("ln_pre.bias", ("ln_pre", "bias"))]
  rules.append(Rule("transformer.temporal_cls_token", ("temporal_cls_token",)))
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


# ----------------------------------------------------------------------------- applying the table
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
                    prefix: str = PREFIX, partial: bool = False) -> OrderedDict[str, np.ndarray]:
  """{flax path: array} -> the official flat state dict (NumPy, official key order).

  ``partial``: convert only the paths present (e.g. gradients, which have no BatchNorm
  statistics); otherwise every table entry must be there.
  """
  sd: OrderedDict[str, np.ndarray] = OrderedDict()
  for e in entries(cfg):
    if partial and e.rule.flax not in flat:
      continue
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


# ============================================================================= foreign layouts
# Data tables for the other checkpoint layouts the converter reads and writes. Each is a pure
# key-name mapping onto the official names above (``backbone.`` prefix dropped unless stated), so
# the official table stays the single place that knows the Flax side.

# --- MMAction2 (open-mmlab/mmaction2 UniFormerV2 + UniFormerHead/TimeSformerHead) -------------
# Full keys (with prefix): official <-> MMAction2. Every other key is identical in both.
MMACTION2_RENAMES: tuple[tuple[str, str], ...] = (
  ("backbone.transformer.proj.0.weight", "backbone.transformer.norm.weight"),
  ("backbone.transformer.proj.0.bias", "backbone.transformer.norm.bias"),
  ("backbone.transformer.proj.2.weight", "cls_head.fc_cls.weight"),
  ("backbone.transformer.proj.2.bias", "cls_head.fc_cls.bias"),
)
# MMAction2 has no FROZEN variant: it always creates ``balance``. A frozen model is emulated
# exactly with sigmoid(balance) == 0, which float32 and float64 give for this value.
MMACTION2_FROZEN_BALANCE = -1e4
MMACTION2_BALANCE_KEY = "backbone.transformer.balance"


def mmaction2_from_official(sd: Mapping[str, Any], cfg: ModelConfig) -> OrderedDict[str, Any]:
  """Official full-key state dict -> MMAction2 ``state_dict`` (same tensors, same order).

  For a FROZEN config a ``balance`` of -1e4 is added after ``temporal_cls_token`` (where
  MMAction2 registers it), so MMAction2's strict load works and its output equals ours.
  """
  rename = dict(MMACTION2_RENAMES)
  out: OrderedDict[str, Any] = OrderedDict()
  for k, v in sd.items():
    out[rename.get(k, k)] = v
    if cfg.frozen and k == PREFIX + "transformer.temporal_cls_token":
      out[MMACTION2_BALANCE_KEY] = np.full((cfg.n_dim,), MMACTION2_FROZEN_BALANCE, np.float32)
  return out


def official_from_mmaction2(sd: Mapping[str, Any], cfg: ModelConfig) -> tuple[
    OrderedDict[str, Any], list[str]]:
  """MMAction2 state dict (Recognizer keys, or a backbone-only dict without prefix) -> official
  full-key state dict, plus notes on what was dropped.

  A ``balance`` in a checkpoint for a FROZEN config is accepted only if every entry is
  <= -1e4 (the frozen emulation: its weight is exactly 0); it is then dropped.
  """
  rename = {m: o for o, m in MMACTION2_RENAMES}
  out: OrderedDict[str, Any] = OrderedDict()
  notes = []
  for k, v in sd.items():
    if not (k.startswith(PREFIX) or k.startswith("cls_head.")):
      k = PREFIX + k  # standalone backbone checkpoint (init_cfg prefix='backbone.')
    if cfg.frozen and k == MMACTION2_BALANCE_KEY:
      b = np.asarray(v, np.float64)
      if b.size and np.all(b <= MMACTION2_FROZEN_BALANCE):
        notes.append(f"{k}: dropped (all <= {MMACTION2_FROZEN_BALANCE:g}: the frozen-model "
                     "emulation, weight sigmoid(balance) = 0)")
        continue
      raise CheckpointError(
        f"{k}: the config is FROZEN (no balance) but this MMAction2 checkpoint has a balance "
        f"with values up to {b.max():.4g}; only an all <= {MMACTION2_FROZEN_BALANCE:g} balance "
        "(sigmoid 0) is the frozen model. Use a non-frozen config for this checkpoint.")
    out[rename.get(k, k)] = v
  return out, notes


# MMAction2 model configs <-> ModelConfig: the checkpoint's ``meta['cfg']`` is Python text, read
# as literals only (nothing evaluated); an export writes the equivalent text.
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


# --- OpenAI CLIP image tower ------------------------------------------------------------------
# The official recipe's extraction: the keys of ``visual.*`` without the prefix are exactly the
# official UniFormerV2 backbone keys below; ``proj`` and ``ln_post`` are dropped.
CLIP_VISUAL_IGNORED = ("proj", "ln_post.weight", "ln_post.bias")
# As rename rules (format below): every tower key keeps its name; the attention-mask buffer
# some CLIP builds save is not a weight.
OPENAI_CLIP_RULES: tuple[tuple[str, str, str], ...] = ((r"(.*)", r"\1", "identity"),)
OPENAI_CLIP_IGNORED = tuple(re.escape(k) for k in CLIP_VISUAL_IGNORED) + (r".*\.attn_mask",)


def tower_keys(cfg: ModelConfig) -> list[str]:
  """The official keys (no prefix) that a pretrained image tower initialises, in official
  order: the stem and the attention blocks, as far as ``cfg``'s tower options have them."""
  tower = {"class_embedding", "positional_embedding", "conv1.weight", "conv1.bias",
           "ln_pre.weight", "ln_pre.bias"}
  block = re.compile(r"transformer\.resblocks\.\d+\.(attn|ln_[12]|mlp|ls_[12])\..*")
  return [e.key for e in entries(cfg) if e.key in tower or block.fullmatch(e.key)]


# Foreign ViT layouts -> OpenAI/official visual names. Rows: (regex on the source key with the
# tower prefix removed, official template using the regex groups, transform name). Transforms:
#   identity       the same tensor
#   squeeze        drop leading length-1 axes (timm cls_token [1,1,C], pos_embed [1,L,C])
#   pack_q/k/v     one third of a packed in_proj (concatenated q|k|v along dim 0, like torch MHA)
HF_CLIP_VISION_RULES: tuple[tuple[str, str, str], ...] = (
  (r"embeddings\.class_embedding", "class_embedding", "identity"),
  (r"embeddings\.patch_embedding\.weight", "conv1.weight", "identity"),
  (r"embeddings\.position_embedding\.weight", "positional_embedding", "identity"),
  (r"pre_layrnorm\.(weight|bias)", r"ln_pre.\1", "identity"),
  (r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)",
   r"transformer.resblocks.\1.attn.in_proj_\2", "pack_q"),
  (r"encoder\.layers\.(\d+)\.self_attn\.k_proj\.(weight|bias)",
   r"transformer.resblocks.\1.attn.in_proj_\2", "pack_k"),
  (r"encoder\.layers\.(\d+)\.self_attn\.v_proj\.(weight|bias)",
   r"transformer.resblocks.\1.attn.in_proj_\2", "pack_v"),
  (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)",
   r"transformer.resblocks.\1.attn.out_proj.\2", "identity"),
  (r"encoder\.layers\.(\d+)\.layer_norm1\.(weight|bias)", r"transformer.resblocks.\1.ln_1.\2",
   "identity"),
  (r"encoder\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_fc.\2",
   "identity"),
  (r"encoder\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_proj.\2",
   "identity"),
  (r"encoder\.layers\.(\d+)\.layer_norm2\.(weight|bias)", r"transformer.resblocks.\1.ln_2.\2",
   "identity"),
)
# HF keys the video model has no use for (CLIP's head, text tower, non-persistent buffers).
HF_CLIP_IGNORED = (r"post_layernorm\.(weight|bias)", r"embeddings\.position_ids")
HF_CLIP_OUTSIDE_IGNORED = (r"text_model\..*", r"text_projection\.weight",
                           r"visual_projection\.weight", r"logit_scale")

# timm VisionTransformer, every tower family (CLIP, supervised / augreg, DeiT, MAE, DINOv2): the
# class token is part of the positional embedding; ``norm_pre`` exists only in CLIP towers
# (pre_norm=True), the patch bias in all others, layer scale (``ls1``/``ls2``) in DINOv2.
# ``norm`` / ``fc_norm`` / ``head`` belong to the image classifier and are dropped.
TIMM_VIT_RULES: tuple[tuple[str, str, str], ...] = (
  (r"cls_token", "class_embedding", "squeeze"),
  (r"pos_embed", "positional_embedding", "squeeze"),
  (r"patch_embed\.proj\.(weight|bias)", r"conv1.\1", "identity"),
  (r"norm_pre\.(weight|bias)", r"ln_pre.\1", "identity"),
  (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"transformer.resblocks.\1.ln_1.\2", "identity"),
  (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"transformer.resblocks.\1.attn.in_proj_\2",
   "identity"),
  (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"transformer.resblocks.\1.attn.out_proj.\2",
   "identity"),
  (r"blocks\.(\d+)\.ls1\.gamma", r"transformer.resblocks.\1.ls_1.gamma", "identity"),
  (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"transformer.resblocks.\1.ln_2.\2", "identity"),
  (r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_fc.\2",
   "identity"),
  (r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_proj.\2",
   "identity"),
  (r"blocks\.(\d+)\.ls2\.gamma", r"transformer.resblocks.\1.ls_2.gamma", "identity"),
)
# The classifier's final norm and head; MAE's pre-training decoder and mask token (the official
# MAE release files that carry them); DINOv2's mask token (used only in its pre-training).
TIMM_VIT_IGNORED = (r"norm\.(weight|bias)", r"fc_norm\.(weight|bias)", r"head\.(weight|bias)",
                    r"decoder_.*", r"mask_token")
# A CLIP tower's patch embedding has no bias; timm stores an all-zero one, accepted and dropped.
TIMM_PATCH_BIAS = "patch_embed.proj.bias"
# Extra tokens the video model has no place for: refused with this explanation.
TIMM_EXTRA_TOKENS = {
  "dist_token": "DeiT's distillation token (a *_distilled_* model); convert the plain "
                "deit_*_patch16_224 tower instead",
  "reg_token": "DINOv2 register tokens (a *_reg*_dinov2 model); convert the vit_*_dinov2 tower "
               "without registers instead",
}

# Hugging Face ``ViTModel`` (``google/vit-base-patch16-224-in21k`` layout; ``vit.`` prefix and a
# ``classifier`` in ``ViTForImageClassification``): separate q/k/v like HF CLIP, exact GELU,
# LayerNorm eps from config.json (1e-12), a patch bias, no pre-norm.
HF_VIT_RULES: tuple[tuple[str, str, str], ...] = (
  (r"embeddings\.cls_token", "class_embedding", "squeeze"),
  (r"embeddings\.position_embeddings", "positional_embedding", "squeeze"),
  (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"conv1.\1", "identity"),
  (r"encoder\.layer\.(\d+)\.attention\.attention\.query\.(weight|bias)",
   r"transformer.resblocks.\1.attn.in_proj_\2", "pack_q"),
  (r"encoder\.layer\.(\d+)\.attention\.attention\.key\.(weight|bias)",
   r"transformer.resblocks.\1.attn.in_proj_\2", "pack_k"),
  (r"encoder\.layer\.(\d+)\.attention\.attention\.value\.(weight|bias)",
   r"transformer.resblocks.\1.attn.in_proj_\2", "pack_v"),
  (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)",
   r"transformer.resblocks.\1.attn.out_proj.\2", "identity"),
  (r"encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)",
   r"transformer.resblocks.\1.ln_1.\2", "identity"),
  (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)",
   r"transformer.resblocks.\1.mlp.c_fc.\2", "identity"),
  (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)",
   r"transformer.resblocks.\1.mlp.c_proj.\2", "identity"),
  (r"encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)",
   r"transformer.resblocks.\1.ln_2.\2", "identity"),
)
HF_VIT_IGNORED = (r"layernorm\.(weight|bias)", r"pooler\.dense\.(weight|bias)",
                  r"embeddings\.mask_token")
HF_VIT_OUTSIDE_IGNORED = (r"classifier\.(weight|bias)",)


def rename_by_rules(tensors: Mapping[str, np.ndarray], rules: Sequence[tuple[str, str, str]],
                    ignored_patterns: Sequence[str], outside_prefix: str,
                    outside_ignored: Sequence[str] = ()) -> tuple[
                      dict[str, np.ndarray], list[str], list[str], int]:
  """Rename a foreign ViT state dict with one of the rule tables above (``outside_prefix``: the
  tower's prefix; keys outside it are ignored if they match ``outside_ignored``). Returns
  (visual dict with official names, ignored source keys, unknown source keys, renamed count)."""
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


def inflate_patch_kernel(w2d: np.ndarray, kt: int) -> np.ndarray:
  """CLIP's 2-D patch kernel [C, 3, p, p] -> the video model's [C, 3, kt, p, p], official
  "centre" inflation: zeros except time index kt // 2, which holds the 2-D kernel."""
  w2d = np.asarray(w2d)
  out = np.zeros(w2d.shape[:2] + (kt,) + w2d.shape[2:], w2d.dtype)
  out[:, :, kt // 2] = w2d
  return out


def _keys_kernel(d: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution kernel at distance ``d >= 0`` (zero from 2 on)."""
  near = ((a + 2) * d - (a + 3)) * d * d + 1
  far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
  return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys cubic convolution weights for the taps at offsets -1, 0, 1, 2 (``t`` in [0, 1))."""
  return _keys_kernel(np.stack([t + 1, t, 1 - t, 2 - t], axis=-1), a)


def bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
  """[n_out, n_in] matrix of 1-D bicubic resampling with half-pixel centres and edge clamping
  (the convention of ``torch.nn.functional.interpolate(mode='bicubic', align_corners=False)``,
  which timm / MMCV use to resize ViT position embeddings)."""
  m = np.zeros((n_out, n_in), np.float64)
  src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  base = np.floor(src)
  w = _cubic_weights(src - base, a)
  for j in range(4):
    idx = np.clip(base.astype(np.int64) - 1 + j, 0, n_in - 1)
    np.add.at(m, (np.arange(n_out), idx), w[:, j])
  return m


def antialiased_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] matrix of PIL-style bicubic resampling (Keys a = -0.5) whose kernel widens by
  the shrink factor, so that every input row contributes when shrinking; weights renormalised
  at the edges. The convention of ``torch.nn.functional.interpolate(mode='bicubic',
  antialias=True, align_corners=False)``, which timm applies when it builds a ViT at another
  size from pretrained weights."""
  scale = n_in / n_out
  stretch = max(scale, 1.0)  # the kernel widens only when shrinking
  support = 2.0 * stretch  # bicubic reaches two input pixels each side
  m = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    centre = scale * (i + 0.5)
    lo = max(int(centre - support + 0.5), 0)  # int() truncates toward zero, as torch does
    hi = min(int(centre + support + 0.5), n_in)
    d = np.abs((np.arange(lo, hi) - centre + 0.5) / stretch)
    w = _keys_kernel(d, -0.5)
    m[i, lo:hi] = w / w.sum()
  return m


# How each tower's own library resizes its positional embedding when the model is created at
# another resolution from the same weights.
RESIZE_METHODS = {
  "bicubic": "bicubic interpolation (torch interpolate, align_corners=False)",
  "bicubic_antialias": "antialiased bicubic interpolation (torch interpolate antialias=True, "
                       "as timm's resample_abs_pos_embed)",
}


def resize_positional_embedding(pe: np.ndarray, grid: int, method: str = "bicubic") -> np.ndarray:
  """[1 + g^2, C] -> [1 + grid^2, C]: the class-token row is kept, the g x g patch grid is
  resized separably (``bicubic_matrix`` or ``antialiased_bicubic_matrix``, ``RESIZE_METHODS``),
  computed in float64."""
  pe = np.asarray(pe)
  n, c = pe.shape
  g = int(round((n - 1) ** 0.5))
  if g * g != n - 1:
    raise CheckpointError(f"positional embedding with {n} rows is not 1 + a square grid")
  if g == grid:
    return pe
  if method == "bicubic":
    m = bicubic_matrix(g, grid)
  elif method == "bicubic_antialias":
    m = antialiased_bicubic_matrix(g, grid)
  else:
    raise ValueError(f"resize method {method!r} not in {sorted(RESIZE_METHODS)}")
  patches = pe[1:].astype(np.float64).reshape(g, g, c)
  patches = np.einsum("ij,jkc,lk->ilc", m, patches, m).reshape(grid * grid, c)
  return np.concatenate([pe[:1].astype(np.float64), patches]).astype(pe.dtype)
