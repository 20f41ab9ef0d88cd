"""Converting checkpoints of other code bases into models and back: the steps between the files
(``checkpoint_files.py``) and the mapping table (``mapping.py``).

This module owns the decisions: which format a source is (``detect_format``, from its key
names), which model config it carries (``config_from_source``), which MLP activation a CLIP
tower was trained with (``resolve_clip_activation``), the strict checks, building the model
(``import_model``, ``load_official``) and the way back (``export_state``, ``write_state``).
``convert_torch_weights.py`` is its command line.

Formats (``FORMATS``), all mapped onto the official UniFormerV2 key names of ``mapping.py`` (the
one table that knows the Flax side):

``official``   OpenGVLab/UniFormerV2 ``.pyth``/``.pth``: flat ``backbone.*`` or ``{'model_state'}``.
``mmaction2``  MMAction2's port: ``{'meta', 'state_dict'}`` with ``backbone.transformer.norm.*`` and
               ``cls_head.fc_cls.*``, or a backbone-only dict without prefix (no head).
``clip``       OpenAI CLIP: a full state dict (``visual.*`` + text tower + integer scalars), the
               ``visual.``-stripped extraction of the official recipe, or the released TorchScript
               archive (read without running any of its code).
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

import dataclasses
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from uniformerv2_jax import mapping
from uniformerv2_jax.checkpoint_files import (
  CheckpointError,
  Source,
  read_checkpoint,
  read_source,
  write_tensors,
)
from uniformerv2_jax.mapping import PREFIX
from uniformerv2_jax.model import ACTIVATIONS, ModelConfig, UniFormerV2
from uniformerv2_jax.trees import flat_state
from uniformerv2_jax.variants import config_from_official

log = logging.getLogger(__name__)

FORMATS = ("official", "mmaction2", "clip", "hf", "timm")
CLIP_LIKE = ("clip", "hf", "timm")
CONFIG_META_KEY = "uniformerv2_jax.model_config"  # safetensors metadata written on export


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
def config_from_source(src: Source, fmt: str) -> ModelConfig | None:
  """A model config carried by the checkpoint itself, if any (MMAction2 meta, our safetensors
  export metadata)."""
  from uniformerv2_jax.checkpoint import config_from_json

  for meta in (src.file_metadata, src.meta):
    if isinstance(meta.get(CONFIG_META_KEY), str):
      return config_from_json(json.loads(meta[CONFIG_META_KEY]))
  if fmt == "mmaction2" and src.meta:
    model = mapping.mmaction2_model_dict(src.meta)
    if model is not None:
      return mapping.config_from_mmaction2(model)
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
    rules, ignored_visual = mapping.OPENAI_CLIP_RULES, mapping.OPENAI_CLIP_IGNORED
    if full:  # text tower, logit_scale and the integer scalars are all outside visual.
      visual, ignored, unknown, renamed = mapping.rename_by_rules(
        t, rules, ignored_visual, "visual.", outside_ignored=(r".*",))
    else:
      visual, ignored, unknown, renamed = mapping.rename_by_rules(t, rules, ignored_visual, "")
    if cfg.heads != cfg.width // 64:
      notes.append(f"OpenAI CLIP towers use width // 64 = {cfg.width // 64} heads; the config has "
                   f"{cfg.heads}")
  elif fmt == "hf":
    notes += _check_hf_config(src, cfg)
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in t) else ""
    visual, ignored, unknown, renamed = mapping.rename_by_rules(
      t, mapping.HF_CLIP_VISION_RULES, mapping.HF_CLIP_IGNORED, prefix,
      mapping.HF_CLIP_OUTSIDE_IGNORED)
  elif fmt == "timm":
    tensors = dict(t)
    bias = tensors.pop(mapping.TIMM_PATCH_BIAS, None)
    visual, ignored, unknown, renamed = mapping.rename_by_rules(
      tensors, mapping.TIMM_CLIP_RULES, mapping.TIMM_CLIP_IGNORED, "")
    if bias is not None:
      if np.any(np.asarray(bias) != 0):
        raise CheckpointError(
          f"{src.path}: {mapping.TIMM_PATCH_BIAS} is non-zero (max |b| "
          f"{np.abs(bias).max():.3g}); the model's patch embedding (like OpenAI CLIP's) has no "
          "bias")
      ignored.append(mapping.TIMM_PATCH_BIAS)
  else:
    raise ValueError(fmt)
  return visual, ignored, unknown, notes, renamed


def convert_source(src: Source, fmt: str, cfg: ModelConfig, *,
                   allow_missing: bool = False) -> Converted:
  """Any supported source -> official-key state dict for ``cfg``, strictly checked."""
  name = str(src.path)
  if fmt == "official":
    state = OrderedDict(mapping.strip_prefix(src.tensors))
    mapping.check_keys(state, cfg, allow_missing=allow_missing, source=name)
    return Converted(fmt, state)
  if fmt == "mmaction2":
    full, notes = mapping.official_from_mmaction2(src.tensors, cfg)
    renamed = sum(1 for k in src.tensors if k in {m for _, m in mapping.MMACTION2_RENAMES})
    dropped = [n.split(":")[0] for n in notes]
    state = OrderedDict(mapping.strip_prefix(full))
    mapping.check_keys(state, cfg, allow_missing=allow_missing, source=name)
    return Converted(fmt, state, ignored=dropped, renamed=renamed, notes=notes)
  if fmt not in CLIP_LIKE:
    raise CheckpointError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
  visual, ignored, unknown, notes, renamed = clip_visual(src, fmt, cfg)
  res = Converted(fmt, OrderedDict(), ignored=ignored, renamed=renamed, notes=notes, partial=True)
  want = mapping.expected_torch_shapes(cfg)
  for key in list(visual):
    a = np.asarray(visual[key])
    if key == "conv1.weight" and a.ndim == 4:
      a = mapping.inflate_patch_kernel(a, cfg.kt)
      res.inflated.append(f"conv1.weight {list(visual[key].shape)} -> {list(a.shape)} (centre "
                          f"of kt={cfg.kt})")
    if (key == "positional_embedding" and a.ndim == 2 and a.shape[0] != cfg.tokens
        and a.shape[1] == cfg.width):
      g = int(round((a.shape[0] - 1) ** 0.5))
      if g * g == a.shape[0] - 1:
        b = mapping.resize_positional_embedding(a, cfg.grid)
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
  mapping.check_keys(res.state, cfg, allow_missing=True, source=name)  # unexpected / wrong shape
  missing = [k for k in mapping.clip_derived_keys(cfg) if k not in res.state]
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
  flat = mapping.flax_from_torch(conv.state, cfg, allow_missing=allow_missing or conv.partial,
                           source=str(src.path))
  from uniformerv2_jax.model import create_model

  try:
    model = create_model(cfg, seed, values=flat)
  except ValueError as e:
    raise CheckpointError(str(e)) from None
  kept = [e.key for e in mapping.entries(cfg) if e.rule.flax not in flat]
  return Imported(model, cfg, src, conv, flat, kept)


def official_state(model) -> OrderedDict[str, np.ndarray]:
  """The official flat state dict (``backbone.*``, official order, NumPy) of a model."""
  return mapping.torch_from_flax(flat_state(model), model.cfg)


def export_state(model, fmt: str = "official") -> OrderedDict[str, np.ndarray]:
  sd = official_state(model)
  if fmt == "official":
    return sd
  if fmt == "mmaction2":
    return mapping.mmaction2_from_official(sd, model.cfg)
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
  meta = {k: str(v) for k, v in (meta or {}).items()}
  ours = {CONFIG_META_KEY: json.dumps(config_to_json(cfg))}
  wrapper = None
  if fmt == "mmaction2":
    # MMAction2 reads ``cfg``; our own config rides along (it knows FROZEN, MMAction2 not).
    wrapper = {"meta": {"cfg": mapping.mmaction2_config_text(cfg), **ours, **meta}}
  return write_tensors(path, sd, metadata={**ours, **meta}, torch_wrapper=wrapper,
                       progress=progress)


def load_official(path: str | Path, official_config: Mapping[str, Any] | str | Path,
                  **overrides) -> UniFormerV2:
  """Load an official UniFormerV2 checkpoint strictly. Returns the NNX model in eval mode.

  ``official_config``: dict (or JSON path) with the official names (``MODEL``, ``DATA``,
  ``UNIFORMERV2`` and optionally ``backbone_arch``). ``path``: ``.pth``/``.pyth``/``.npz``/
  ``.safetensors``, flat ``backbone.*`` keys or wrapped in ``model_state``.
  """
  cfg = config_from_official(official_config, **overrides)
  sd = mapping.strip_prefix(read_checkpoint(path))
  flat = mapping.flax_from_torch(sd, cfg, source=str(path))
  return mapping.model_from_flax(flat, cfg)
