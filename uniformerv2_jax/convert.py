"""Converting checkpoints of other code bases into models and back: the steps between the files
(``checkpoint_files.py``) and the mapping table (``mapping.py``).

This module owns the decisions: which format a source is (``detect_format``, from its key
names), which model config it carries (``config_from_source``), the strict checks, building
the model (``import_model``, ``load_official``) and the way back (``export_state``,
``write_state``). Which image tower a pretrained ViT is, and the options that follow, is
``towers.py``'s.
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
``hf_vit``     Hugging Face ``ViTModel`` (``google/vit-base-patch16-224-in21k``; a model directory
               with its ``config.json``).
``timm``       timm ViTs: CLIP (``vit_base_patch16_clip_224.openai``), supervised / augreg, DeiT,
               MAE (also the official MAE release's ``{'model': ...}``) and DINOv2 towers.

Image-tower formats (``TOWER_FORMATS``) initialise only the backbone (as the official loader does
with CLIP: centre-inflated patch kernel, float32, the image head dropped); everything else keeps
the official initialisation. The tower's options (activation, patch bias, pre-norm, LayerNorm
eps, layer scale) are part of its weights' meaning and become the model config's
(``towers.resolve_tower``); the converter never guesses them. Nothing read from a file is ever
executed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from uniformerv2_jax import mapping, towers
from uniformerv2_jax.checkpoint_files import (
  CheckpointError,
  Source,
  read_checkpoint,
  read_source,
  write_tensors,
)
from uniformerv2_jax.mapping import PREFIX
from uniformerv2_jax.model import TOWER_FIELDS, ModelConfig, UniFormerV2
from uniformerv2_jax.trees import flat_state
from uniformerv2_jax.variants import config_from_official

log = logging.getLogger(__name__)

FORMATS = ("official", "mmaction2", "clip", "hf", "hf_vit", "timm")
# Image towers (pretrained ViTs): they initialise the backbone only (``towers.py``).
TOWER_FORMATS = ("clip", "hf", "hf_vit", "timm")
CONFIG_META_KEY = "uniformerv2_jax.model_config"  # safetensors metadata written on export


# ============================================================================= detection
def _looks(keys: set[str]) -> str | None:
  def any_start(*prefixes):
    return any(k.startswith(prefixes) for k in keys)

  if any_start("vision_model.", "text_model.") or "embeddings.patch_embedding.weight" in keys:
    return "hf"
  if any_start("embeddings.patch_embeddings.", "vit.embeddings.patch_embeddings."):
    return "hf_vit"
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
  "hf_vit": "embeddings.patch_embeddings.projection.* / encoder.layer.N.attention.*",
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


def convert_source(src: Source, fmt: str, cfg: ModelConfig, *,
                   allow_missing: bool = False, resize: str = "bicubic") -> Converted:
  """Any supported source -> official-key state dict for ``cfg``, strictly checked. ``resize``:
  how an image tower's positional embedding is resized (``mapping.RESIZE_METHODS``, as the
  tower's library does it)."""
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
  if fmt not in TOWER_FORMATS:
    raise CheckpointError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
  visual, ignored, unknown, notes, renamed = towers.tower_tensors(src, fmt, cfg)
  towers.check_geometry(src, visual, cfg, towers.recorded_heads(src, fmt), allow_missing)
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
        b = mapping.resize_positional_embedding(a, cfg.grid, resize)
        msg = (f"positional_embedding resized {list(a.shape)} -> {list(b.shape)}: grid "
               f"{g}x{g} -> {cfg.grid}x{cfg.grid} by {mapping.RESIZE_METHODS[resize]} "
               "(class-token row kept)")
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
  missing = [k for k in mapping.tower_keys(cfg) if k not in res.state]
  if missing and not allow_missing:
    raise CheckpointError(
      f"{name}: {len(missing)} image-tower key(s) missing for a {cfg.layers}-layer, width "
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
  tower: towers.Tower | None = None  # image-tower sources: the family and its options


def import_model(path: str | Path, cfg: ModelConfig | None = None, fmt: str | None = None, *,
                 allow_missing: bool = False, seed: int = 0, src: Source | None = None,
                 clip_activation: str | None = None, timm_model: str | None = None) -> Imported:
  """Read ``path`` in any supported format and build the model (strict unless
  ``allow_missing``; CLIP-like sources initialise the backbone only, the rest keeps the
  official initialisation drawn from ``seed``).

  An image-tower source sets the model's tower options (``towers.resolve_tower``: what the
  source records, else ``clip_activation`` / ``timm_model``, else an error), replacing the
  config's: the weights only mean something with the options they were trained with. An
  official / MMAction2 checkpoint is the OpenAI CLIP tower unless the config it carries says
  otherwise, and ``cfg`` must agree.
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
  tower = None
  if fmt in TOWER_FORMATS:
    tower = towers.resolve_tower(src, fmt, clip_activation=clip_activation,
                                 timm_model=timm_model)
    notes += list(tower.evidence)
    replaced = [f"{k} {getattr(cfg, k)} -> {v}" for k, v in tower.options.items()
                if getattr(cfg, k) != v]
    if replaced:
      notes.append("tower options replace the config's: " + ", ".join(replaced))
    cfg = tower.apply(cfg)
  else:
    if clip_activation is not None or timm_model is not None:
      flag = "--clip-activation" if clip_activation is not None else "--timm-model"
      raise CheckpointError(f"{flag} applies to image towers ({', '.join(TOWER_FORMATS)}), not "
                            f"to a {fmt} checkpoint, whose config sets the tower options")
    # The official code and MMAction2 hard-code the OpenAI CLIP tower; only our own exports
    # (.safetensors with the config in their metadata) can hold another.
    stored = carried if carried is not None else ModelConfig()
    bad = [f"{k}: checkpoint {getattr(stored, k)}, config {getattr(cfg, k)}"
           for k in TOWER_FIELDS if getattr(stored, k) != getattr(cfg, k)]
    if bad:
      raise CheckpointError(
        f"{src.path}: the config's image tower differs from the {fmt} checkpoint's ("
        + "; ".join(bad) + ")" + ("" if carried is not None else " (the official code and "
                                  "MMAction2 hard-code OpenAI CLIP's)"))
  conv = convert_source(src, fmt, cfg, allow_missing=allow_missing,
                        resize=tower.resize if tower else "bicubic")
  conv.notes[:0] = notes
  flat = mapping.flax_from_torch(conv.state, cfg, allow_missing=allow_missing or conv.partial,
                           source=str(src.path))
  from uniformerv2_jax.model import create_model

  try:
    model = create_model(cfg, seed, values=flat)
  except ValueError as e:
    raise CheckpointError(str(e)) from None
  kept = [e.key for e in mapping.entries(cfg) if e.rule.flax not in flat]
  return Imported(model, cfg, src, conv, flat, kept, tower)


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
  tower = cfg.tower_changes()
  if tower and (fmt != "official" or suffix != ".safetensors"):
    # The official code and MMAction2 hard-code OpenAI CLIP's tower, and a .pth/.npz state dict
    # has no room for the config: the weights would silently run as another tower.
    options = ", ".join(f"{k} {v}" for k, v in tower.items())
    raise CheckpointError(
      f"{path}: the model's image tower ({options}) is one the official code and MMAction2 "
      "cannot run and a .pth/.pyth/.npz file cannot record; export it as an official-layout "
      ".safetensors (its metadata carries the config)")
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
