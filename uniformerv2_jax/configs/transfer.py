"""Fine-tuning a Kinetics-400 UniFormerV2 on the small transfer benchmarks (UCF-101, HMDB-51).

The official code ships no recipe for these datasets, so the recipe here is this project's own,
not an official one, and no figure has been reproduced with it yet. It follows the official
recipes for the other small fine-tuning sets, ActivityNet and HACS (``configs/anet.py``,
``configs/hacs.py``: a released Kinetics model, a new head, batch 64, LR 5e-6, 20 epochs with 5
warmup epochs, drop path 0.2 / 0.4), because those are the released settings closest in size:
UCF-101 has ~9.5k training videos a split (ANet ~10k), HMDB-51 ~3.6k. HMDB-51 gets 30 epochs
so that it still sees ~1.7k optimizer steps. Clips are short (UCF-101 ~7 s, HMDB-51 ~3 s), so
the model reads 8 frames sparsely, as on Kinetics, and tests with the Kinetics views
(4 clips x 3 crops).

Arguments: which released Kinetics-400 checkpoint to start from (convert it with
``convert_torch_weights.py`` and pass the Orbax directory as ``--config.init_from``):

  b16_8x224       k400_uniformerv2_b16_8x224.pyth        (K400 from CLIP)
  b16_8x224_k710  k400_k710_uniformerv2_b16_8x224.pyth   (K400 after K710)
  l14_8x224_k710  k400_k710_uniformerv2_l14_8x224.pyth   (K400 after K710)
"""

from __future__ import annotations

import ml_collections

from uniformerv2_jax import zoo
from uniformerv2_jax.configs import common
from uniformerv2_jax.errors import UnknownSetting

# dataset -> (classes, epochs)
TRANSFER_DATASETS = {"ucf101": (101, 20), "hmdb51": (51, 30)}
ARGS = ("b16_8x224", "b16_8x224_k710", "l14_8x224_k710")


def transfer_config(dataset: str, arg: str) -> ml_collections.ConfigDict:
  if arg not in ARGS:
    raise UnknownSetting(f"no {dataset} setting {arg!r}; valid: {', '.join(ARGS)}")
  num_classes, epochs = TRANSFER_DATASETS[dataset]
  source = zoo.get("k400", arg)  # the checkpoint fine-tuned from: same architecture
  c = common.base_config()
  c.model = common.model_config_dict(source.model_config(
    num_classes=num_classes, backbone_drop_path_rate=0.2, drop_path_rate=0.4))
  c.init_head = "new"  # the Kinetics head has 400 classes
  c.batch_size = 64
  c.epochs = float(epochs)
  c.optim.base_lr = 5e-6
  c.optim.warmup_epochs = 5.0
  c.remat_policy = "full" if source.backbone.startswith("l14") else "none"
  c.dataset.name = dataset
  c.dataset.kind = dataset  # the official split files (uniformerv2_jax/data/splits.py)
  c.dataset.split = 1
  c.sampling.test_clips = 4
  c.sampling.test_crops = 3
  c.aug.crop_size = source.resolution
  return c
