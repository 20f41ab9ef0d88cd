"""A tiny UniFormerV2 trained from scratch on the bundled demo dataset (motion classes that need
temporal reasoning); minutes on a laptop CPU.

  python main.py --config configs/demo.py --workdir demo_run

The dataset is generated into ``config.dataset.root`` (default: ~/.cache/uniformerv2_jax/demo)
on first use and reused as it is afterwards.
"""

import os

from configs import common
from uniformerv2_jax.model import ModelConfig


def default_root() -> str:
  cache = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
  return os.path.join(cache, "uniformerv2_jax", "demo")


def get_config(arg: str = ""):
  del arg
  c = common.base_config()
  c.model = common.model_config_dict(ModelConfig(
    num_classes=10, num_frames=8, input_resolution=64, patch_size=8, width=96, layers=4,
    heads=4, temporal_downsample=False, no_lmhra=False, double_lmhra=True, dw_reduction=1.5,
    return_list=(2, 3), n_layers=2, n_dim=96, n_head=4, mlp_factor=2.0,
    backbone_drop_path_rate=0.0, drop_path_rate=0.0, mlp_dropout=(0.0, 0.0), cls_dropout=0.1))
  c.dataset.name = "demo"
  c.dataset.kind = "demo"
  c.dataset.root = default_root()
  c.dataset.labels = "labels.txt"  # written by the generator, next to the list files
  c.batch_size = 16
  c.eval_batch_size = 16
  c.epochs = 30.0
  c.optim.base_lr = 1e-3
  c.optim.warmup_epochs = 2.0
  c.optim.end_lr = 1e-5
  c.log_every_steps = 20
  c.aug.crop_size = 64
  c.aug.scale = (0.6, 1.0)
  c.aug.rand_augment = "rand-m5-n2-mstd0.5-inc1"
  c.aug.random_flip = False  # a flip would swap left/right and clockwise/counter-clockwise
  c.sampling.test_clips = 1
  c.sampling.test_crops = 1
  return c
