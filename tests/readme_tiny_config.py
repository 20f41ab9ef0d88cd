"""Tiny stand-ins for the zoo configs named in the README's commands
(``tests/test_readme_commands.py``):

  --config tests/readme_tiny_config.py:DATASET:ARG[:MODEL]

is ``configs/DATASET.py:ARG`` -- the same recipe (optimizer, schedule, sampling, augmentation,
head handling, the model's design options) -- with the model and the batch shrunk so that the
command runs on a CPU in seconds. ``MODEL``:

* ``tiny`` (default): the zoo model's design (local MHRA or not, temporal downsampling, frozen
  backbone, global blocks on the last layers) at toy sizes;
* ``tiny_k400``: the model of the ``tiny_k400`` fixture in ``tests/fixtures`` (its checkpoint
  stands in for ``k400_uniformerv2_b16_8x224.pyth``);
* ``tiny_clip``: the zoo model's design on the backbone of the ``tiny_clip`` fixture (its CLIP
  stands in for ``ViT-B-16.pt``);
* ``tiny_tower`` / ``tiny_dinov2``: the backbones of the ``towers`` fixtures (timm and Hugging
  Face ViTs standing in for the full-size towers).

The data side fits the 10-class generated dataset (``uniformerv2_jax.data.demo_dataset``)
the README test writes: 10 classes, its ``labels.txt``, 32x32 crops, 1 test view (UCF-101 /
HMDB-51 configs keep the label map of their split files).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from uniformerv2_jax.configs import common
from uniformerv2_jax.model import ModelConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NUM_CLASSES = 10  # the generated dataset's


def _tiny_model(zoo: ModelConfig, kind: str) -> ModelConfig:
  if kind == "tiny_k400":
    from uniformerv2_jax.variants import config_from_official

    return config_from_official(FIXTURES / "tiny_k400" / "config.json")
  if kind == "tiny_clip":  # backbone sizes of fixtures/tiny_clip (CLIP ViT: width 128, 2 layers)
    width, layers, heads, patch, res = 128, 2, 2, 8, 32
  elif kind == "tiny":
    width, layers, heads, patch, res = 32, 2, 2, 8, 32
  elif kind == "tiny_tower":  # the timm / HF ViT fixtures in fixtures/towers (patch 16)
    width, layers, heads, patch, res = 32, 2, 2, 16, 32
  elif kind == "tiny_dinov2":  # fixtures/towers/dinov2 (patch 14, used at 42 px)
    width, layers, heads, patch, res = 32, 2, 2, 14, 42
  else:
    raise ValueError(f"unknown tiny model {kind!r} (tiny, tiny_k400, tiny_clip, tiny_tower, "
                     "tiny_dinov2)")
  n = min(zoo.n_layers, layers)
  return zoo.replace(
    num_classes=NUM_CLASSES, num_frames=4, input_resolution=res, patch_size=patch, width=width,
    layers=layers, heads=heads, return_list=tuple(range(layers - n, layers)), n_layers=n,
    n_dim=width, n_head=heads, mlp_dropout=zoo.mlp_dropout[:n])


def get_config(arg: str):
  dataset, zoo_arg, *rest = arg.split(":")
  kind = rest[0] if rest else "tiny"
  c = importlib.import_module(f"configs.{dataset}").get_config(zoo_arg)
  zoo = ModelConfig(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                       for k, v in c.model.to_dict().items()})
  c.model = common.model_config_dict(_tiny_model(zoo, kind))
  # The zoo row names the released checkpoint; this model is not it (predict would look its
  # test views up there).
  if "zoo" in c:
    del c["zoo"]
  c.batch_size = 4  # divisible by the 4 simulated devices of the README's fsdp=4 command
  c.eval_batch_size = 4
  c.aug.crop_size = c.model.input_resolution
  c.sampling.test_clips = 1
  c.sampling.test_crops = 1
  if c.dataset.kind not in ("ucf101", "hmdb51"):  # those take the names from their split files
    c.dataset.labels = "labels.txt"  # written by the dataset generator
  c.log_every_steps = 1
  return c
