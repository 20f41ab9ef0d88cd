"""Pretrained image towers: which family a checkpoint's ViT is, and the model options it implies.

UniFormerV2 arms an image ViT with local and global UniFormer blocks. The towers differ in a
few options that the tensors alone do not always show (``model.TOWER_FIELDS``):

=========================  ==========  ==========  ======  ========  ===========  ==============
family                     activation  patch bias  ln_pre  LN eps    layer scale  pos. resize
=========================  ==========  ==========  ======  ========  ===========  ==============
clip (OpenAI)              QuickGELU   no          yes     1e-5      no           bicubic [1]
clip (LAION, timm *_clip)  GELU        no          yes     1e-5      no           bicubic [1]
supervised / augreg (timm) GELU        yes         no      1e-6      no           antialiased
deit (timm)                GELU        yes         no      1e-6      no           antialiased
mae (timm, official MAE)   GELU        yes         no      1e-6      no           antialiased
dinov2 (timm)              GELU        yes         no      1e-6      yes          antialiased
hf_vit (transformers)      config      yes         no      config    no           bicubic
=========================  ==========  ==========  ======  ========  ===========  ==============

[1] antialiased for timm's own files, as timm resizes them.

The family is read where the source records it (a timm ``config.json``'s architecture and tag, a
Hugging Face ``config.json``, an ``open_clip_config.json``, a TorchScript archive's activation
modules), else from what the keys show (``norm_pre`` = CLIP, ``ls1`` = DINOv2), else the caller
names it (``--timm-model``, ``--clip-activation``): nothing is guessed. What the keys show must
agree with the family named.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from uniformerv2_jax import mapping
from uniformerv2_jax.checkpoint_files import CheckpointError, Source
from uniformerv2_jax.model import ACTIVATIONS, TOWER_FIELDS, ModelConfig

TIMM_MODEL_FLAG = "--timm-model"
CLIP_ACTIVATION_FLAG = "--clip-activation"


@dataclasses.dataclass(frozen=True)
class Tower:
  """What a source's image tower is: its family, the ``TOWER_FIELDS`` values the model needs
  to compute what the tower computes, how its positional embedding is resized, and why."""

  family: str
  options: Mapping[str, Any]
  resize: str  # a mapping.RESIZE_METHODS key
  evidence: tuple[str, ...]

  def apply(self, cfg: ModelConfig) -> ModelConfig:
    return cfg.replace(**self.options)

  def overrides(self) -> str:
    """The ``--config.model.*`` flags that make a run's config describe this tower."""
    default = ModelConfig()
    return " ".join(f"--config.model.{k}={v}" for k, v in self.options.items()
                    if getattr(default, k) != v)


def _options(activation: str, *, patch_bias: bool, ln_pre: bool, eps: float,
             layer_scale: bool = False) -> dict[str, Any]:
  out = dict(activation=activation, patch_bias=patch_bias, ln_pre=ln_pre, layer_norm_eps=eps,
             layer_scale=layer_scale)
  assert tuple(out) == TOWER_FIELDS
  return out


# Non-CLIP timm towers: (family, architecture pattern, tag pattern or None = any tag).
TIMM_FAMILIES = (
  ("dinov2", r"vit_(small|base|large)_patch14_dinov2", None),
  ("deit", r"deit_(tiny|small|base)_patch16_(224|384)", None),
  ("mae", r"vit_(base|large|huge)_patch(14|16)_224", r"mae.*"),
  ("supervised", r"vit_(tiny|small|base|large|huge)_patch(8|14|16|32)_(224|384)(_in21k)?", None),
)
TIMM_REFUSED = (
  (r"\w*_reg\d+_dinov2\w*", mapping.TIMM_EXTRA_TOKENS["reg_token"]),
  (r"deit\w*_distilled\w*", mapping.TIMM_EXTRA_TOKENS["dist_token"]),
)
TIMM_EXAMPLES = ("vit_base_patch16_224.augreg_in21k", "deit_base_patch16_224",
                 "vit_base_patch16_224.mae", "vit_base_patch14_dinov2",
                 "vit_base_patch16_clip_224.openai")
# Heads of the standard ViT sizes, checked against the config when the name gives a size.
TIMM_SIZE_HEADS = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12), "large": (1024, 16),
                   "huge": (1280, 16)}


