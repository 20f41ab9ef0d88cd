"""The trainer, top to bottom: config -> mesh -> data -> model/init -> optimizer -> resume ->
loop (jitted sharded step, logging, periodic eval and checkpoints, preemption) -> final eval.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from flax import nnx

from uniformerv2_jax import checkpoint as ckpt_lib
from uniformerv2_jax import data as data_lib
from uniformerv2_jax import evaluate as eval_lib
from uniformerv2_jax import labels as labels_lib
from uniformerv2_jax import sharding as shard_lib
from uniformerv2_jax import storage
from uniformerv2_jax.errors import InputError
from uniformerv2_jax.metrics_writer import MetricsWriter
from uniformerv2_jax.model import ModelConfig, create_model
from uniformerv2_jax.optim import OptimConfig, lr_schedule, make_optimizer
from uniformerv2_jax.steps import (
  TrainState,
  init_train_state,
  make_eval_step,
  make_train_step,
)
from uniformerv2_jax.trees import flat_state


# ----------------------------------------------------------------------------- config helpers
def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """The ModelConfig of a run: the config's ``model`` plus the hardware knobs."""
  d = dict(config.model.to_dict())
  d["return_list"] = tuple(d["return_list"])
  d["mlp_dropout"] = tuple(d["mlp_dropout"])
  d.update(scan_layers=config.scan_layers, remat_policy=config.remat_policy,
           dtype=config.precision)
  return ModelConfig(**d)


def frames_to_read(cfg: ModelConfig) -> int:
  return cfg.num_frames  # the model's input frames (temporal downsampling halves inside)


def make_source(config, split: str):
  """The dataset source of ``split`` (train / val / test) for the config's dataset kind; an
  empty one is an error naming where its videos were looked for."""
  source = _source(config, split)
  if len(source) == 0:
    d = config.dataset
    where = (os.path.join(d.root, getattr(d, f"{split}_list"))
             if d.kind in ("video_list", "frame_folders", "demo") else
             f"dataset.kind {d.kind} (root {d.root!r}, {split})")
    raise InputError(f"{where}: no videos for the {split} split")
  return source


def _source(config, split: str):
  d = config.dataset
  num_classes = config.model.num_classes
  if d.kind == "demo":
    data_lib.ensure_demo_dataset(d.root, seed=0)
  if d.kind in ("video_list", "demo"):
    list_file = os.path.join(d.root, getattr(d, f"{split}_list"))
    return data_lib.VideoListSource(list_file, prefix=d.root, num_classes=num_classes, sep=d.sep)
  if d.kind == "frame_folders":
    list_file = os.path.join(d.root, getattr(d, f"{split}_list"))
    return data_lib.FrameFolderListSource(list_file, d.root, num_classes=num_classes,
                                          template=d.frame_template, bgr=d.bgr)
  if d.kind in data_lib.splits.KINDS:  # the official split files (val = test: no val set)
    return data_lib.SplitSource(d.kind, d.root, d.split, split, num_classes=num_classes)
  if d.kind == "tfds":
    return data_lib.TfdsSource(d.tfds_name, split="train" if split == "train" else split,
                               data_dir=d.tfds_data_dir or None, video_key=d.video_key,
                               label_key=d.label_key)
  if d.kind == "arrayrecord":
    return data_lib.ArrayRecordSource(os.path.join(d.root, split))
  raise InputError(f"unknown dataset.kind {d.kind!r} (video_list, frame_folders, ucf101, "
                   "hmdb51, tfds, arrayrecord, demo)")


def sampling_config(config, cfg: ModelConfig) -> data_lib.SamplingConfig:
  return data_lib.SamplingConfig(num_frames=frames_to_read(cfg), mode=config.sampling.mode,
                                 sampling_rate=config.sampling.sampling_rate,
                                 num_clips=config.sampling.test_clips)


