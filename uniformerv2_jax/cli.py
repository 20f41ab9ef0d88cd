"""The command line: train, evaluate and run UniFormerV2 models.

Installed, the package has one command with a subcommand per task (``python -m uniformerv2_jax``
is the same); in a checkout ``python main.py --mode MODE`` runs the same program:

  uniformerv2-jax train --config demo --workdir demo_run              # train the demo
  uniformerv2-jax train --config k400:b16_8x224 --workdir gs://bucket/run \
      --config.dataset.root=/data/k400 --config.init_from=clip_b16_orbax   # a zoo recipe
  uniformerv2-jax eval --config k400:b16_8x224 --checkpoint DIR
  uniformerv2-jax forward --config k400:b16_8x224                     # random clip, top-5
  uniformerv2-jax predict --checkpoint DIR --input video.mp4 [--output preds.json]
  uniformerv2-jax extract --checkpoint DIR --input videos/ --output feats.npz
  uniformerv2-jax export --checkpoint DIR --output model.jax|model.onnx   # for serving
  uniformerv2-jax plan --config k400:l14_8x224_k710 --device_memory_gb 80
  uniformerv2-jax convert --input k400_b16.pyth --output ckpt/k400_b16 --config k400:b16_8x224
  uniformerv2-jax prepare --list train.csv --prefix /data --out shards/train
  uniformerv2-jax demo-data --out DIR
  uniformerv2-jax recipes                                             # the recipe names

``--config`` takes a recipe shipped with the package by name (``k400:b16_8x224``, ``demo``) or
a config file (``configs/k400.py:b16_8x224``, ``my_config.py``). Config keys are overridden with
``--config.key=value``; an unknown key is an error, and the whole config is checked before
anything is written.

Exit status: 0 done; 2 a usage or input error (one line on stderr naming the flag, key, file or
value; ``--traceback`` shows where it came from); 3 predict/extract finished but some inputs
failed (listed in the output); 130 interrupted (Ctrl-C: training saves the last completed step
first; a second Ctrl-C exits at once). Any other status is a bug: its traceback is printed.

Output: the progress bar, evals, warnings and a final summary. Log lines of the libraries below
(Orbax, JAX, grain) appear from WARNING up; ``--verbosity=0`` (``-v 0``) shows their INFO lines
too, ``-v 1`` adds debug lines.
"""

from __future__ import annotations

import json
import logging as pylogging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from uniformerv2_jax import host_memory, storage
from uniformerv2_jax.config_files import recipe_names, resolve_recipe
from uniformerv2_jax.errors import InputError, check_can_write, run_main

EXIT_USAGE = 2  # a usage or input error
EXIT_PARTIAL = 3  # predict / extract finished, some inputs failed
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), the shells' convention

MODES = ("train", "eval", "forward", "predict", "extract", "export", "plan")

config_flags.DEFINE_config_file("config", None, "A recipe name (k400:b16_8x224, demo; see "
                                "`uniformerv2-jax recipes`) or a config file path[:argument].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (local or gs://): checkpoints, logs.")
flags.DEFINE_enum("mode", "train", MODES, "What to do.")
flags.DEFINE_string("checkpoint", None, "Orbax checkpoint dir (eval/predict/extract/forward/"
                    "export); predict also takes an exported .jax / .onnx file.")
flags.DEFINE_integer("topk", 5, "Classes to print per video (forward/predict).", lower_bound=1)
flags.DEFINE_string("input", None, "predict/extract: a video file, a folder of frame images (one "
                    "video), a folder of videos / frame folders, or a list file.")
flags.DEFINE_string("output", None, "predict: JSON file; extract: .npz (or .npy) file; export: "
                    ".jax or .onnx file.")
flags.DEFINE_string("labels", None, "Class names: a shipped map (kinetics400, ...) or a file.")
flags.DEFINE_integer("batch_size", 8, "predict/extract: views per forward call.", lower_bound=1)
flags.DEFINE_bool("merge", False, "predict/extract on several processes: process 0 also joins "
                  "the parts OUTPUT-0000i-of-0000N into --output (on a folder all share).")
flags.DEFINE_bool("extract_all", False, "extract: also per-block class tokens and global tokens.")
flags.DEFINE_bool("use_ema", False, "eval/predict/extract: the checkpoint's EMA weights (written "
                  "by runs with --config.optim.ema_decay > 0) instead of the raw parameters.")
flags.DEFINE_float("device_memory_gb", None, "plan: memory per device to fit (default: TPU HBM "
                   "/ GPU bytes_limit / none on CPU).", lower_bound=0.0)
flags.DEFINE_string("topology", None, "plan: TPU topology for AOT planning, e.g. v5e:2x2 "
                    "(needs libtpu).")
