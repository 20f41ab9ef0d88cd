"""The official model zoo: every released setting (OpenGVLab/UniFormerV2 MODEL_ZOO.md).

One row per released checkpoint (49; each has its own ``exp/<dataset>/<name>`` recipe), with the
model options and the **effective** recipe (``config.yaml`` + ``run.sh`` overrides, which is
what the released models were trained with). ``configs/<dataset>.py:<arg>`` selects a row.

Arguments: ``<backbone>_<frames>x<res>`` plus ``_k710`` (fine-tuned from a K710-stage checkpoint;
for MiT/ANet/HACS from the K400+K710 one) and ``_frozen`` (frozen CLIP backbone).
"""

from __future__ import annotations

import dataclasses

from uniformerv2_jax.errors import UnknownSetting
from uniformerv2_jax.model import ModelConfig
from uniformerv2_jax.variants import BACKBONES

# Datasets whose recipes use local MHRA + temporal downsampling, BGR frame folders, no flip and
# repeated augmentation (Something-Something V1/V2).
SOMETHING = ("sthv1", "sthv2")
# Datasets whose recipes use drop path 0.2 (backbone) / 0.4 (global blocks).
DROP_PATH_DATASETS = ("sthv1", "sthv2", "anet", "hacs")


@dataclasses.dataclass(frozen=True)
class ZooEntry:
  dataset: str  # k400 k600 k700 k710 mit sthv1 sthv2 anet hacs
  arg: str  # e.g. b16_8x224, l14_32x336_k710, l14_8x336_frozen
  backbone: str  # b16 | l14 | l14_336
  frames: int
  num_classes: int
  global_batch: int  # clips per optimizer step (SSv1/SSv2: videos; x2 clips by repeated aug)
  base_lr: float
  epochs: int
  warmup_epochs: float
  test_clips: int
  test_crops: int
  init: str  # "clip" or the official checkpoint file the recipe fine-tunes from
  top1: float | None  # MODEL_ZOO top-1 (None for the K710 intermediate models)
  views: str  # as MODEL_ZOO reports them (frames x crops x clips)
  checkpoint: str  # released file name
  remat_layers: int = 0  # official USE_CHECKPOINT / CHECKPOINT_NUM (leading blocks recomputed)
  frozen: bool = False
  delete_head: bool = False  # DELETE_SPECIAL_HEAD: new head when fine-tuning from `init`

  @property
  def name(self) -> str:
    return f"{self.dataset}:{self.arg}"

  @property
  def resolution(self) -> int:
    return BACKBONES["uniformerv2_" + self.backbone]["input_resolution"]

  @property
  def something(self) -> bool:
    return self.dataset in SOMETHING

  def model_config(self, **overrides) -> ModelConfig:
    arch = BACKBONES["uniformerv2_" + self.backbone]
    layers, width = arch["layers"], arch["width"]
    if self.something:  # global blocks after the last 8 (B/16) / 16 (L/14) layers
      return_list = tuple(range(layers // 3, layers))
    else:
      return_list = tuple(range(layers - 4, layers))
    drop = self.dataset in DROP_PATH_DATASETS
    # BatchNorm statistics of the official recipes (``bn_sync``). The official code trains
    # with PyTorch DistributedDataParallel and plain BatchNorm3d: each GPU normalises its own
    # sub-batch, so the zoo says False (statistics per batch shard of the mesh). Only the
    # SSv1/SSv2 rows have local MHRA, hence BatchNorm; for the others the value changes nothing.
    # The official per-GPU batch is run.sh's BATCH_SIZE (per machine) over its 8 GPUs; the
    # statistics cover as many clips as there when batch_size x aug.num_sample clips split over
    # this many batch shards (mesh data x fsdp):
    #   sthv1/sthv2 b16_16x224              1 machine  x 8 GPUs x 16 videos (32 clips)  8 shards
    #   sthv1/sthv2 b16_32x224, l14_16x224  2 machines x 8 GPUs x  8 videos (16 clips) 16 shards
    #   sthv1/sthv2 l14_32x224              4 machines x 8 GPUs x  4 videos  (8 clips) 32 shards
    # A video's num_sample clips sit next to each other in the batch: with a multiple of
    # num_sample clips per shard they share a device, as they share a GPU there.
    kw = dict(
      num_classes=self.num_classes, num_frames=self.frames,
      input_resolution=arch["input_resolution"], patch_size=arch["patch_size"], width=width,
      layers=layers, heads=arch["heads"], temporal_kernel=arch["kernel_size"],
      temporal_downsample=self.something, no_lmhra=not self.something, double_lmhra=True,
      dw_reduction=1.5, return_list=return_list, n_layers=len(return_list), n_dim=width,
      n_head=arch["heads"], mlp_factor=4.0, backbone_drop_path_rate=0.2 if drop else 0.0,
      drop_path_rate=0.4 if drop else 0.0, mlp_dropout=(0.5,) * len(return_list),
      cls_dropout=0.5, frozen=self.frozen, bn_sync=False,
    )
    kw.update(overrides)
    return ModelConfig(**kw)


def _row(dataset, arg, backbone, frames, classes, *, batch, lr, epochs, warmup, test, init, top1,
         views, ckpt, remat=0, frozen=False, delete_head=False) -> ZooEntry:
  return ZooEntry(dataset, arg, backbone, frames, classes, batch, lr, epochs, warmup, test[0],
                  test[1], init, top1, views, ckpt, remat, frozen, delete_head)


ZOO: tuple[ZooEntry, ...] = (
  _row('k710', 'b16_8x224', 'b16', 8, 710,
       batch=256, lr=1e-05, epochs=55, warmup=5.0, test=(4, 3),
       init='clip', top1=None, views='8',
       ckpt='k710_uniformerv2_b16_8x224.pyth'),
  _row('k710', 'l14_8x224', 'l14', 8, 710,
       batch=512, lr=1e-05, epochs=40, warmup=5.0, test=(4, 3),
       init='clip', top1=None, views='8',
       ckpt='k710_uniformerv2_l14_8x224.pyth'),
  _row('k710', 'l14_8x336', 'l14_336', 8, 710,
       batch=256, lr=5e-06, epochs=40, warmup=5.0, test=(4, 3),
       init='clip', top1=None, views='8',
       ckpt='k710_uniformerv2_l14_8x336.pyth'),
  _row('k710', 'l14_8x336_frozen', 'l14_336', 8, 710,
       batch=512, lr=0.0008, epochs=50, warmup=0.0, test=(3, 1),
       init='clip', top1=None, views='8',
       ckpt='frozen_k710_uniformerv2_l14_8x336.pyth', frozen=True),
  _row('k400', 'b16_8x224', 'b16', 8, 400,
       batch=256, lr=1e-05, epochs=55, warmup=5.0, test=(4, 3),
       init='clip', top1=84.4, views='8x3x4',
       ckpt='k400_uniformerv2_b16_8x224.pyth'),
  _row('k400', 'b16_8x224_k710', 'b16', 8, 400,
       batch=256, lr=2e-06, epochs=5, warmup=1.0, test=(4, 3),
       init='k710_uniformerv2_b16_8x224.pyth', top1=85.6, views='8x3x4',
       ckpt='k400_k710_uniformerv2_b16_8x224.pyth', delete_head=True),
  _row('k400', 'l14_8x224_k710', 'l14', 8, 400,
       batch=256, lr=1.5e-06, epochs=5, warmup=1.0, test=(4, 3),
       init='k710_uniformerv2_l14_8x224.pyth', top1=88.8, views='8x3x4',
       ckpt='k400_k710_uniformerv2_l14_8x224.pyth', delete_head=True),
  _row('k400', 'l14_16x224_k710', 'l14', 16, 400,
       batch=256, lr=1.5e-06, epochs=5, warmup=1.0, test=(4, 3),
       init='k710_uniformerv2_l14_8x224.pyth', top1=89.1, views='16x3x4',
       ckpt='k400_k710_uniformerv2_l14_16x224.pyth', delete_head=True),
  _row('k400', 'l14_32x224_k710', 'l14', 32, 400,
       batch=128, lr=1.5e-06, epochs=5, warmup=1.0, test=(4, 3),
       init='k710_uniformerv2_l14_8x224.pyth', top1=89.3, views='32x3x2',
       ckpt='k400_k710_uniformerv2_l14_32x224.pyth', delete_head=True),
  _row('k400', 'l14_32x336_k710', 'l14_336', 32, 400,
       batch=128, lr=1.5e-06, epochs=5, warmup=1.0, test=(4, 3),
       init='k710_uniformerv2_l14_8x336.pyth', top1=89.7, views='32x3x2',
       ckpt='k400_k710_uniformerv2_l14_32x336.pyth', remat=24, delete_head=True),
  _row('k400', 'l14_64x336_k710', 'l14_336', 64, 400,
       batch=128, lr=1.5e-06, epochs=5, warmup=1.0, test=(4, 3),
       init='k710_uniformerv2_l14_8x336.pyth', top1=90.0, views='64x3x2',
       ckpt='k400_k710_uniformerv2_l14_64x336.pyth', remat=24, delete_head=True),
  _row('k400', 'l14_8x336_frozen', 'l14_336', 8, 400,
       batch=512, lr=0.0008, epochs=50, warmup=0.0, test=(3, 1),
       init='clip', top1=86.7, views='8x1x3',
       ckpt='frozen_k400_uniformerv2_l14_8x336.pyth', frozen=True),
  _row('k400', 'l14_8x336_k710_frozen', 'l14_336', 8, 400,
       batch=512, lr=5e-05, epochs=5, warmup=1.0, test=(3, 1),
       init='frozen_k710_uniformerv2_l14_8x336.pyth', top1=87.8, views='8x1x3',
       ckpt='frozen_k400_k710_uniformerv2_l14_8x336.pyth', frozen=True),
  _row('k400', 'l14_32x336_k710_frozen', 'l14_336', 32, 400,
       batch=256, lr=5e-05, epochs=5, warmup=1.0, test=(3, 1),
       init='frozen_k710_uniformerv2_l14_8x336.pyth', top1=88.9, views='32x3x4',
       ckpt='frozen_k400_k710_uniformerv2_l14_32x336.pyth', frozen=True),
  _row('k600', 'b16_8x224', 'b16', 8, 600,
       batch=256, lr=1e-05, epochs=55, warmup=5.0, test=(4, 3),
       init='clip', top1=85.0, views='8x3x4',
       ckpt='k600_uniformerv2_b16_8x224.pyth'),
  _row('k600', 'b16_8x224_k710', 'b16', 8, 600,
       batch=256, lr=2e-06, epochs=5, warmup=1.0, test=(4, 3),
       init='k710_uniformerv2_b16_8x224.pyth', top1=86.1, views='8x3x4',
       ckpt='k600_k710_uniformerv2_b16_8x224.pyth'),
  _row('k600', 'l14_8x224_k710', 'l14', 8, 600,
       batch=256, lr=1.5e-06, epochs=5, warmup=1.0, test=(4, 3),
       init='k710_uniformerv2_l14_8x224.pyth', top1=89.0, views='8x3x4',
       ckpt='k600_k710_uniformerv2_l14_8x224.pyth'),
  _row('k600', 'l14_16x224_k710', 'l14', 16, 600,
       batch=256, lr=1.5e-06, epochs=5, warmup=1.0, test=(4, 3),
       init='k710_uniformerv2_l14_8x224.pyth', top1=89.4, views='16x3x4',
       ckpt='k600_k710_uniformerv2_l14_16x224.pyth'),
  _row('k600', 'l14_32x224_k710', 'l14', 32, 600,
       batch=128, lr=1.5e-06, epochs=5, warmup=1.0, test=(4, 3),
       init='k710_uniformerv2_l14_8x224.pyth', top1=89.5, views='32x3x2',
       ckpt='k600_k710_uniformerv2_l14_32x224.pyth'),
  _row('k600', 'l14_32x336_k710', 'l14_336', 32, 600,
       batch=128, lr=1.5e-06, epochs=5, warmup=1.0, test=(4, 3),
       init='k710_uniformerv2_l14_8x336.pyth', top1=89.9, views='32x3x2',
       ckpt='k600_k710_uniformerv2_l14_32x336.pyth', remat=24),
  _row('k600', 'l14_64x336_k710', 'l14_336', 64, 600,
       batch=128, lr=1.5e-06, epochs=5, warmup=1.0, test=(4, 3),
       init='k710_uniformerv2_l14_8x336.pyth', top1=90.1, views='64x3x2',
       ckpt='k600_k710_uniformerv2_l14_64x336.pyth', remat=24),
  _row('k600', 'l14_8x336_frozen', 'l14_336', 8, 600,
       batch=512, lr=0.0008, epochs=50, warmup=0.0, test=(3, 1),
       init='clip', top1=87.4, views='8x1x3',
       ckpt='frozen_k600_uniformerv2_l14_8x336.pyth', frozen=True),
  _row('k600', 'l14_8x336_k710_frozen', 'l14_336', 8, 600,
       batch=512, lr=5e-05, epochs=5, warmup=1.0, test=(3, 1),
       init='frozen_k710_uniformerv2_l14_8x336.pyth', top1=88.2, views='8x1x3',
       ckpt='frozen_k600_k710_uniformerv2_l14_8x336.pyth', frozen=True),
  _row('k600', 'l14_32x336_k710_frozen', 'l14_336', 32, 600,
       batch=256, lr=5e-05, epochs=5, warmup=1.0, test=(3, 1),
       init='frozen_k710_uniformerv2_l14_8x336.pyth', top1=89.2, views='32x3x4',
       ckpt='frozen_k600_k710_uniformerv2_l14_32x336.pyth', frozen=True),
  _row('k700', 'b16_8x224', 'b16', 8, 700,
       batch=256, lr=1e-05, epochs=55, warmup=5.0, test=(4, 3),
       init='clip', top1=75.8, views='8x3x4',
       ckpt='k700_uniformerv2_b16_8x224.pyth'),
  _row('k700', 'b16_8x224_k710', 'b16', 8, 700,
       batch=256, lr=2e-06, epochs=5, warmup=1.0, test=(4, 3),
       init='k710_uniformerv2_b16_8x224.pyth', top1=76.3, views='8x3x4',
       ckpt='k700_k710_uniformerv2_b16_8x224.pyth'),
  _row('k700', 'l14_8x224_k710', 'l14', 8, 700,
       batch=256, lr=1.5e-06, epochs=5, warmup=1.0, test=(4, 3),
       init='k710_uniformerv2_l14_8x224.pyth', top1=80.8, views='8x3x4',
       ckpt='k700_k710_uniformerv2_l14_8x224.pyth'),
  _row('k700', 'l14_16x224_k710', 'l14', 16, 700,
       batch=256, lr=1.5e-06, epochs=5, warmup=1.0, test=(4, 3),
       init='k710_uniformerv2_l14_8x224.pyth', top1=81.2, views='16x3x4',
       ckpt='k700_k710_uniformerv2_l14_16x224.pyth'),
  _row('k700', 'l14_32x224_k710', 'l14', 32, 700,
       batch=128, lr=1.5e-06, epochs=5, warmup=1.0, test=(4, 3),
       init='k710_uniformerv2_l14_8x224.pyth', top1=81.5, views='32x3x2',
       ckpt='k700_k710_uniformerv2_l14_32x224.pyth'),
  _row('k700', 'l14_32x336_k710', 'l14_336', 32, 700,
       batch=128, lr=1.5e-06, epochs=5, warmup=1.0, test=(4, 3),
       init='k710_uniformerv2_l14_8x336.pyth', top1=82.1, views='32x3x2',
       ckpt='k700_k710_uniformerv2_l14_32x336.pyth', remat=24),
  _row('k700', 'l14_64x336_k710', 'l14_336', 64, 700,
       batch=128, lr=1.5e-06, epochs=5, warmup=1.0, test=(4, 3),
       init='k710_uniformerv2_l14_8x336.pyth', top1=82.7, views='64x3x2',
       ckpt='k700_k710_uniformerv2_l14_64x336.pyth', remat=24),
  _row('k700', 'l14_8x336_frozen', 'l14_336', 8, 700,
       batch=512, lr=0.0008, epochs=50, warmup=0.0, test=(3, 1),
       init='clip', top1=79.6, views='8x1x3',
       ckpt='frozen_k700_uniformerv2_l14_8x336.pyth', frozen=True),
  _row('k700', 'l14_8x336_k710_frozen', 'l14_336', 8, 700,
       batch=512, lr=5e-05, epochs=5, warmup=1.0, test=(3, 1),
       init='frozen_k710_uniformerv2_l14_8x336.pyth', top1=79.7, views='8x1x3',
       ckpt='frozen_k700_k710_uniformerv2_l14_8x336.pyth', frozen=True),
  _row('k700', 'l14_32x336_k710_frozen', 'l14_336', 32, 700,
       batch=256, lr=5e-05, epochs=5, warmup=1.0, test=(3, 1),
       init='frozen_k710_uniformerv2_l14_8x336.pyth', top1=80.8, views='32x3x4',
       ckpt='frozen_k700_k710_uniformerv2_l14_32x336.pyth', frozen=True),
  _row('mit', 'b16_8x224_k710', 'b16', 8, 339,
       batch=512, lr=2e-05, epochs=24, warmup=5.0, test=(4, 3),
       init='k400+k710_uniformerv2_b16_8x224.pyth', top1=42.6, views='8x3x4',
       ckpt='mit_uniformerv2_b16_8x224.pyth', delete_head=True),
  _row('mit', 'l14_8x224_k710', 'l14', 8, 339,
       batch=512, lr=1e-05, epochs=18, warmup=5.0, test=(4, 3),
       init='k400+k710_uniformerv2_l14_8x224.pyth', top1=47.0, views='8x3x4',
       ckpt='mit_uniformerv2_l14_8x224.pyth', delete_head=True),
  _row('mit', 'l14_8x336_k710', 'l14_336', 8, 339,
       batch=512, lr=1e-05, epochs=18, warmup=5.0, test=(4, 3),
       init='k400+k710_uniformerv2_l14_8x336.pyth', top1=47.8, views='8x3x4',
       ckpt='mit_uniformerv2_l14_8x336.pyth', remat=21, delete_head=True),
  _row('sthv1', 'b16_16x224', 'b16', 16, 174,
       batch=128, lr=4e-05, epochs=22, warmup=5.0, test=(1, 3),
       init='clip', top1=56.8, views='16x3x1',
       ckpt='sthv1_uniformerv2_b16_16x224.pyth'),
  _row('sthv1', 'b16_32x224', 'b16', 32, 174,
       batch=128, lr=4e-05, epochs=22, warmup=5.0, test=(1, 3),
       init='clip', top1=59.4, views='32x3x1',
       ckpt='sthv1_uniformerv2_b16_32x224.pyth'),
  _row('sthv1', 'l14_16x224', 'l14', 16, 174,
       batch=128, lr=2e-05, epochs=22, warmup=5.0, test=(1, 3),
       init='clip', top1=60.5, views='16x3x1',
       ckpt='sthv1_uniformerv2_l14_16x224.pyth', remat=15),
  _row('sthv1', 'l14_32x224', 'l14', 32, 174,
       batch=128, lr=2e-05, epochs=22, warmup=5.0, test=(1, 3),
       init='clip', top1=62.7, views='32x3x1',
       ckpt='sthv1_uniformerv2_l14_32x224.pyth', remat=15),
  _row('sthv2', 'b16_16x224', 'b16', 16, 174,
       batch=128, lr=4e-05, epochs=22, warmup=5.0, test=(1, 3),
       init='clip', top1=69.5, views='16x3x1',
       ckpt='sthv2_uniformerv2_b16_16x224.pyth'),
  _row('sthv2', 'b16_32x224', 'b16', 32, 174,
       batch=128, lr=4e-05, epochs=22, warmup=5.0, test=(1, 3),
       init='clip', top1=70.7, views='32x3x1',
       ckpt='sthv2_uniformerv2_b16_32x224.pyth'),
  _row('sthv2', 'l14_16x224', 'l14', 16, 174,
       batch=128, lr=2e-05, epochs=22, warmup=5.0, test=(1, 3),
       init='clip', top1=72.1, views='16x3x1',
       ckpt='sthv2_uniformerv2_l14_16x224.pyth', remat=15),
  _row('sthv2', 'l14_32x224', 'l14', 32, 174,
       batch=128, lr=2e-05, epochs=22, warmup=5.0, test=(1, 3),
       init='clip', top1=73.0, views='32x3x1',
       ckpt='sthv2_uniformerv2_l14_32x224.pyth', remat=15),
  _row('anet', 'l14_16x224_k710', 'l14', 16, 200,
       batch=64, lr=5e-06, epochs=20, warmup=5.0, test=(10, 3),
       init='k400+k710_uniformerv2_l14_16x224.pyth', top1=94.3, views='16x3x10',
       ckpt='anet_uniformerv2_l14_16x224.pyth', remat=1, delete_head=True),
  _row('anet', 'l14_32x224_k710', 'l14', 32, 200,
       batch=64, lr=5e-06, epochs=20, warmup=5.0, test=(10, 3),
       init='k400+k710_uniformerv2_l14_32x224.pyth', top1=94.7, views='32x3x10',
       ckpt='anet_uniformerv2_l14_32x224.pyth', remat=1, delete_head=True),
  _row('hacs', 'l14_16x224_k710', 'l14', 16, 200,
       batch=64, lr=5e-06, epochs=20, warmup=5.0, test=(10, 3),
       init='k400+k710_uniformerv2_l14_16x224.pyth', top1=95.5, views='16x3x10',
       ckpt='hacs_uniformerv2_l14_16x224.pyth', remat=1, delete_head=True),
  _row('hacs', 'l14_32x224_k710', 'l14', 32, 200,
       batch=64, lr=5e-06, epochs=20, warmup=5.0, test=(10, 3),
       init='k400+k710_uniformerv2_l14_32x224.pyth', top1=95.4, views='32x3x10',
       ckpt='hacs_uniformerv2_l14_32x224.pyth', remat=1, delete_head=True),
)

_BY_NAME = {e.name: e for e in ZOO}


def get(dataset: str, arg: str) -> ZooEntry:
  """The zoo row ``dataset:arg``; a clear error lists the valid arguments."""
  try:
    return _BY_NAME[f"{dataset}:{arg}"]
  except KeyError:
    valid = ", ".join(e.arg for e in ZOO if e.dataset == dataset) or "(unknown dataset)"
    raise UnknownSetting(f"no model-zoo setting {arg!r} for {dataset}; valid: {valid}") from None


def entries_for(dataset: str) -> list[ZooEntry]:
  return [e for e in ZOO if e.dataset == dataset]
