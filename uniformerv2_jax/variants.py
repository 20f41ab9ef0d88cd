"""ViT sizes of the official factories and the official config schema -> ModelConfig.

The model-zoo rows themselves (every released setting) live in ``zoo.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from uniformerv2_jax.errors import InputError
from uniformerv2_jax.model import TOWER_FIELDS, ModelConfig

# What the official `uniformerv2_b16 / _l14 / _l14_336` factories hard-code.
BACKBONES: dict[str, dict[str, int]] = {
  "uniformerv2_b16": dict(input_resolution=224, patch_size=16, width=768, layers=12, heads=12,
                          kernel_size=3),
  "uniformerv2_l14": dict(input_resolution=224, patch_size=14, width=1024, layers=24, heads=16,
                          kernel_size=3),
  "uniformerv2_l14_336": dict(input_resolution=336, patch_size=14, width=1024, layers=24,
                              heads=16, kernel_size=3),
}

# Defaults of the official config (slowfast/config/defaults.py, UNIFORMERV2 section) used when a
# key is absent from an official config dict.
OFFICIAL_DEFAULTS: dict[str, Any] = {
  "N_LAYERS": 4, "N_DIM": 768, "N_HEAD": 12, "MLP_FACTOR": 4.0, "BACKBONE_DROP_PATH_RATE": 0.0,
  "DROP_PATH_RATE": 0.0, "MLP_DROPOUT": [0.5, 0.5, 0.5, 0.5], "CLS_DROPOUT": 0.5,
  "RETURN_LIST": [8, 9, 10, 11], "DW_REDUCTION": 1.5, "NO_LMHRA": False, "DOUBLE_LMHRA": True,
  "TEMPORAL_DOWNSAMPLE": True, "FROZEN": False,
}


def config_from_official(official: Mapping[str, Any] | str | Path, **overrides) -> ModelConfig:
  """Build a ModelConfig from the official config names.

  ``official`` is a dict with ``MODEL``, ``DATA``, ``UNIFORMERV2`` and optionally
  ``backbone_arch`` (the schema of the fixtures' ``config.json``), or a path to such a JSON file.
  Without ``backbone_arch``, ``UNIFORMERV2.BACKBONE`` names the ViT size as the official
  factories do. ``overrides`` set implementation fields (``scan_layers``, ``dtype``...).
  """
  where = "official config"
  if isinstance(official, (str, Path)):
    where = str(official)
    try:
      official = json.loads(Path(official).read_text())
    except json.JSONDecodeError as e:
      raise InputError(f"{where}: not valid JSON ({e})") from None
  if not isinstance(official, Mapping):
    raise InputError(f"{where}: expected a JSON object with MODEL, DATA, UNIFORMERV2")
  try:
    model, data = official["MODEL"], official["DATA"]
    u = {**OFFICIAL_DEFAULTS, **official["UNIFORMERV2"]}
  except KeyError as e:
    raise InputError(f"{where} lacks the {e.args[0]!r} section "
                     "(expected MODEL, DATA, UNIFORMERV2[, backbone_arch])") from None
  arch = official.get("backbone_arch")
  if arch is None:
    name = u.get("BACKBONE")
    if name not in BACKBONES:
      raise InputError(f"{where}: UNIFORMERV2.BACKBONE {name!r} is not one of {sorted(BACKBONES)}; "
                       "give backbone_arch explicitly")
    arch = BACKBONES[name]
  n_layers = int(u["N_LAYERS"])
  mlp_dropout = u["MLP_DROPOUT"]
  if isinstance(mlp_dropout, (int, float)):
    mlp_dropout = [mlp_dropout] * n_layers
  kw = dict(
    num_classes=int(model["NUM_CLASSES"]),
    num_frames=int(data["NUM_FRAMES"]),
    input_resolution=int(arch["input_resolution"]),
    patch_size=int(arch["patch_size"]),
    width=int(arch["width"]),
    layers=int(arch["layers"]),
    heads=int(arch["heads"]),
    temporal_kernel=int(arch.get("kernel_size", 3)),
    temporal_downsample=bool(u["TEMPORAL_DOWNSAMPLE"]),
    no_lmhra=bool(u["NO_LMHRA"]),
    double_lmhra=bool(u["DOUBLE_LMHRA"]),
    dw_reduction=float(u["DW_REDUCTION"]),
    return_list=tuple(int(i) for i in u["RETURN_LIST"]),
    n_layers=n_layers,
    n_dim=int(u["N_DIM"]),
    n_head=int(u["N_HEAD"]),
    mlp_factor=float(u["MLP_FACTOR"]),
    backbone_drop_path_rate=float(u["BACKBONE_DROP_PATH_RATE"]),
    drop_path_rate=float(u["DROP_PATH_RATE"]),
    mlp_dropout=tuple(float(p) for p in mlp_dropout),
    cls_dropout=float(u["CLS_DROPOUT"]),
    frozen=bool(u["FROZEN"]),
    # Not official options (the official code runs OpenAI CLIP's tower only): written into
    # backbone_arch by official_from_config for other towers.
    **{k: type(v)(arch.get(k, v)) for k, v in _TOWER_DEFAULTS.items()},
  )
  kw.update(overrides)
  return ModelConfig(**kw)


_TOWER_DEFAULTS = {k: getattr(ModelConfig(), k) for k in TOWER_FIELDS}


def official_from_config(cfg: ModelConfig) -> dict[str, Any]:
  """The inverse: a ModelConfig in the official names (the fixtures' ``config.json`` schema).

  The image tower's options (``backbone_arch.activation`` ...) appear only where they differ
  from OpenAI CLIP's, so official models give exactly the official schema."""
  arch = {
    "input_resolution": cfg.input_resolution, "patch_size": cfg.patch_size,
    "width": cfg.width, "layers": cfg.layers, "heads": cfg.heads,
    "kernel_size": cfg.temporal_kernel,
  }
  arch.update(cfg.tower_changes())
  return {
    "MODEL": {"NUM_CLASSES": cfg.num_classes},
    "DATA": {"NUM_FRAMES": cfg.num_frames},
    "UNIFORMERV2": {
      "N_LAYERS": cfg.n_layers, "N_DIM": cfg.n_dim, "N_HEAD": cfg.n_head,
      "MLP_FACTOR": cfg.mlp_factor, "BACKBONE_DROP_PATH_RATE": cfg.backbone_drop_path_rate,
      "DROP_PATH_RATE": cfg.drop_path_rate, "MLP_DROPOUT": list(cfg.mlp_dropout),
      "CLS_DROPOUT": cfg.cls_dropout, "RETURN_LIST": list(cfg.return_list),
      "DW_REDUCTION": cfg.dw_reduction, "NO_LMHRA": cfg.no_lmhra,
      "DOUBLE_LMHRA": cfg.double_lmhra, "TEMPORAL_DOWNSAMPLE": cfg.temporal_downsample,
      "FROZEN": cfg.frozen,
    },
    "backbone_arch": arch,
  }
