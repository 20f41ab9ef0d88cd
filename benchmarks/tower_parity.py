"""Full-size image towers converted into UniFormerV2 B/16 (B/14 for DINOv2): the last block's class
token against the tower's own library, and how far each wrong tower option would move it.

    # references by timm itself (its own environment: tests/fixtures/towers/make_towers.py)
    python tests/fixtures/towers/make_towers.py --full /tmp/full_towers
    # then here (transformers' ViTModel is built and run in this script)
    python benchmarks/tower_parity.py /tmp/full_towers

For each family: ``parity`` = max |ours - library| over the last block's class token (f32,
random ViT-B weights; a clip of 2 identical frames); then the same tower converted with one
option changed (LayerNorm eps 1e-5 as CLIP, QuickGELU, layer scale dropped, plain instead of
antialiased bicubic for the positional embedding), each as max |change| of that class token.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from uniformerv2_jax import convert, mapping  # noqa: E402
from uniformerv2_jax.model import ModelConfig, create_model  # noqa: E402

FRAMES = 2


def video_cfg(patch: int) -> ModelConfig:
  return ModelConfig(num_classes=400, num_frames=FRAMES, patch_size=patch)


def class_token(model, image: np.ndarray) -> np.ndarray:
  clip = np.repeat(image.transpose(0, 2, 3, 1)[:, None], FRAMES, axis=1)
  _, inter = model(clip, train=False, return_intermediates=True)
  return np.asarray(inter[f"block_{model.cfg.layers - 1:02d}"])[0, 0, 0]


def hf_reference(folder: Path) -> dict[str, np.ndarray]:
  import torch
  from transformers import ViTConfig, ViTModel

  torch.manual_seed(0)
  model = ViTModel(ViTConfig()).eval()  # the ViT-B/16 in21k layout: eps 1e-12, exact GELU
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(folder)
  image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    hidden = model(image, output_hidden_states=True).hidden_states
  return {"image": image.numpy(), "block_11": hidden[-1].numpy()}


def measure(folder: Path, ref: dict[str, np.ndarray], patch: int) -> dict[str, float]:
  imp = convert.import_model(folder, video_cfg(patch))
  want = ref["block_11"][0, 0]
  ours = class_token(imp.model, ref["image"])
  row = {"family": imp.tower.family, "parity": float(np.abs(ours - want).max()),
         "class_token_max": float(np.abs(want).max())}
  variants = {"eps_1e-5": {"layer_norm_eps": 1e-5}, "quick_gelu": {"activation": "quick_gelu"}}
  if imp.cfg.layer_scale:
    variants["no_layer_scale"] = {"layer_scale": False}
  for name, change in variants.items():
    flat = imp.flat if "layer_scale" not in change else {
      p: v for p, v in imp.flat.items() if not p[-1].startswith("ls_")}
    if imp.cfg.layer_norm_eps == change.get("layer_norm_eps"):
      continue
    other = create_model(imp.cfg.replace(**change), values=flat)
    row[name] = float(np.abs(class_token(other, ref["image"]) - ours).max())
  if imp.converted.resized:  # the same weights, resized with plain bicubic instead
    stored = imp.source.tensors["pos_embed"][0]
    plain = mapping.resize_positional_embedding(stored, imp.cfg.grid, "bicubic")
    antialiased = mapping.resize_positional_embedding(stored, imp.cfg.grid, "bicubic_antialias")
    row["pos_embed_plain_vs_antialiased"] = float(np.abs(plain - antialiased).max())
    flat = {**imp.flat, ("positional_embedding",): plain}
    other = create_model(imp.cfg, values=flat)
    row["plain_bicubic"] = float(np.abs(class_token(other, ref["image"]) - ours).max())
  return row


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("towers", type=Path, help="the --full output of make_towers.py")
  a = p.parse_args()
  rows = []
  for family in ("supervised", "deit", "mae", "dinov2"):
    with np.load(a.towers / family / "reference.npz") as z:
      ref = {k: z[k] for k in z.files}
    rows.append(measure(a.towers / family, ref, 14 if family == "dinov2" else 16))
    print(rows[-1], flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    ref = hf_reference(Path(tmp) / "hf_vit")
    rows.append(measure(Path(tmp) / "hf_vit", ref, 16))
    print(rows[-1], flush=True)
  keys = ["family", "parity", "class_token_max", "eps_1e-5", "quick_gelu", "no_layer_scale",
          "plain_bicubic", "pos_embed_plain_vs_antialiased"]
  print("| " + " | ".join(keys) + " |")
  print("|" + " --- |" * len(keys))
  for r in rows:
    print("| " + " | ".join(r["family"] if k == "family" else
                            (f"{r[k]:.2e}" if k in r else "-") for k in keys) + " |")
  print(json.dumps({"benchmark": "tower_parity", "rows": rows}))


if __name__ == "__main__":
  main()
