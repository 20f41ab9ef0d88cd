"""UniFormerV2 in JAX: train, evaluate, and run models.

  python main.py --config configs/demo.py --workdir demo_run              # train the demo
  python main.py --config configs/k400.py:b16_8x224 --workdir gs://bucket/run \
      --config.dataset.root=/data/k400 --config.init_from=clip_b16_orbax   # a zoo recipe
  python main.py --mode eval --config configs/k400.py:b16_8x224 --checkpoint DIR
  python main.py --mode forward --config configs/k400.py:b16_8x224         # random clip, top-5

Config keys are overridden with ``--config.key=value``; an unknown key is an error.
"""

from __future__ import annotations

import json
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (path[:argument]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (local or gs://): checkpoints, logs.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "forward", "predict", "extract", "plan"],
                  "What to do.")
flags.DEFINE_string("checkpoint", None, "Orbax checkpoint dir (eval/predict/extract/forward).")
flags.DEFINE_integer("topk", 5, "Classes to print per video (forward/predict).")
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


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  if config is None:
    raise app.UsageError("--config is required (e.g. --config configs/demo.py)")
  from uniformerv2_jax import sharding

  sharding.maybe_initialize_distributed()
  mode = FLAGS.mode
  if mode == "forward":
    forward(config)
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
    step = train.restore_params(run, directory)
    names = train.labels_lib.load_labels(config, config.model.num_classes)
    summary = train.evaluate(run, test_src, workdir=FLAGS.workdir or directory, step=step,
                             names=names, prefix="test")
    print(json.dumps(summary))
    return
  raise app.UsageError(f"--mode {mode} is not implemented yet in this version "
                       "(train, eval and forward are)")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
  sys.exit(0)
