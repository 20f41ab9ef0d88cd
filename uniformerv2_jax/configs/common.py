"""Defaults shared by every config, and the model-zoo row -> config mapping.

A config is an ``ml_collections.ConfigDict`` holding the *effective* official recipe (the
``run.sh`` values, see ``uniformerv2_jax/zoo.py``). Every key can be overridden on the command
line (``--config.batch_size=64``); an unknown key is an error (the config is locked).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from uniformerv2_jax import labels, zoo
from uniformerv2_jax.model import ModelConfig

# Per-dataset facts of the official data pipeline: list-file style, and the label map shipped
# with the package (one table for configs and prediction: ``uniformerv2_jax/labels.py``).
_KINDS = {"k400": "video_list", "k600": "video_list", "k700": "video_list", "k710": "video_list",
          "mit": "video_list", "sthv1": "frame_folders", "sthv2": "frame_folders",
          "anet": "video_list", "hacs": "video_list"}
DATASETS = {name: dict(kind=kind, labels=labels.DATASET_LABELS[name])
            for name, kind in _KINDS.items()}




def model_config_dict(cfg: ModelConfig) -> ml_collections.ConfigDict:
  d = dataclasses.asdict(cfg)
  d["return_list"] = tuple(cfg.return_list)
  d["mlp_dropout"] = tuple(cfg.mlp_dropout)
  return ml_collections.ConfigDict(d)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # ---- schedule (global batch; steps per epoch derive from the train set size)
  c.batch_size = 64  # global, clips per optimizer step (before repeated augmentation)
  c.eval_batch_size = 0  # 0 = batch_size
  c.epochs = 1.0
  c.total_steps = 0  # > 0 overrides epochs
  c.log_every_steps = 10
  c.eval_every_steps = 0  # 0 = once per epoch
  c.checkpoint_every_steps = 0  # 0 = once per epoch
  c.keep_checkpoints = 2
  c.keep_best = True  # also keep the checkpoint with the best eval top-1
  c.export_hub = False  # at the end of the run, write WORKDIR/hub (hub.write_hub) for a model hub
  # ---- optimisation (official recipe)
  c.optim = ml_collections.ConfigDict(dict(
    base_lr=1e-5, warmup_epochs=5.0, warmup_start_lr=1e-6, end_lr=1e-6, weight_decay=0.05,
    b1=0.9, b2=0.999, eps=1e-8, clip_norm=20.0, layer_decay=0.0, accumulate_steps=1,
    ema_decay=0.0, label_smoothing=0.0))
  # ---- initialisation: an Orbax directory from convert_torch_weights.py (CLIP or a zoo model)
  c.init_from = ""
  c.init_head = "new"  # new (DELETE_SPECIAL_HEAD) | keep | slice (first K rows)
  # ---- data
  c.dataset = ml_collections.ConfigDict(dict(
    # video_list | frame_folders | ucf101 | hmdb51 | tfds | arrayrecord | demo
    name="", kind="video_list",
    root="",  # directory the list files and videos are relative to
    split=1,  # ucf101 / hmdb51: which official split (1, 2, 3) the split files give
    train_list="train.csv", val_list="val.csv", test_list="test.csv",
    sep=",", frame_template="img_{:05d}.jpg", bgr=False,
    tfds_name="", tfds_data_dir="", video_key="video", label_key="label",
    labels="",  # label map name shipped with the package, or a file with one name per line
    num_workers=0, prefetch_batches=2, read_threads=2, seek_threshold=0,
    # FFmpeg decoder threads: "" = "NONE" with worker processes (more clips per core), else
    # "AUTO"; selective_decode: H.264 in MP4 decodes only what the sampled frames need.
    decode_threads="", selective_decode=True,
  ))
  c.sampling = ml_collections.ConfigDict(dict(mode="sparse", sampling_rate=16, test_clips=4,
                                              test_crops=3, single_crop_index=1))
  c.aug = ml_collections.ConfigDict(dict(
    crop_size=224, rand_augment="rand-m7-n4-mstd0.5-inc1", scale=(0.08, 1.0),
    ratio=(0.75, 1.3333), random_flip=True, num_sample=1, mean=(0.45, 0.45, 0.45),
    std=(0.225, 0.225, 0.225), mixup_alpha=0.0, cutmix_alpha=0.0))
  # ---- hardware
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1 fills
  # Logical axis -> mesh axis. Parameters: "embed" dims are FSDP-sharded, "heads"/"mlp" dims
  # tensor-parallel; the batch is split over data x fsdp.
  c.sharding_rules = ml_collections.ConfigDict(dict(
    batch=("data", "fsdp"), embed="fsdp", heads="tensor", mlp="tensor", classes="tensor"))
  c.precision = "float32"  # float32 | bfloat16 (compute; params stay float32)
  c.remat_policy = "none"  # none | full | dots | dots_no_batch | qkv_mlp (fastest on CPU)
  c.scan_layers = True
  c.model = ml_collections.ConfigDict()
  return c


def from_zoo(dataset: str, arg: str) -> ml_collections.ConfigDict:
  """The effective official recipe of model-zoo row ``dataset:arg``."""
  e = zoo.get(dataset, arg)
  c = base_config()
  c.model = model_config_dict(e.model_config())
  c.zoo = ml_collections.ConfigDict(dict(name=e.name, checkpoint=e.checkpoint, init=e.init,
                                         top1=e.top1 if e.top1 is not None else -1.0,
                                         views=e.views))
  c.batch_size = e.global_batch
  c.epochs = float(e.epochs)
  c.optim.base_lr = e.base_lr
  c.optim.warmup_epochs = e.warmup_epochs
  c.init_head = "new" if e.delete_head else "keep"
  c.remat_policy = "full" if e.remat_layers else "none"
  c.dataset.name = dataset
  c.dataset.kind = DATASETS[dataset]["kind"]
  c.dataset.labels = DATASETS[dataset]["labels"]
  c.sampling.test_clips = e.test_clips
  c.sampling.test_crops = e.test_crops
  c.aug.crop_size = e.resolution
  if e.something:
    c.dataset.bgr = True  # OpenCV-decoded frames stay BGR in the official SSv2 pipeline
    c.aug.random_flip = False
    c.aug.num_sample = 2
    c.sampling.single_crop_index = 0
  return c