flags.DEFINE_list("eval_splits", None, "eval (ucf101 / hmdb51): evaluate on these official "
                  "splits, e.g. 1,2,3, and print their mean; {split} in --checkpoint is replaced "
                  "by each split's number (one fine-tuned run per split).")
flags.DEFINE_enum("adapt", "resize", ["resize", "pos_embed"], "Crop size != model resolution: "
                  "resize the views, or interpolate the positional embedding.")
flags.DEFINE_bool("traceback", False, "On an input error, show the traceback too (for "
                  "reporting a problem), not only the one-line message.")
FLAGS = flags.FLAGS

# Where the project's own log lines come from: they stay visible at INFO when libraries are quiet.
_PROJECT_SOURCES = (str(Path(__file__).resolve().parent),)


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


# ----------------------------------------------------------------------------- arguments
def _with_recipes(argv: Sequence[str]) -> list[str]:
  out = list(argv)
  for i, a in enumerate(out):
    if a.startswith("--config="):
      out[i] = "--config=" + resolve_recipe(a[len("--config="):])
    elif a == "--config" and i + 1 < len(out):
      out[i + 1] = resolve_recipe(out[i + 1])
  return out


def _fail(message: str) -> None:
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(EXIT_USAGE)


def _user_error_names() -> set[str]:
  found, todo = set(), [InputError]
  while todo:
    cls = todo.pop()
    found.add(cls.__name__)
    todo.extend(cls.__subclasses__())
  return found | {"FileNotFoundError"}


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every mistake on one line: an override of a key the (locked)
  config lacks, a config file or recipe argument that does not exist, a bad flag value."""
  argv = _with_recipes(argv)
  for i, a in enumerate(argv):  # a missing file would surface only later, as a traceback
    spec = a[len("--config="):] if a.startswith("--config=") else (
      argv[i + 1] if a == "--config" and i + 1 < len(argv) else None)
    if spec is not None and not os.path.isfile(spec.split(":", 1)[0]):
      _fail(f"--config {spec}: no such config file, and no recipe of that name (the recipes: "
            "uniformerv2-jax recipes)")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if "Error whilst parsing config file" in text:
      # ml_collections passes the config file's exception on as text: its last line.
      kind, _, message = text.strip().splitlines()[-1].partition(": ")
      if kind.rsplit(".", 1)[-1] not in _user_error_names():
        raise  # a bug in the config file: its traceback
      _fail(f"--config: {message}")
    _fail(text)
  except (AttributeError, KeyError) as e:
    key = str(e).strip("\"'")
    given = [a for a in argv[1:]
             if a.startswith("--config.") and key in a.split("=", 1)[0].split(".")[1:]]
    if not given:  # not an override: a bug in a config file, keep its traceback
      raise
    _fail(f"{given[0]}: the config has no key {key!r} (unknown keys are errors; the keys are "
          "in uniformerv2_jax/configs/common.py)")
  except InputError as e:
    _fail(f"--config: {e}")
  return []  # not reached


# ----------------------------------------------------------------------------- modes
def forward(config) -> None:
  """One eval forward of the config's model on a random clip (real weights with --checkpoint)."""
  import jax
  import numpy as np
  from flax import nnx

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


def predict_or_extract(config) -> int:
  """``predict`` (top-k table / JSON) or ``extract`` (features to .npz); the exit status."""
  from uniformerv2_jax import predict

  if not FLAGS.checkpoint or not FLAGS.input:
    raise InputError(f"--mode {FLAGS.mode} needs --checkpoint DIR and --input PATH")
  import jax

  from uniformerv2_jax import sharding

  # Several processes (one command per host) each take a block of the videos. A caller that
  # runs predict and extract in one interpreter has set this up already.
  if not jax.distributed.is_initialized():
    sharding.maybe_initialize_distributed()
  common = dict(config=config, batch_size=FLAGS.batch_size, adapt=FLAGS.adapt,
                use_ema=FLAGS.use_ema, merge=FLAGS.merge)
  if FLAGS.mode == "predict":
    entries = predict.predict_videos(FLAGS.checkpoint, FLAGS.input, topk=FLAGS.topk,
                                     output=FLAGS.output, labels=FLAGS.labels, **common)
    errors = [e["error"] for e in entries]
  else:
    if not FLAGS.output:
      raise InputError("--mode extract needs --output FILE.npz")
    out = predict.extract_features(FLAGS.checkpoint, FLAGS.input, output=FLAGS.output,
                                   extract_all=FLAGS.extract_all, **common)
    errors = out["errors"]
  failed = sum(e is not None for e in errors)
  if failed:
    print(f"{failed} of {len(errors)} inputs failed (exit status {EXIT_PARTIAL})",
          file=sys.stderr)
    return EXIT_PARTIAL
  return 0