def reader_config(config) -> data_lib.ReaderConfig:
  d = config.dataset
  # FFmpeg's own threads lower one clip's latency, but cost 15-25 % more CPU per clip: with
  # worker processes filling the cores, single-threaded decoders give more clips per second.
  threads = d.get("decode_threads", "") or ("NONE" if d.num_workers > 0 else "AUTO")
  return data_lib.ReaderConfig(seek_threshold=d.seek_threshold or None, decode_threads=threads,
                               selective_decode=d.get("selective_decode", True))


def eval_config(config, crops: int | None = None) -> data_lib.EvalConfig:
  a = config.aug
  return data_lib.EvalConfig(crop_size=a.crop_size,
                             num_spatial_crops=crops or config.sampling.test_crops,
                             single_crop_index=config.sampling.single_crop_index,
                             mean=tuple(a.mean), std=tuple(a.std))


def train_aug_config(config) -> data_lib.TrainAugConfig:
  a = config.aug
  return data_lib.TrainAugConfig(crop_size=a.crop_size, rand_augment=a.rand_augment or None,
                                 scale=tuple(a.scale), ratio=tuple(a.ratio),
                                 random_flip=a.random_flip, mean=tuple(a.mean),
                                 std=tuple(a.std))


# ----------------------------------------------------------------------------- initialisation
def initial_model(config, cfg: ModelConfig) -> nnx.Module:
  """Scratch (official init) or ``init_from`` (an Orbax dir from the converter or a run), with
  the head handled as ``init_head`` says (new = DELETE_SPECIAL_HEAD, keep, slice)."""
  if not config.init_from:
    return create_model(cfg, seed=config.seed)
  src_cfg = ckpt_lib.config_from_json(ckpt_lib.read_config(config.init_from)["model"])
  ckpt_lib.check_init_tower(src_cfg, cfg, config.init_from)
  values = flat_state(ckpt_lib.load_checkpoint(config.init_from))
  head = [p for p in values if p[0] == "head"]
  if src_cfg.num_classes != cfg.num_classes or config.init_head == "new":
    if config.init_head == "slice" and src_cfg.num_classes >= cfg.num_classes:
      values[("head", "kernel")] = values[("head", "kernel")][:, : cfg.num_classes]
      values[("head", "bias")] = values[("head", "bias")][: cfg.num_classes]
    elif config.init_head == "keep":
      raise InputError(f"init_from {config.init_from} has a {src_cfg.num_classes}-way head, the "
                       f"config {cfg.num_classes} classes: use init_head=new or slice")
    else:
      for p in head:
        del values[p]
      logging.info("init_from %s: new %d-way head (DELETE_SPECIAL_HEAD)", config.init_from,
                   cfg.num_classes)
  shapes = {p: v.shape for p, v in ckpt_lib.flatten_dict(
    nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: create_model(cfg)),
                               (nnx.Param, nnx.BatchStat)))).items()}
  bad = [f"{'/'.join(p)} {values[p].shape} vs {s}" for p, s in shapes.items()
         if p in values and values[p].shape != s]
  if bad:
    raise InputError(f"init_from {config.init_from} does not fit the model: " + "; ".join(bad))
  missing = [p for p in shapes if p not in values and p[0] != "head"]
  if missing:
    raise InputError(f"init_from {config.init_from} lacks " + ", ".join("/".join(p)
                                                                        for p in missing))
  return create_model(cfg, seed=config.seed, values=values)


# ----------------------------------------------------------------------------- the run
@dataclasses.dataclass
class Run:
  """Everything a train / eval / predict run shares (built once by ``setup``)."""

  config: Any
  cfg: ModelConfig
  mesh: Any
  rules: dict
  graphdef: Any
  other: Any
  state: TrainState
  state_shardings: Any
  tx: Any
  steps_per_epoch: int
  total_steps: int


def _rules(config) -> dict:
  return {k: (tuple(v) if isinstance(v, (list, tuple)) else v)
          for k, v in config.sharding_rules.to_dict().items()}


