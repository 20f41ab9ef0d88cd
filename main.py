"""UniFormerV2 in JAX: train, evaluate, and run models.

  python main.py --config configs/demo.py --workdir demo_run              # train the demo
  python main.py --config configs/k400.py:b16_8x224 --workdir gs://bucket/run \
      --config.dataset.root=/data/k400 --config.init_from=clip_b16_orbax   # a zoo recipe
  python main.py --mode eval --config configs/k400.py:b16_8x224 --checkpoint DIR
  python main.py --mode forward --config configs/k400.py:b16_8x224         # random clip, top-5
  python main.py --mode predict --checkpoint DIR --input video.mp4 [--output preds.json]
  python main.py --mode extract --checkpoint DIR --input videos/ --output feats.npz
  python main.py --mode plan --config configs/k400.py:l14_8x224_k710 --device_memory_gb 80

Config keys are overridden with ``--config.key=value``; an unknown key is an error.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from uniformerv2_jax import host_memory

config_flags.DEFINE_config_file("config", None, "Config file (path[:argument]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (local or gs://): checkpoints, logs.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "forward", "predict", "extract", "plan"],
                  "What to do.")
flags.DEFINE_string("checkpoint", None, "Orbax checkpoint dir (eval/predict/extract/forward).")
flags.DEFINE_integer("topk", 5, "Classes to print per video (forward/predict).")
flags.DEFINE_string("input", None, "predict/extract: a video file, a folder of frame images (one "
                    "video), a folder of videos / frame folders, or a list file.")
flags.DEFINE_string("output", None, "predict: JSON file; extract: .npz (or .npy) file.")
flags.DEFINE_string("labels", None, "Class names: a shipped map (kinetics400, ...) or a file.")
flags.DEFINE_integer("batch_size", 8, "predict/extract: views per forward call.")
flags.DEFINE_bool("extract_all", False, "extract: also per-block class tokens and global tokens.")
flags.DEFINE_bool("use_ema", False, "eval/predict/extract: the checkpoint's EMA weights (written "
                  "by runs with --config.optim.ema_decay > 0) instead of the raw parameters.")
flags.DEFINE_float("device_memory_gb", None, "plan: memory per device to fit (default: TPU HBM "
                   "/ GPU bytes_limit / none on CPU).")
flags.DEFINE_string("topology", None, "plan: TPU topology for AOT planning, e.g. v5e:2x2 "
                    "(needs libtpu).")
flags.DEFINE_enum("adapt", "resize", ["resize", "pos_embed"], "Crop size != model resolution: "
                  "resize the views, or interpolate the positional embedding.")
FLAGS = flags.FLAGS


def forward(config) -> None:
  """One eval forward of the config's model on a random clip (real weights with --checkpoint)."""
  import jax
  import numpy as np

  from uniformerv2_jax import checkpoint, labels, train

  cfg = train.model_config(config)
  if FLAGS.checkpoint:
    model = checkpoint.load_checkpoint(FLAGS.checkpoint)
    cfg = model.cfg
  else:
    from uniformerv2_jax.model import create_model

    model = create_model(cfg, seed=config.seed)
    logging.info("no --checkpoint: random official initialisation")
  x = np.random.default_rng(config.seed).standard_normal(
    (1, cfg.num_frames, cfg.input_resolution, cfg.input_resolution, 3)).astype(np.float32)
  from flax import nnx

  run = nnx.jit(lambda m, v: m(v))
  t0 = time.time()
  logits = np.asarray(jax.block_until_ready(run(model, x)))[0]
  t1 = time.time()
  np.asarray(jax.block_until_ready(run(model, x)))
  t2 = time.time()
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  names = labels.load_labels(config, cfg.num_classes)
  print(f"UniFormerV2 {cfg.width}w x {cfg.layers}L, {cfg.num_frames}x{cfg.input_resolution}, "
        f"{cfg.num_classes} classes: first call {t1 - t0:.2f} s (with compile), "
        f"then {t2 - t1:.3f} s")
  for i in np.argsort(-probs)[: FLAGS.topk]:
    print(f"  {probs[i]:.4f}  {labels.name_of(names, int(i))}")


def predict_or_extract(config) -> None:
  """``--mode predict`` (top-k table / JSON) or ``--mode extract`` (features to .npz)."""
  from uniformerv2_jax import predict

  if not FLAGS.checkpoint or not FLAGS.input:
    raise app.UsageError(f"--mode {FLAGS.mode} needs --checkpoint DIR and --input PATH")
  try:
    if FLAGS.mode == "predict":
      predict.predict_videos(FLAGS.checkpoint, FLAGS.input, config=config, topk=FLAGS.topk,
                             output=FLAGS.output, labels=FLAGS.labels,
                             batch_size=FLAGS.batch_size, adapt=FLAGS.adapt,
                             use_ema=FLAGS.use_ema)
    else:
      if not FLAGS.output:
        raise app.UsageError("--mode extract needs --output FILE.npz")
      predict.extract_features(FLAGS.checkpoint, FLAGS.input, config=config,
                               output=FLAGS.output, extract_all=FLAGS.extract_all,
                               batch_size=FLAGS.batch_size, adapt=FLAGS.adapt,
                               use_ema=FLAGS.use_ema)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.info("host malloc: GLIBC_TUNABLES=%r (%s=0 keeps the system default)",
               os.environ.get("GLIBC_TUNABLES", ""), host_memory.OPT_OUT)
  config = FLAGS.config
  if FLAGS.mode in ("predict", "extract"):
    predict_or_extract(config)
    return
  if config is None:
    raise app.UsageError("--config is required (e.g. --config configs/demo.py)")
  from uniformerv2_jax import sharding

  sharding.maybe_initialize_distributed()
  mode = FLAGS.mode
  if mode == "forward":
    forward(config)
    return
  if mode == "plan":
    from uniformerv2_jax import plan

    try:
      plan.main(config, device_memory_gb=FLAGS.device_memory_gb, topology=FLAGS.topology)
    except plan.TopologyError as e:
      # One line naming what is missing (not the flags' help), and no local-backend fallback.
      raise SystemExit(f"--mode plan: {e}") from None
    return
  if mode == "train":
    if not FLAGS.workdir:
      raise app.UsageError("--workdir is required for training")
    from uniformerv2_jax import train

    summary = train.train_and_evaluate(config, FLAGS.workdir)
    print(json.dumps({"final_eval": summary}))
    return
  if mode == "eval":
    from uniformerv2_jax import train

    directory = FLAGS.checkpoint or FLAGS.workdir
    if not directory:
      raise app.UsageError("--checkpoint (or --workdir of a run) is required for eval")
    test_src = train.make_source(config, "test")
    run = train.setup(config, train_size=1)
    from uniformerv2_jax.checkpoint import NoEmaError

    try:
      step = train.restore_params(run, directory, use_ema=FLAGS.use_ema)
    except NoEmaError as e:
      raise app.UsageError(str(e)) from None
    names = train.labels_lib.load_labels(config, config.model.num_classes)
    summary = train.evaluate(run, test_src, workdir=FLAGS.workdir or directory, step=step,
                             names=names, prefix="test")
    print(json.dumps(summary))
    return
  raise app.UsageError(f"unknown --mode {mode}")


if __name__ == "__main__":
  host_memory.reexec_with_malloc_tuning()  # huge-page malloc: ~20-30 % faster CPU steps
  app.run(main)
  sys.exit(0)