def export_forward(config) -> int:
  """``export``: the eval forward of --checkpoint as a .jax file."""
  from uniformerv2_jax import exported

  if not FLAGS.checkpoint or not FLAGS.output:
    raise InputError("--mode export needs --checkpoint DIR and --output FILE.jax|FILE.onnx")
  if exported.is_exported(FLAGS.checkpoint):
    raise InputError(f"--checkpoint {FLAGS.checkpoint}: already an exported model; export "
                     "from the checkpoint directory")
  t0 = time.perf_counter()
  meta = exported.export(FLAGS.checkpoint, FLAGS.output, config=config, use_ema=FLAGS.use_ema,
                         labels=FLAGS.labels)
  size = os.path.getsize(FLAGS.output) if os.path.exists(FLAGS.output) else 0
  print(f"wrote {FLAGS.output}: {size / 2**20:.1f} MiB, input {meta['input']['shape']} float32, "
        f"platforms {', '.join(meta['platforms'])}, {time.perf_counter() - t0:.1f} s")
  return 0


def evaluate(config, directory: str, run=None) -> dict:
  """Multi-view test of the checkpoint in ``directory`` on the config's test set (``run``: a
  ``train.setup`` of the same config to reuse, its compiled steps included)."""
  from uniformerv2_jax import checkpoint, train

  checkpoint.check_model_matches(
    directory, vars(train.model_config(config)), action="evaluate",
    hint="Evaluate with the config the checkpoint was trained or converted with.")
  test_src = train.make_source(config, "test")
  run = run or train.setup(config, train_size=1)
  step = train.restore_params(run, directory, use_ema=FLAGS.use_ema)
  names = train.labels_lib.load_labels(config, config.model.num_classes)
  return train.evaluate(run, test_src, workdir=FLAGS.workdir or directory, step=step,
                        names=names, prefix="test")


def evaluate_splits(config, directory: str, splits: list[str]) -> None:
  """The usual UCF-101 / HMDB-51 figure: each split's run on its own test list, then the mean.
  Prints one JSON line per split and a final line with the means."""
  from uniformerv2_jax.data.splits import KINDS

  if config.dataset.kind not in KINDS:
    raise InputError(f"--eval_splits needs dataset.kind ucf101 or hmdb51, not "
                     f"{config.dataset.kind!r}")
  try:
    numbers = [int(s) for s in splits]
  except ValueError:
    raise InputError(f"--eval_splits {','.join(splits)}: expected split numbers, e.g. "
                     "1,2,3") from None
  if any(n not in (1, 2, 3) for n in numbers) or len(set(numbers)) != len(numbers):
    raise InputError(f"--eval_splits {','.join(splits)}: distinct splits among 1, 2, 3")
  if "{split}" not in directory:
    logging.warning("--checkpoint has no {split}: the same model is evaluated on every split")
  dirs = {n: directory.replace("{split}", str(n)) for n in numbers}
  missing = [d for d in dirs.values() if not storage.is_url(d) and not os.path.isdir(d)]
  if missing:
    raise InputError(f"checkpoint directory not found: {', '.join(missing)}")
  from uniformerv2_jax import train

  run = train.setup(config, train_size=1)  # one model and one compile for every split
  results = {}
  for n, d in dirs.items():
    config.dataset.split = n
    results[n] = evaluate(config, d, run)
    print(json.dumps({"split": n, "checkpoint": d, **results[n]}), flush=True)
  mean = {k: sum(r[k] for r in results.values()) / len(results) for k in ("top1", "top5")}
  print(json.dumps({"splits": numbers, "mean_top1": mean["top1"], "mean_top5": mean["top5"]}))


def check_workdir(workdir: str | None) -> None:
  """A training workdir is a folder this user can create or write in (object stores are
  written as they are)."""
  if not workdir:
    raise InputError("--mode train needs --workdir DIR (checkpoints and logs go there)")
  if storage.is_url(workdir):
    return
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise InputError(f"--workdir {workdir}: is a file, not a folder")
  check_can_write("--workdir", workdir)