def optim_config(config, steps_per_epoch: int, total_steps: int, *, frozen: bool) -> OptimConfig:
  """The run's OptimConfig: the config's ``optim`` with the schedule's length in steps."""
  o = config.optim
  return OptimConfig(base_lr=o.base_lr, steps_per_epoch=steps_per_epoch,
                     epochs=total_steps / steps_per_epoch, warmup_epochs=o.warmup_epochs,
                     warmup_start_lr=o.warmup_start_lr, end_lr=o.end_lr,
                     weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps,
                     clip_norm=o.clip_norm or None, frozen_backbone=frozen,
                     layer_decay=o.layer_decay or None, accumulate_steps=o.accumulate_steps)


def setup(config, train_size: int) -> Run:
  cfg = model_config(config)
  mesh = shard_lib.make_mesh(config.mesh.to_dict())
  rules = _rules(config)
  divisor = shard_lib.batch_divisor(mesh, rules)
  clips = config.batch_size * config.aug.num_sample
  if clips % divisor or config.batch_size % jax.process_count():
    raise InputError(f"batch_size {config.batch_size} (x{config.aug.num_sample} samples) must "
                     f"divide over {divisor} batch shards and {jax.process_count()} processes")
  steps_per_epoch = max(train_size // config.batch_size, 1)
  total = config.total_steps if config.total_steps > 0 else \
    max(int(math.ceil(config.epochs * steps_per_epoch)), 1)
  oc = optim_config(config, steps_per_epoch, total, frozen=cfg.frozen)
  model = initial_model(config, cfg)
  tx = make_optimizer(oc, nnx.state(model, nnx.Param), num_layers=cfg.layers)
  graphdef, other, state = init_train_state(model, tx, config.seed,
                                           ema=config.optim.ema_decay > 0)
  shardings = state_shardings(state, mesh, rules)
  state = jax.device_put(state, shardings)
  return Run(config, cfg, mesh, rules, graphdef, other, state, shardings, tx, steps_per_epoch,
             total)


def state_shardings(state: TrainState, mesh, rules):
  """Params, EMA and optimizer moments by the logical rules; the rest replicated."""
  params_sh = shard_lib.tree_shardings(state.params, mesh, rules)
  by_shape = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
    by_shape.setdefault(tuple(np.shape(leaf)), shard_lib.partition_spec(
      shard_lib.leaf_names(path), np.shape(leaf), rules, mesh))

  def opt_leaf(leaf):
    # Adam moments mirror the params; a moment's shape identifies its param's spec (params of
    # the same shape share a logical layout here), scalars are replicated.
    spec = by_shape.get(tuple(np.shape(leaf)))
    return jax.sharding.NamedSharding(mesh, spec if spec is not None and np.ndim(leaf) else
                                      jax.sharding.PartitionSpec())

  rep = shard_lib.replicated(mesh)
  return TrainState(
    step=rep, params=params_sh,
    batch_stats=jax.tree.map(lambda _: rep, state.batch_stats),
    opt_state=jax.tree.map(opt_leaf, state.opt_state), key=rep,
    ema=None if state.ema is None else params_sh)


def compile_train_step(run: Run, batch_shapes: dict[str, jax.ShapeDtypeStruct]):
  step = make_train_step(run.graphdef, run.other, run.tx,
                         label_smoothing=run.config.optim.label_smoothing,
                         ema_decay=run.config.optim.ema_decay, mesh=run.mesh, rules=run.rules)
  batch_sh = {k: shard_lib.batch_sharding(run.mesh, run.rules, len(v.shape))
              for k, v in batch_shapes.items()}
  return jax.jit(step, in_shardings=(run.state_shardings, batch_sh),
                 out_shardings=(run.state_shardings, shard_lib.replicated(run.mesh)),
                 donate_argnums=(0,))


def eval_function(run: Run, use_ema: bool = False):
  """``fn(batch) -> probabilities`` on the mesh (global batch placed from local data)."""
  step = jax.jit(make_eval_step(run.graphdef, run.other, mesh=run.mesh, rules=run.rules),
                 out_shardings=shard_lib.replicated(run.mesh))

  def fn(batch):
    video = shard_lib.global_batch({"video": batch["video"]}, run.mesh, run.rules)["video"]
    params = run.state.ema if use_ema and run.state.ema is not None else run.state.params
    probs, _ = step(params, run.state.batch_stats, video)
    return np.asarray(jax.device_get(probs))

  return fn


def evaluate(run: Run, source, *, workdir: str | None, step: int, names=None,
             prefix: str = "eval", num_clips: int | None = None, crops: int | None = None):
  """Multi-view test of the current params on ``source``; writes results when ``workdir``."""
  c = run.config
  batch = (c.eval_batch_size or c.batch_size) // jax.process_count()
  divisor = shard_lib.batch_divisor(run.mesh, run.rules) // jax.process_count() or 1
  batch = max(divisor, batch - batch % divisor)
  sampling = sampling_config(c, run.cfg)
  ds, layout = data_lib.make_eval_dataset(
    source, batch_size=batch, sampling_cfg=sampling, eval_cfg=eval_config(c, crops),
    reader=reader_config(c), num_clips=num_clips)
  it = data_lib.to_iterator(ds, num_workers=c.dataset.num_workers,
                            read_threads=c.dataset.read_threads)
  acc = eval_lib.run_evaluation(eval_function(run, use_ema=c.optim.ema_decay > 0), it,
                                num_videos=len(source), num_classes=run.cfg.num_classes,
                                views=layout.views)
  summary = acc.summary()
  if workdir and jax.process_index() == 0:
    paths = [str(source[i].get("path", "")) for i in range(len(source))] \
      if hasattr(source, "__getitem__") else None
    eval_lib.write_results(workdir, acc, summary, step=step, names=names, paths=paths,
                           prefix=prefix)
  return summary


class Interruption:
  """SIGTERM (a preemption) and a first Ctrl-C (SIGINT) set a flag. The loop finishes the step
  it is in, saves it when a step completed since the last save, and returns; the signals are
  caught from the start of the run, so a Ctrl-C during the first compile waits for it instead of
  tearing the process down mid-compile. A second Ctrl-C exits at once: an unfinished save is a
  temporary folder that the next run removes, and the checkpoints before it are intact."""

  def __init__(self):
    self.signal: int | None = None
    self._previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handler)
      except ValueError:  # not the main thread: the caller handles signals
        pass

  @property
  def requested(self) -> bool:
    return self.signal is not None

  def _handler(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.signal == signal.SIGINT:
      print("interrupted again: exiting now", file=sys.stderr, flush=True)
      os._exit(128 + signal.SIGINT)
    self.signal = signum
    if signum == signal.SIGINT:
      print("interrupted: finishing the current step and saving it (Ctrl-C again exits now)",
            file=sys.stderr, flush=True)

  def restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def config_json(config) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def train_iterator(run: Run, source) -> Any:
  """This process's share of the infinite, shuffled, augmented training batches (with
  ``get_state``/``set_state`` for exact resume)."""
  c, cfg = run.config, run.cfg
  mixup = None
  if c.aug.mixup_alpha > 0 or c.aug.cutmix_alpha > 0:
    mixup = data_lib.MixupConfig(num_classes=cfg.num_classes, mixup_alpha=c.aug.mixup_alpha,
                                 cutmix_alpha=c.aug.cutmix_alpha,
                                 label_smoothing=c.optim.label_smoothing)
  ds = data_lib.make_train_dataset(
    source, batch_size=c.batch_size // jax.process_count(), seed=c.seed,
    sampling_cfg=sampling_config(c, cfg), aug=train_aug_config(c), reader=reader_config(c),
    num_sample=c.aug.num_sample, mixup=mixup)
  return data_lib.to_iterator(ds, num_workers=c.dataset.num_workers,
                              read_threads=c.dataset.read_threads,
                              prefetch_batches=c.dataset.prefetch_batches)


def resume(run: Run, ckpt: ckpt_lib.TrainCheckpointer, it, workdir: str) -> int:
  """Restore the latest checkpoint's state (on the run's shardings) and input position; the
  step to continue from (0 for a new run)."""
  latest = ckpt.latest_step()
  if latest is None:
    return 0
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          run.state, run.state_shardings)
  run.state, data_state = ckpt.restore(latest, abstract)
  it.set_state(data_state)
  start = int(run.state.step)
  logging.info("resumed from %s step %d", workdir, start)
  return start


