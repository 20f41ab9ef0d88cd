"""Checking a whole run config before anything happens.

``validate(config, mode)`` runs before a workdir is created, a dataset read or a model built, and
raises one ``InputError`` that lists every problem as ``key = value: what is allowed``. It checks
choices, ranges and the relations between keys (the crop over the patch size, the model's own
invariants) and the local paths a run reads. ``validate_on_devices`` then checks the mesh and
the batch sizes against the devices, once ``jax.distributed`` has been initialised (asking for
the devices earlier would fix a single-host backend). What depends on the files themselves
(list-file lines, checkpoint contents) is checked where they are read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from uniformerv2_jax import storage
from uniformerv2_jax.errors import InputError

DATASET_KINDS = ("video_list", "frame_folders", "ucf101", "hmdb51", "tfds", "arrayrecord",
                 "demo")
PRECISIONS = ("float32", "bfloat16")
INIT_HEADS = ("new", "keep", "slice")
SAMPLING_MODES = ("sparse", "dense")
DECODE_THREADS = ("", "AUTO", "FRAME", "SLICE", "NONE")
# Kinds whose data are files under dataset.root (tfds finds its own; demo generates it).
_ROOTED_KINDS = ("video_list", "frame_folders", "ucf101", "hmdb51", "arrayrecord")


def _get(config: Any, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    node = node[part] if isinstance(node, dict) else getattr(node, part)
  return node


class _Problems:
  """Collects ``key = value: expected`` lines."""

  def __init__(self, config: Any):
    self.config, self.lines = config, []

  def has(self, dotted: str) -> bool:
    try:
      _get(self.config, dotted)
      return True
    except (AttributeError, KeyError):
      return False

  def check(self, dotted: str, ok: Callable[[Any], bool], expected: str) -> None:
    if not self.has(dotted):
      return
    value = _get(self.config, dotted)
    try:
      good = ok(value)
    except TypeError:
      good = False
    if not good:
      self.lines.append(f"{dotted} = {value!r}: {expected}")

  def add(self, line: str) -> None:
    self.lines.append(line)


def _number(lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False,
            integer: bool = False) -> Callable[[Any], bool]:
  def ok(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, int | float):
      return False
    if integer and not isinstance(v, int):
      return False
    if not math.isfinite(v):
      return False
    above = v > lo if lo_open else v >= lo
    below = v < hi if hi_open else v <= hi
    return above and below
  return ok


def _schedule(p: _Problems) -> None:
  p.check("batch_size", _number(1, integer=True), "a positive integer (global clips per step)")
  p.check("eval_batch_size", _number(0, integer=True), "0 (= batch_size) or a positive integer")
  p.check("total_steps", _number(0, integer=True), "0 (use epochs) or a positive step count")
  p.check("epochs", _number(0, lo_open=True), "a positive number of epochs")
  for key in ("log_every_steps", "keep_checkpoints"):
    p.check(key, _number(1, integer=True), "a positive integer")
  for key in ("eval_every_steps", "checkpoint_every_steps"):
    p.check(key, _number(0, integer=True), "0 (once per epoch) or a positive step count")
  p.check("seed", _number(0, integer=True), "a non-negative integer")


def _optim(p: _Problems) -> None:
  for key in ("base_lr", "warmup_start_lr", "end_lr", "weight_decay", "clip_norm",
              "warmup_epochs"):
    p.check(f"optim.{key}", _number(0), "a non-negative number")
  for key in ("b1", "b2", "ema_decay"):
    p.check(f"optim.{key}", _number(0, 1, hi_open=True), "a number in [0, 1)")
  p.check("optim.eps", _number(0, lo_open=True), "a positive number")
  p.check("optim.layer_decay", _number(0, 1), "0 (off) or a number in (0, 1]")
  p.check("optim.label_smoothing", _number(0, 1, hi_open=True), "a number in [0, 1)")
  p.check("optim.accumulate_steps", _number(1, integer=True), "a positive integer")


def _data(p: _Problems, mode: str) -> None:
  c = p.config
  p.check("dataset.kind", lambda v: v in DATASET_KINDS, f"one of {', '.join(DATASET_KINDS)}")
  p.check("dataset.split", lambda v: v in (1, 2, 3), "1, 2 or 3 (the official splits)")
  p.check("dataset.num_workers", _number(0, integer=True), "0 (threads) or a worker count")
  p.check("dataset.prefetch_batches", _number(0, integer=True), "a non-negative integer")
  p.check("dataset.read_threads", _number(1, integer=True), "a positive integer")
  p.check("dataset.decode_threads", lambda v: v in DECODE_THREADS,
          "'' (automatic), AUTO, FRAME, SLICE or NONE")
  p.check("sampling.mode", lambda v: v in SAMPLING_MODES, f"one of {', '.join(SAMPLING_MODES)}")
  p.check("sampling.sampling_rate", _number(1, integer=True), "a positive integer")
  p.check("sampling.test_clips", _number(1, integer=True), "a positive integer")
  p.check("sampling.test_crops", lambda v: v in (1, 3), "1 or 3 (the official crops)")
  p.check("aug.crop_size", _number(1, integer=True), "a positive integer")
  p.check("aug.num_sample", _number(1, integer=True), "a positive integer")
  p.check("aug.mixup_alpha", _number(0), "a non-negative number")
  p.check("aug.cutmix_alpha", _number(0), "a non-negative number")
  p.check("aug.scale", lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1,
          "(low, high) with 0 < low <= high <= 1")
  p.check("aug.ratio", lambda v: len(v) == 2 and 0 < v[0] <= v[1], "(low, high), 0 < low <= high")
  if mode in ("train", "eval") and p.has("dataset.kind") and c.dataset.kind in _ROOTED_KINDS:
    root = c.dataset.root
    if not root:
      p.add(f"dataset.root = '': dataset.kind {c.dataset.kind} reads files under a root folder; "
            "set --config.dataset.root=DIR")
    elif not storage.is_url(root) and not os.path.isdir(root):
      p.add(f"dataset.root = {root!r}: no such directory")


def _hardware(p: _Problems) -> None:
  c = p.config
  p.check("precision", lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}")
  for axis in ("data", "fsdp", "tensor"):
    p.check(f"mesh.{axis}", lambda v: isinstance(v, int) and (v == -1 or v >= 1),
            "a positive size, or -1 (the remaining devices)")
  if p.has("mesh") and sum(_get(c, f"mesh.{a}") == -1 for a in ("data", "fsdp", "tensor")) > 1:
    p.add(f"mesh = {dict(c.mesh)}: at most one axis may be -1")


def _batch_over_devices(p: _Problems) -> None:
  import jax

  c = p.config
  sizes = {a: _get(c, f"mesh.{a}") for a in ("data", "fsdp", "tensor")}
  known = math.prod(s for s in sizes.values() if s != -1)
  n = jax.device_count()
  if n % known:
    p.add(f"mesh = {sizes}: does not divide the {n} devices")
    return
  sizes = {a: (n // known if s == -1 else s) for a, s in sizes.items()}
  if math.prod(sizes.values()) != n:
    p.add(f"mesh = {sizes}: needs {math.prod(sizes.values())} devices, {n} available")
    return
  batch_axes = c.sharding_rules.batch if p.has("sharding_rules.batch") else ("data", "fsdp")
  batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
  shards = math.prod(sizes[a] for a in batch_axes if a in sizes)
  clips = c.batch_size * c.aug.num_sample
  for key, batch in (("batch_size", clips), ("eval_batch_size", c.eval_batch_size or clips)):
    if batch % shards or batch % jax.process_count():
      p.add(f"{key} = {_get(c, key)}: must divide over the {shards} batch shards of mesh "
            f"{sizes} and {jax.process_count()} processes"
            + (f" (x{c.aug.num_sample} samples)" if key == "batch_size" and
               c.aug.num_sample > 1 else ""))


def _model(p: _Problems) -> None:
  from uniformerv2_jax.model import ModelConfig

  c = p.config
  if not p.has("model") or not len(c.model):
    return
  try:
    d = dict(c.model.to_dict()) if hasattr(c.model, "to_dict") else dict(c.model)
    cfg = ModelConfig(**{**d, "remat_policy": getattr(c, "remat_policy", "none")})
  except InputError as e:
    p.add(f"model: {str(e).removeprefix('Invalid UniFormerV2 config: ')}")
    return
  except TypeError as e:
    p.add(f"model: {e}")
    return
  for key in ("num_classes", "num_frames", "input_resolution", "patch_size", "width", "layers",
              "heads"):
    p.check(f"model.{key}", _number(1, integer=True), "a positive integer")
  if p.has("aug.crop_size") and c.aug.crop_size % cfg.patch_size:
    p.add(f"aug.crop_size = {c.aug.crop_size}: must be a multiple of model.patch_size "
          f"{cfg.patch_size}")
  p.check("model.bn_sync", lambda v: isinstance(v, bool),
          "True (BatchNorm statistics over the global batch) or False (per device)")
  p.check("init_head", lambda v: v in INIT_HEADS, f"one of {', '.join(INIT_HEADS)}")
  init = getattr(c, "init_from", "")
  if init and not storage.is_url(init) and not os.path.exists(init):
    p.add(f"init_from = {init!r}: no such checkpoint directory")


def problems(config: Any, mode: str = "train") -> list[str]:
  """Every problem of ``config`` for ``mode`` (train, eval, forward, plan, predict, extract)."""
  p = _Problems(config)
  _schedule(p)
  _optim(p)
  _data(p, mode)
  _model(p)
  _hardware(p)
  return p.lines


def validate(config: Any, mode: str = "train") -> None:
  """Raises InputError naming every bad key of ``config`` (see :func:`problems`). Needs no
  devices: it runs before ``jax.distributed`` is initialised."""
  lines = problems(config, mode)
  if lines:
    raise InputError("config: " + "; ".join(lines))


def validate_on_devices(config: Any) -> None:
  """The mesh and batch sizes against the devices of this run (after ``jax.distributed``):
  raises InputError naming the key."""
  p = _Problems(config)
  _batch_over_devices(p)
  if p.lines:
    raise InputError("config: " + "; ".join(p.lines))