def timm_family(name: str) -> str:
  """The family of a timm model name (``architecture[.tag]``); an unsupported one is refused."""
  arch, _, tag = name.partition(".")
  for pattern, why in TIMM_REFUSED:
    if re.fullmatch(pattern, arch):
      raise CheckpointError(f"timm model {name}: {why}")
  if re.fullmatch(r"vit_\w*_clip_\w*", arch):
    return "clip"
  for family, pattern, tag_pattern in TIMM_FAMILIES:
    if re.fullmatch(pattern, arch) and (tag_pattern is None or re.fullmatch(tag_pattern, tag)):
      return family
  raise CheckpointError(f"timm model {name}: not a supported image tower; supported are CLIP, "
                        "supervised / augreg ViTs, DeiT, MAE and DINOv2, e.g. "
                        + ", ".join(TIMM_EXAMPLES))


# ----------------------------------------------------------------------------- CLIP activation
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


def clip_activation_of(src: Source, fmt: str, timm_name: str | None = None) -> tuple[
    str | None, str]:
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
    if timm_name is None:
      return None, "a timm state dict does not record its model name or activation"
    return timm_name_activation(timm_name)
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


def resolve_clip_activation(src: Source, fmt: str, requested: str | None,
                            timm_name: str | None = None) -> tuple[str, str]:
  """The activation a CLIP-like source is converted with, and a note saying why. What the
  source records wins; ``requested`` (``--clip-activation``) must agree with it, and is
  required when the source records nothing."""
  if requested is not None and requested not in ACTIVATIONS:
    raise CheckpointError(f"{CLIP_ACTIVATION_FLAG} {requested!r}: one of {', '.join(ACTIVATIONS)}")
  known, why = clip_activation_of(src, fmt, timm_name)
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


def check_hf_clip_config(src: Source, cfg: ModelConfig) -> list[str]:
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



# ----------------------------------------------------------------------------- resolving a tower
CLIP_OPTIONS = dict(patch_bias=False, ln_pre=True, eps=1e-5)
TIMM_VIT_OPTIONS = dict(patch_bias=True, ln_pre=False, eps=1e-6)  # timm's LayerNorm(eps=1e-6)


def _timm_name(src: Source, requested: str | None) -> tuple[str | None, str]:
  """The timm model name (``architecture.tag``) the source records, or ``requested``; they must
  agree on the architecture when both are there."""
  t = src.timm_config
  recorded = None
  if t is not None:
    recorded = t["architecture"]
    tag = (t.get("pretrained_cfg") or {}).get("tag")
    if tag and "." not in recorded:
      recorded = f"{recorded}.{tag}"
  if recorded and requested and recorded.split(".")[0] != requested.split(".")[0]:
    raise CheckpointError(f"{src.path}: {TIMM_MODEL_FLAG} {requested} contradicts the timm "
                          f"config.json next to it (architecture {recorded})")
  if recorded:
    return recorded, f"the timm config.json names {recorded}"
  if requested:
    return requested, f"as given by {TIMM_MODEL_FLAG}"
  return None, ""


def _timm_key_evidence(src: Source) -> dict[str, bool]:
  keys = set(src.tensors)
  for token, why in mapping.TIMM_EXTRA_TOKENS.items():
    if token in keys:
      raise CheckpointError(f"{src.path}: the tower has a {token} ({why}); the video model has no "
                            "place for extra tokens")
  return {
    "ln_pre": any(k.startswith("norm_pre.") for k in keys),
    "layer_scale": any(re.fullmatch(r"blocks\.\d+\.ls[12]\.gamma", k) for k in keys),
    "patch_bias": "patch_embed.proj.bias" in keys,
  }