def run_mode(config) -> int:
  """The work of ``--mode``, after the config and flags were checked; the exit status."""
  from uniformerv2_jax import config_check

  mode = FLAGS.mode
  if mode in ("predict", "extract", "export"):
    if config is not None:
      config_check.validate(config, mode)
    return export_forward(config) if mode == "export" else predict_or_extract(config)
  if config is None:
    raise InputError(f"--mode {mode} needs --config (a recipe such as demo or k400:b16_8x224, "
                     "or a config file)")
  if mode == "train":
    check_workdir(FLAGS.workdir)
  if mode == "eval" and not (FLAGS.checkpoint or FLAGS.workdir):
    raise InputError("--mode eval needs --checkpoint DIR (or --workdir of a run)")
  config_check.validate(config, mode)
  from uniformerv2_jax import sharding

  sharding.maybe_initialize_distributed()
  if mode in ("train", "eval"):
    config_check.validate_on_devices(config)
  if mode == "forward":
    forward(config)
  elif mode == "plan":
    from uniformerv2_jax import plan

    plan.print_memory_plan(config, device_memory_gb=FLAGS.device_memory_gb,
                           topology=FLAGS.topology)
  elif mode == "train":
    from uniformerv2_jax import train

    summary = train.train_and_evaluate(config, FLAGS.workdir)
    if summary.get("interrupted"):
      return EXIT_INTERRUPTED
    print(json.dumps({"final_eval": summary}))
  else:
    directory = FLAGS.checkpoint or FLAGS.workdir
    if FLAGS.eval_splits:
      evaluate_splits(config, directory, FLAGS.eval_splits)
    else:
      print(json.dumps(evaluate(config, directory)))
  return 0


def _exit_at_once(signum, frame) -> None:
  del signum, frame
  print("interrupted", file=sys.stderr, flush=True)
  # No interpreter teardown: XLA's compile threads may still run, and unwinding past them
  # crashes. Nothing here holds unsaved work (training installs its own handler).
  os._exit(EXIT_INTERRUPTED)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  signal.signal(signal.SIGINT, _exit_at_once)
  quiet_library_logs()
  logging.debug("host malloc: GLIBC_TUNABLES=%r (%s=0 keeps the system default)",
                os.environ.get("GLIBC_TUNABLES", ""), host_memory.OPT_OUT)
  try:
    status = run_mode(FLAGS.config)
  except (InputError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
          PermissionError) as e:
    if FLAGS.traceback or (isinstance(e, OSError) and not isinstance(e, InputError)
                           and e.filename is None):
      raise  # an OSError not about a user's file is a bug: keep where it came from
    _fail(str(e))
  sys.stdout.flush()
  sys.exit(status)


def run_program(argv: Sequence[str] | None = None) -> None:
  """``python main.py ...``: the program with ``--mode``."""
  host_memory.reexec_with_malloc_tuning()  # huge-page malloc: ~20-30 % faster CPU steps
  app.run(main, argv=list(sys.argv if argv is None else argv), flags_parser=parse_flags)


# ----------------------------------------------------------------------------- the command
def _other_commands() -> dict[str, tuple[str, str]]:
  """Subcommands that are programs of their own: name -> (module, what it does)."""
  return {
    "convert": ("uniformerv2_jax.convert_cli", "convert weights to / from PyTorch formats"),
    "prepare": ("uniformerv2_jax.data.prepare", "write a dataset as ArrayRecord shards"),
    "demo-data": ("uniformerv2_jax.data.demo_dataset", "generate the synthetic demo dataset"),
  }


def usage() -> str:
  lines = ["usage: uniformerv2-jax COMMAND [options]   (COMMAND --help for its options)", ""]
  what = {"train": "train (resumes a workdir that has checkpoints)",
          "eval": "multi-view test of a checkpoint", "forward": "one forward on a random clip",
          "predict": "top-k classes of videos", "extract": "features of videos to .npz",
          "export": "the eval forward as a .jax (StableHLO) or .onnx file",
          "plan": "memory plan of a config (ahead-of-time compile)"}
  lines += [f"  {m:10s} {what[m]}" for m in MODES]
  lines += [f"  {c:10s} {d}" for c, (_, d) in _other_commands().items()]
  lines += [f"  {'recipes':10s} list the recipe names --config accepts", "",
            "Exit status: 0 done, 2 usage or input error, 3 some inputs failed, 130 interrupted."]
  return "\n".join(lines)


def command(argv: Sequence[str] | None = None) -> None:
  """The ``uniformerv2-jax`` console command (and ``python -m uniformerv2_jax``)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(usage())
    sys.exit(0 if argv else EXIT_USAGE)
  name, rest = argv[0], argv[1:]
  if name in MODES:
    if any(a == "--mode" or a.startswith("--mode=") for a in rest):
      _fail(f"`uniformerv2-jax {name}` sets the mode; drop --mode")
    run_program(["uniformerv2-jax", f"--mode={name}", *rest])
  elif name == "recipes":
    print("\n".join(recipe_names()))
  elif name in _other_commands():
    import importlib

    module = importlib.import_module(_other_commands()[name][0])
    sys.argv[0] = f"uniformerv2-jax {name}"
    run_main(lambda: module.main(rest))
  else:
    _fail(f"unknown command {name!r}; one of: {', '.join([*MODES, *_other_commands(), 'recipes'])}"
          " (uniformerv2-jax --help)")