def _next_batch(it) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """The model's inputs of the next batch, and its per-example skip counts."""
  b = next(it)
  skipped = b.pop("skipped")
  labels = b.pop("soft_label") if "soft_label" in b else b["label"]
  return {"video": b["video"], "label": labels}, skipped


class TrainLog:
  """Training metrics every ``log_every_steps``: loss etc. from the step, the learning rate,
  clips per second since the last line and the bad samples skipped so far; stops the run on
  non-finite metrics."""

  def __init__(self, run: Run, writer: MetricsWriter, ckpt: ckpt_lib.TrainCheckpointer,
               workdir: str):
    self.writer, self.ckpt, self.workdir = writer, ckpt, workdir
    self.schedule = lr_schedule(optim_config(run.config, run.steps_per_epoch, run.total_steps,
                                             frozen=run.cfg.frozen))
    self.skipped = None
    self.t_last, self.clips_since = time.time(), 0

  def count(self, batch: dict[str, np.ndarray], skipped: np.ndarray) -> None:
    self.skipped = skipped.sum(0) + (0 if self.skipped is None else self.skipped)
    self.clips_since += batch["video"].shape[0] * jax.process_count()

  def write(self, step: int, metrics) -> None:
    m = jax.device_get(metrics)
    if not all(np.isfinite(v) for v in m.values()):
      raise FloatingPointError(
        f"step {step}: non-finite training metrics {m}; stopping. The last good checkpoint "
        f"is kept in {self.workdir}/checkpoints (step {self.ckpt.latest_step()}).")
    now = time.time()
    m.update(lr=float(self.schedule(step - 1)),
             clips_per_s=self.clips_since / max(now - self.t_last, 1e-9),
             skipped=int(self.skipped.sum()))
    self.writer.log_train(step, m)
    self.t_last, self.clips_since = now, 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train (resuming from ``workdir`` when it has checkpoints), evaluating periodically.

  Returns the last eval's summary; with ``interrupted: True`` when SIGINT stopped the run early
  (its last completed step saved)."""
  interrupt = Interruption()
  try:
    return _train(config, workdir, interrupt)
  finally:
    interrupt.restore()


def check_resumable(config: ml_collections.ConfigDict, workdir: str) -> None:
  """A workdir with checkpoints must hold the model the config describes."""
  directory = os.path.join(workdir, "checkpoints")
  if ckpt_lib.checkpoint_steps(directory):
    ckpt_lib.check_model_matches(
      directory, vars(model_config(config)), action="resume",
      hint="Resume with the config the run was started with, or use a new --workdir (with "
           f"--config.init_from={directory} to start from its weights).")


def _train(config: ml_collections.ConfigDict, workdir: str,
           interrupt: Interruption) -> dict[str, Any]:
  check_resumable(config, workdir)
  train_src = make_source(config, "train")
  val_src = make_source(config, "val")
  names = labels_lib.load_labels(config, config.model.num_classes)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  run = setup(config, len(train_src))
  c = config
  ckpt = ckpt_lib.TrainCheckpointer(os.path.join(workdir, "checkpoints"),
                                    keep=c.keep_checkpoints, keep_best=c.keep_best)
  it = train_iterator(run, train_src)
  step = resume(run, ckpt, it, workdir)
  batch, skipped = _next_batch(it)
  train_step = compile_train_step(run, {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                                        for k, v in batch.items()})
  writer = MetricsWriter(workdir, total_steps=run.total_steps, start_step=step,
                         enabled=jax.process_index() == 0)
  log = TrainLog(run, writer, ckpt, workdir)
  eval_every = c.eval_every_steps or run.steps_per_epoch
  ckpt_every = c.checkpoint_every_steps or run.steps_per_epoch
  summary: dict[str, Any] = {}
  saved = step  # the step the workdir holds (resumed from, or none yet)
  while step < run.total_steps and not interrupt.requested:
    data_state = it.get_state()  # position after this batch (what a resume continues from)
    run.state, metrics = train_step(run.state, shard_lib.global_batch(batch, run.mesh,
                                                                      run.rules))
    step += 1
    log.count(batch, skipped)
    done = step >= run.total_steps
    if step % c.log_every_steps == 0 or done:
      log.write(step, metrics)
    if step % eval_every == 0 or done:
      summary = evaluate(run, val_src, workdir=workdir, step=step, names=names)
      writer.log_eval(step, summary)
    if step % ckpt_every == 0 or done or interrupt.requested:
      writer.flush()  # the rows up to this step are durable before the checkpoint commits
      ckpt.save(step, run.state, data_state=data_state, config=_ckpt_config(c, run.cfg, names),
                metrics={"top1": summary["top1"]} if step % eval_every == 0 or done else None,
                force=True)
      saved = step
    if not done and not interrupt.requested:
      batch, skipped = _next_batch(it)
  if interrupt.requested and step > saved:  # the signal came after this step's save check
    # data_state is still the position after this step's batch: the one read since is unused.
    writer.flush()
    ckpt.save(step, run.state, data_state=data_state, config=_ckpt_config(c, run.cfg, names),
              force=True)
  ckpt.close()
  writer.close()
  if step >= run.total_steps and c.get("export_hub", False):
    export_hub(workdir)
  if interrupt.requested and step < run.total_steps:
    what = "SIGTERM" if interrupt.signal == signal.SIGTERM else "interrupted"
    saved = ckpt.latest_step()
    logging.warning("%s at step %d of %d: %s; the same command resumes", what, step,
                    run.total_steps,
                    f"checkpoint of step {saved} kept" if saved is not None else "nothing saved")
    if interrupt.signal == signal.SIGINT:
      return {**summary, "interrupted": True}
  return summary


def export_hub(workdir: str) -> None:
  """The finished run as a model-hub folder, ``WORKDIR/hub`` (``hub.write_hub``: the final
  weights, config, labels and a card with the last eval's top-1); replaced on a rerun."""
  if jax.process_count() > 1 or storage.is_url(workdir):
    # Loading the run back on one process would wait for the others; the folder is local.
    logging.warning("export_hub: written by single-process runs on local workdirs; write it "
                    "with `python convert_torch_weights.py --input %s --output %s --format hub`",
                    workdir, os.path.join(workdir, "hub"))
    return
  from uniformerv2_jax import hub

  out = os.path.join(workdir, "hub")
  hub.write_hub(workdir, out, overwrite=True)
  logging.info("wrote the hub folder %s", out)


def _ckpt_config(config, cfg: ModelConfig, names) -> dict[str, Any]:
  return {"model": ckpt_lib.config_to_json(cfg.replace(scan_layers=True, remat_policy="none",
                                                       dtype="float32")),
          "train_config": config_json(config), "labels": names}


def restore_params(run: Run, directory: str, step: int | None = None,
                   use_ema: bool = False) -> int:
  """Load a checkpoint's params (its EMA params with ``use_ema``) and BatchNorm stats into
  ``run`` (for eval / predict)."""
  model = ckpt_lib.load_checkpoint(directory, step=step, use_ema=use_ema)
  _, params, batch_stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  run.state = run.state.replace(
    params=jax.device_put(params, run.state_shardings.params),
    batch_stats=jax.device_put(batch_stats, run.state_shardings.batch_stats),
    ema=None)
  return step if step is not None else max(ckpt_lib.checkpoint_steps(directory))