def _timm_tower(src: Source, clip_activation: str | None, timm_model: str | None) -> Tower:
  seen = _timm_key_evidence(src)
  name, why = _timm_name(src, timm_model)
  if name is not None:
    family = timm_family(name)
  elif seen["ln_pre"]:
    family, why = "clip", "its keys have norm_pre (a CLIP tower's ln_pre)"
  elif seen["layer_scale"]:
    family, why = "dinov2", "its keys have layer scale (blocks.N.ls1.gamma: DINOv2)"
  else:
    raise CheckpointError(
      f"{src.path}: a timm ViT state dict whose keys do not tell its family (supervised, DeiT "
      f"and MAE towers look alike); pass {TIMM_MODEL_FLAG} NAME, e.g. "
      + ", ".join(TIMM_EXAMPLES[:4]))
  if family == "clip":
    activation, act_why = resolve_clip_activation(src, "timm", clip_activation, name)
    options = _options(activation, **CLIP_OPTIONS)
    evidence = [f"family clip: {why}" if why else "family clip", act_why]
    # OpenAI CLIP has no patch bias; timm stores an all-zero one, which is dropped.
    seen = {**seen, "patch_bias": False}
  else:
    if clip_activation is not None:
      raise CheckpointError(f"{CLIP_ACTIVATION_FLAG} applies to CLIP towers, not to a {family} "
                            "tower (exact GELU)")
    options = _options("gelu", **TIMM_VIT_OPTIONS, layer_scale=family == "dinov2")
    evidence = [f"family {family}: {why}", "timm builds it with exact GELU and LayerNorm eps 1e-6"]
  contradictions = [f"{k}: the {family} family has {options[k]}, the keys show {v}"
                    for k, v in seen.items() if options[k] != v]
  if contradictions:
    raise CheckpointError(f"{src.path}: the tensors are not a {family} tower ("
                          + "; ".join(contradictions) + ")")
  return Tower(family, options, "bicubic_antialias", tuple(evidence))


def _hf_vit_tower(src: Source) -> Tower:
  hf = src.hf_config
  if hf is None or hf.get("model_type") != "vit":
    raise CheckpointError(f"{src.path}: Hugging Face ViT weights without their config.json "
                          "(model_type vit) do not record hidden_act and layer_norm_eps; give "
                          "the model folder as save_pretrained writes it")
  act = hf.get("hidden_act", "gelu")
  if act not in HF_ACTIVATIONS:
    raise CheckpointError(f"{src.path}: the Hugging Face config has hidden_act={act!r}; the "
                          f"model implements {', '.join(repr(a) for a in HF_ACTIVATIONS)} only")
  if not hf.get("qkv_bias", True):
    raise CheckpointError(f"{src.path}: qkv_bias=False in the Hugging Face config; the model's "
                          "attention has q/k/v biases (a zero bias would do: not supported)")
  eps = float(hf.get("layer_norm_eps", 1e-12))
  options = _options(HF_ACTIVATIONS[act], patch_bias=True, ln_pre=False, eps=eps)
  return Tower("hf_vit", options, "bicubic",
               (f"Hugging Face ViT config.json: hidden_act {act}, layer_norm_eps {eps:g}",))


def resolve_tower(src: Source, fmt: str, *, clip_activation: str | None = None,
                  timm_model: str | None = None) -> Tower:
  """The tower of an image-tower source (``convert.TOWER_FORMATS``)."""
  if timm_model is not None and fmt != "timm":
    raise CheckpointError(f"{TIMM_MODEL_FLAG} names a timm model; {src.path} is a {fmt} "
                          "checkpoint")
  if fmt == "timm":
    return _timm_tower(src, clip_activation, timm_model)
  if fmt == "hf_vit":
    if clip_activation is not None:
      raise CheckpointError(f"{CLIP_ACTIVATION_FLAG} applies to CLIP towers; a Hugging Face "
                            "ViT's config.json sets its activation")
    return _hf_vit_tower(src)
  if fmt in ("clip", "hf"):
    activation, why = resolve_clip_activation(src, fmt, clip_activation)
    return Tower("clip", _options(activation, **CLIP_OPTIONS), "bicubic", (why,))
  raise ValueError(fmt)


