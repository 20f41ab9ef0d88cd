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

Output: the progress bar, evals, warnings and a final summary. Log lines of the libraries below
(Orbax, JAX, grain) appear from WARNING up; ``--verbosity=0`` (``-v 0``) shows their INFO lines
too, ``-v 1`` adds debug lines.
"""

from __future__ import annotations

import json
import logging as pylogging
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
flags.DEFINE_list("eval_splits", None, "eval (ucf101 / hmdb51): evaluate on these official "
                  "splits, e.g. 1,2,3, and print their mean; {split} in --checkpoint is replaced "
                  "by each split's number (one fine-tuned run per split).")
flags.DEFINE_enum("adapt", "resize", ["resize", "pos_embed"], "Crop size != model resolution: "
                  "resize the views, or interpolate the positional embedding.")
FLAGS = flags.FLAGS

# Where the project's own log lines come from: they stay visible at INFO when libraries are quiet.
_PROJECT_SOURCES = (os.path.abspath(__file__),
                    os.path.join(os.path.dirname(os.path.abspath(__file__)), "uniformerv2_jax"))


class _ProjectInfoAndWarnings(pylogging.Filter):
  """INFO lines of the project, WARNING and up of everyone."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or os.path.abspath(record.pathname).startswith(
      _PROJECT_SOURCES)


def quiet_library_logs() -> None:
  """Unless ``--verbosity`` / ``-v`` is given, library INFO lines are dropped: Orbax alone logs
  ~130 per short run (managers created, metadata stores closed) between the progress bar's
  updates, and none of them asks anything of the user."""
  if not FLAGS["verbosity"].present:
    logging.get_absl_handler().addFilter(_ProjectInfoAndWarnings())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; an override of a key the (locked) config lacks fails in one line
  naming it, not with ml_collections' chained traceback."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    key = str(e).strip("\"'")
    given = [a for a in argv[1:]
             if a.startswith("--config.") and key in a.split("=", 1)[0].split(".")[1:]]
    if not given:  # not an override (e.g. a config file's own error): keep the traceback
      raise
    sys.exit(f"FATAL Flags parsing error: {given[0]}: the config has no key {key!r} (unknown "
             "keys are errors; the keys are in configs/common.py)")


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


def evaluate(config, directory: str, run=None) -> dict:
  """Multi-view test of the checkpoint in ``directory`` on the config's test set (``run``: a
  ``train.setup`` of the same config to reuse, its compiled steps included)."""
  from uniformerv2_jax import train
  from uniformerv2_jax.checkpoint import NoEmaError

  test_src = train.make_source(config, "test")
  run = run or train.setup(config, train_size=1)
  try:
    step = train.restore_params(run, directory, use_ema=FLAGS.use_ema)
  except NoEmaError as e:
    raise app.UsageError(str(e)) from None
  names = train.labels_lib.load_labels(config, config.model.num_classes)
  return train.evaluate(run, test_src, workdir=FLAGS.workdir or directory, step=step,
                        names=names, prefix="test")


def evaluate_splits(config, directory: str, splits: list[str]) -> None:
  """The usual UCF-101 / HMDB-51 figure: each split's run on its own test list, then the mean.
  Prints one JSON line per split and a final line with the means."""
  from uniformerv2_jax.data.splits import KINDS

  if config.dataset.kind not in KINDS:
    raise app.UsageError(f"--eval_splits needs dataset.kind ucf101 or hmdb51, not "
                         f"{config.dataset.kind!r}")
  try:
    numbers = [int(s) for s in splits]
  except ValueError:
    raise app.UsageError(f"--eval_splits {','.join(splits)}: expected split numbers, e.g. "
                         "1,2,3") from None
  if any(n not in (1, 2, 3) for n in numbers) or len(set(numbers)) != len(numbers):
    raise app.UsageError(f"--eval_splits {','.join(splits)}: distinct splits among 1, 2, 3")
  if "{split}" not in directory:
    logging.warning("--checkpoint has no {split}: the same model is evaluated on every split")
  dirs = {n: directory.replace("{split}", str(n)) for n in numbers}
  missing = [d for d in dirs.values() if "://" not in d and not os.path.isdir(d)]
  if missing:
    raise app.UsageError(f"checkpoint directory not found: {', '.join(missing)}")
  from uniformerv2_jax import train

  run = train.setup(config, train_size=1)  # one model and one compile for every split
  results = {}
  for n, d in dirs.items():
    config.dataset.split = n
    results[n] = evaluate(config, d, run)
    print(json.dumps({"split": n, "checkpoint": d, **results[n]}), flush=True)
  mean = {k: sum(r[k] for r in results.values()) / len(results) for k in ("top1", "top5")}
  print(json.dumps({"splits": numbers, "mean_top1": mean["top1"], "mean_top5": mean["top5"]}))


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_library_logs()
  logging.debug("host malloc: GLIBC_TUNABLES=%r (%s=0 keeps the system default)",
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
      plan.print_memory_plan(config, device_memory_gb=FLAGS.device_memory_gb,
                             topology=FLAGS.topology)
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
    directory = FLAGS.checkpoint or FLAGS.workdir
    if not directory:
      raise app.UsageError("--checkpoint (or --workdir of a run) is required for eval")
    if FLAGS.eval_splits:
      evaluate_splits(config, directory, FLAGS.eval_splits)
    else:
      print(json.dumps(evaluate(config, directory)))
    return
  raise app.UsageError(f"unknown --mode {mode}")


if __name__ == "__main__":
  host_memory.reexec_with_malloc_tuning()  # huge-page malloc: ~20-30 % faster CPU steps
  app.run(main, flags_parser=parse_flags)
