"""A tiny training config for the tests: ``--config tests/tiny_train_config.py:DATASET_ROOT``."""

from uniformerv2_jax.configs import common
from uniformerv2_jax.model import ModelConfig


def get_config(root: str = ""):
  c = common.base_config()
  c.model = common.model_config_dict(ModelConfig(
    num_classes=10, num_frames=4, input_resolution=32, patch_size=8, width=32, layers=2,
    heads=2, temporal_downsample=False, no_lmhra=False, double_lmhra=False, dw_reduction=2.0,
    return_list=(1,), n_layers=1, n_dim=32, n_head=2, mlp_factor=2.0, mlp_dropout=(0.0,),
    cls_dropout=0.0))
  c.dataset.name = "demo"
  c.dataset.kind = "demo"
  c.dataset.root = root
  c.dataset.labels = "labels.txt"
  c.batch_size = 4
  c.epochs = 2.0
  c.optim.base_lr = 3e-3
  c.optim.warmup_epochs = 0.5
  c.log_every_steps = 1
  c.aug.crop_size = 32
  c.aug.scale = (0.7, 1.0)
  c.aug.rand_augment = "rand-m5-n1-mstd0.5-inc1"
  c.aug.random_flip = False
  c.sampling.test_clips = 1
  c.sampling.test_crops = 1
  return c