# ----------------------------------------------------------------------------- tensors
def tower_tensors(src: Source, fmt: str, cfg: ModelConfig) -> tuple[
    dict[str, Any], list[str], list[str], list[str], int]:
  """The image tower of a clip / hf / hf_vit / timm source under the official names.

  Returns (tensors, ignored source keys, unknown source keys, notes, renamed count).
  """
  t = src.tensors
  notes: list[str] = []
  if fmt == "clip":
    full = any(k.startswith("visual.") for k in t)
    rules, ignored_visual = mapping.OPENAI_CLIP_RULES, mapping.OPENAI_CLIP_IGNORED
    if full:  # text tower, logit_scale and the integer scalars are all outside visual.
      out = mapping.rename_by_rules(t, rules, ignored_visual, "visual.", outside_ignored=(r".*",))
    else:
      out = mapping.rename_by_rules(t, rules, ignored_visual, "")
    if cfg.heads != cfg.width // 64:
      notes.append(f"OpenAI CLIP towers use width // 64 = {cfg.width // 64} heads; the config has "
                   f"{cfg.heads}")
  elif fmt == "hf":
    notes += check_hf_clip_config(src, cfg)
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in t) else ""
    out = mapping.rename_by_rules(t, mapping.HF_CLIP_VISION_RULES, mapping.HF_CLIP_IGNORED,
                                  prefix, mapping.HF_CLIP_OUTSIDE_IGNORED)
  elif fmt == "hf_vit":
    prefix = "vit." if any(k.startswith("vit.") for k in t) else ""
    out = mapping.rename_by_rules(t, mapping.HF_VIT_RULES, mapping.HF_VIT_IGNORED, prefix,
                                  mapping.HF_VIT_OUTSIDE_IGNORED)
  elif fmt == "timm":
    tensors = dict(t)
    bias = tensors.get(mapping.TIMM_PATCH_BIAS)
    if not cfg.patch_bias and bias is not None:
      tensors.pop(mapping.TIMM_PATCH_BIAS)
      if np.any(np.asarray(bias) != 0):
        raise CheckpointError(
          f"{src.path}: {mapping.TIMM_PATCH_BIAS} is non-zero (max |b| "
          f"{np.abs(bias).max():.3g}) in a CLIP tower, whose patch embedding has no bias")
    out = mapping.rename_by_rules(tensors, mapping.TIMM_VIT_RULES, mapping.TIMM_VIT_IGNORED, "")
    if not cfg.patch_bias and bias is not None:
      out[1].append(mapping.TIMM_PATCH_BIAS)
  else:
    raise ValueError(fmt)
  tensors, ignored, unknown, renamed = out
  return tensors, ignored, unknown, notes, renamed


def check_geometry(src: Source, tensors: Mapping[str, Any], cfg: ModelConfig,
                   heads: int | None = None, partial: bool = False) -> None:
  """The tower's width, depth, patch size (and heads, where the source records them) against
  the config, naming each field that differs. ``partial`` (``--allow-missing``): a deeper model
  than the tower is a deliberate partial load."""
  bad = []
  w = tensors.get("conv1.weight")
  if w is not None:
    width, patch = int(np.shape(w)[0]), int(np.shape(w)[-1])
    if width != cfg.width:
      bad.append(f"width: tower {width}, config {cfg.width}")
    if patch != cfg.patch_size:
      bad.append(f"patch_size: tower {patch}, config {cfg.patch_size}")
  blocks = {int(m.group(1)) for k in tensors
            if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))}
  if blocks and (max(blocks) + 1 > cfg.layers or (max(blocks) + 1 < cfg.layers and not partial)):
    bad.append(f"layers: tower {max(blocks) + 1}, config {cfg.layers}")
  if heads is not None and heads != cfg.heads:
    bad.append(f"heads: tower {heads}, config {cfg.heads}")
  if bad:
    raise CheckpointError(f"{src.path}: the tower does not fit the config's model ("
                          + "; ".join(bad) + "); set them with --config.model.<field>=...")


def recorded_heads(src: Source, fmt: str) -> int | None:
  """Attention heads where the source says them: a Hugging Face config, a timm config.json's
  model_args, or a standard timm size name whose width the tower has."""
  if fmt in ("hf", "hf_vit") and src.hf_config is not None:
    heads = _hf_vision_config(src.hf_config).get("num_attention_heads")
    return int(heads) if heads is not None else None
  if fmt == "timm" and src.timm_config is not None:
    args = src.timm_config.get("model_args") or {}
    if "num_heads" in args:
      return int(args["num_heads"])
    m = re.match(r"(?:vit|deit)_([a-z]+)_", src.timm_config["architecture"])
    size = TIMM_SIZE_HEADS.get(m.group(1)) if m else None
    width = np.shape(src.tensors.get("cls_token", np.zeros((0,))))[-1]
    if size is not None and size[0] == width:
      return size[1]
  return None
