"""Prediction and feature extraction on video files with a UniFormerV2 checkpoint.

  python main.py --mode predict --checkpoint DIR --input VIDEO|FOLDER|LIST [--config CFG]
      [--topk 5] [--output preds.json] [--labels kinetics400|FILE] [--use_ema]
  python main.py --mode extract --checkpoint DIR --input ... --output feats.npz [--extract_all]

A "video" is a video file or a frame folder (a directory holding image files, e.g.
``img_00001.jpg ...`` as Something-Something is distributed, and no video files); its frames
are the images in natural order (``img_2`` before ``img_10``).

Every video gets the official test views (V temporal clips x S spatial crops: short-side resize
to the crop size, then S uniform crops) of the config, or -- when no config is given -- of the
checkpoint: a training checkpoint carries its full config; a converted one only its model, then
the views come from the matching model-zoo row when one is known, else one centre view.

Probabilities are the softmax of each view averaged over the views (sum / num_views, the official
``TEST.ADD_SOFTMAX`` aggregation normalised), so they sum to 1 per video. Features are the fused
pre-head vector (``model(x, return_features=True)[1]``) averaged over the views; with
``extract_all`` also every block's class token (mean over frames) and the global blocks' video
tokens. Views of all videos are batched ``batch_size`` at a time into one compiled shape (the
last batch is padded), so a run compiles the model once.

An unreadable video is reported (``error``) and skipped; the others are still processed.

Several processes (``jax.distributed``, the same command on every host) split the videos into
contiguous blocks, one per process, each run on that process's devices alone (no collective:
every view is independent). Each writes ``OUTPUT-0000i-of-0000N.ext`` in the format of
``OUTPUT``; process 0 waits for all, then writes ``OUTPUT``'s ``.index.json`` (the parts, their
videos and errors) and, with ``merge``, the parts concatenated into ``OUTPUT`` itself -- equal to
what one process writes.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uniformerv2_jax import labels as labels_lib
from uniformerv2_jax import storage
from uniformerv2_jax.checkpoint import CheckpointMismatchError  # noqa: F401 (public here too)
from uniformerv2_jax.data.pipeline import (
  ReaderConfig,
  SamplingConfig,
  read_test_clips,
  test_view,
)
from uniformerv2_jax.data.sources import (  # noqa: F401 (find_videos, frame_files: public here too)
  find_videos,
  frame_files,
  video_record,
)
from uniformerv2_jax.data.transforms import EvalConfig
from uniformerv2_jax.errors import InputError, InputNotFound, check_can_write
from uniformerv2_jax.evaluate import ViewAccumulator
from uniformerv2_jax.labels import DATASET_LABELS as ZOO_LABELS
from uniformerv2_jax.labels import LABELS_BY_CLASS_COUNT
from uniformerv2_jax.model import ModelConfig, UniFormerV2

ADAPT_MODES = ("resize", "pos_embed")

# Fields that fix the parameter shapes (or the meaning of the head): a config whose model differs
# from the checkpoint's in any of them describes another model.


def notice(message: str) -> None:
  """A one-line notice on stderr (shown under absl and pytest alike)."""
  print(f"note: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- configuration
def load_config(spec: Any) -> dict[str, Any] | None:
  """A config as a plain nested dict: ``None``, a ConfigDict / dict, or ``path.py[:arg]``."""
  if spec is None:
    return None
  if hasattr(spec, "to_dict"):
    return spec.to_dict()
  if isinstance(spec, Mapping):
    return json.loads(json.dumps(spec))  # a deep copy of plain data
  if isinstance(spec, (str, os.PathLike)):
    from uniformerv2_jax.config_files import load_config_file

    return load_config_file(spec).to_dict()
  raise TypeError(f"config must be a ConfigDict, dict or path, got {type(spec).__name__}")


def _get(d: Mapping[str, Any] | None, dotted: str, default: Any = None) -> Any:
  for key in dotted.split("."):
    if not isinstance(d, Mapping) or key not in d:
      return default
    d = d[key]
  return d


@dataclasses.dataclass(frozen=True)
class ViewSettings:
  """How a video becomes model inputs: which frames, which crops, which channel order."""

  sampling: SamplingConfig
  eval_cfg: EvalConfig
  bgr: bool = False  # SSv1/SSv2 recipes feed OpenCV (BGR) frames to the model
  reader: ReaderConfig = ReaderConfig()

  @property
  def num_clips(self) -> int:
    return self.sampling.num_clips

  @property
  def num_crops(self) -> int:
    return self.eval_cfg.num_spatial_crops

  @property
  def num_views(self) -> int:
    return self.num_clips * self.num_crops

  def describe(self) -> str:
    s = self.eval_cfg.crop_size
    return (f"{self.num_clips} clip(s) x {self.num_crops} crop(s) = {self.num_views} view(s) of "
            f"{self.sampling.num_frames} frames at {s}x{s} ({self.sampling.mode} sampling"
            f"{', BGR' if self.bgr else ''})")


@dataclasses.dataclass
class Prepared:
  """A model ready to run and how to feed it: an NNX model, or an exported forward
  (``exported.ExportedModel``) with the model config it was made from."""

  model: UniFormerV2 | None
  views: ViewSettings
  names: list[str] | None
  notices: list[str]
  config: dict[str, Any] | None
  exported: Any = None  # exported.ExportedModel when the checkpoint is a .jax file
  model_config: ModelConfig | None = None

  @property
  def cfg(self) -> ModelConfig:
    return self.model.cfg if self.model is not None else self.model_config


def _prepare_exported(path: str, config: Any, labels: str | None, use_ema: bool) -> Prepared:
  """An exported forward (``.jax``): its own test views and label names; a config or EMA choice
  cannot change what was exported."""
  from uniformerv2_jax import exported as exported_lib
  from uniformerv2_jax.checkpoint import config_from_json

  if config is not None or use_ema:
    raise InputError(f"{path} is an exported model: its test views and weights were fixed at "
                     "export (export again with --config / --use_ema to change them)")
  exp = exported_lib.load_exported(path)
  cfg = config_from_json(exp.metadata["model"])
  names = exp.metadata.get("labels")
  notices: list[str] = []
  if labels:
    names = _resolve_labels(labels, None, {}, cfg.num_classes, "", notices)
  views = exported_lib.views_from_metadata(exp.metadata)
  return Prepared(None, views, names, notices, None, exported=exp, model_config=cfg)


def _zoo_entry(meta: Mapping[str, Any], cfg: ModelConfig):
  """The model-zoo row a converted checkpoint came from, if it says (``zoo``) or its source
  file name is a released checkpoint's; None otherwise."""
  from uniformerv2_jax import zoo

  z = meta.get("zoo")
  name = None
  if isinstance(z, str):
    name = z
  elif isinstance(z, Mapping):
    name = z.get("name") or (f"{z['dataset']}:{z['arg']}" if "dataset" in z and "arg" in z
                             else None)
  entry = None
  if name and ":" in name:
    try:
      entry = zoo.get(*name.split(":", 1))
    except KeyError as e:
      notice(f"checkpoint names zoo row {name!r}, which is unknown ({e}); ignoring it")
  if entry is None and meta.get("converted_from"):
    base = os.path.basename(str(meta["converted_from"]))
    entry = next((e for e in zoo.ZOO if e.checkpoint == base), None)
  if entry is not None and (entry.num_classes != cfg.num_classes
                            or entry.resolution != cfg.input_resolution):
    notice(f"zoo row {entry.name} does not match the checkpoint's model "
           f"({cfg.num_classes} classes at {cfg.input_resolution}); ignoring it")
    entry = None
  return entry


def _default_views(meta: Mapping[str, Any], cfg: ModelConfig, notices: list[str]
                   ) -> tuple[dict[str, Any], str]:
  """Test-view settings for a checkpoint without a training config (as a config-like dict)."""
  entry = _zoo_entry(meta, cfg)
  something = cfg.temporal_downsample  # every temporal-downsampling recipe is SSv1/SSv2
  d = {"sampling": {"mode": "sparse", "sampling_rate": 16, "test_clips": 1, "test_crops": 1,
                    "single_crop_index": 0 if something else 1},
       "aug": {"crop_size": cfg.input_resolution},
       "dataset": {"bgr": something, "labels": "", "root": ""}}
  if entry is not None:
    d["sampling"].update(test_clips=entry.test_clips, test_crops=entry.test_crops)
    d["dataset"]["labels"] = ZOO_LABELS.get(entry.dataset, "")
    where = f"model-zoo row {entry.name} ({entry.views} views)"
  else:
    where = f"defaults (1 clip x 1 crop at the model resolution {cfg.input_resolution})"
  if something:
    where += "; BGR frames and the first crop, as the Something-Something recipes"
  notices.append(f"no --config and the checkpoint carries no training config: test views from "
                 f"{where}")
  return d, (entry.dataset if entry is not None else "")


def _check_model(config_model: Mapping[str, Any], cfg: ModelConfig, checkpoint: str) -> None:
  from uniformerv2_jax import checkpoint as ckpt_lib

  bad = ckpt_lib.model_differences(cfg, config_model, ckpt_lib.ARCH_FIELDS)
  if bad:
    raise CheckpointMismatchError(
      f"checkpoint {checkpoint} does not match the config's model ({'; '.join(bad)}). Pass the "
      "config the checkpoint was trained or converted with, or leave --config out to use the "
      "checkpoint's own settings.")


def _adapt_resolution(model: UniFormerV2, size: int) -> UniFormerV2:
  """The same weights at input resolution ``size``: the positional embedding's patch grid is
  resized bicubically (``mapping.resize_positional_embedding``); nothing else depends on it."""
  from uniformerv2_jax.mapping import resize_positional_embedding
  from uniformerv2_jax.model import create_model
  from uniformerv2_jax.trees import flat_state

  cfg = model.cfg
  if size % cfg.patch_size:
    raise InputError(f"--adapt pos_embed: crop size {size} is not a multiple of the patch size "
                     f"{cfg.patch_size}")
  values = flat_state(model)
  pe = np.asarray(values[("positional_embedding",)])
  values[("positional_embedding",)] = resize_positional_embedding(pe, size // cfg.patch_size)
  return create_model(cfg.replace(input_resolution=size), values=values)


def _resolve_labels(labels: str | None, config: Mapping[str, Any] | None,
                    meta: Mapping[str, Any], num_classes: int, default_spec: str,
                    notices: list[str]) -> list[str] | None:
  if labels:
    path = labels_lib.resolve(labels, _get(config, "dataset.root", "") or "")
    if path is None:
      raise InputNotFound(f"label file {labels!r} not found (a file with one class name per "
                              f"line, or a shipped map: {', '.join(labels_lib.available())})")
    return labels_lib.read_label_file(path, num_classes)
  spec = _get(config, "dataset.labels", "") or default_spec
  if spec:
    path = labels_lib.resolve(spec, _get(config, "dataset.root", "") or "")
    if path is not None:
      names = labels_lib.read_label_file(path)
      if len(names) == num_classes:
        return names
      notices.append(f"label map {path} has {len(names)} names for {num_classes} classes; "
                     "printing class indices (pass --labels FILE)")
      return None
  stored = meta.get("labels")
  if isinstance(stored, list) and len(stored) == num_classes:
    return [str(n) for n in stored]
  guess = LABELS_BY_CLASS_COUNT.get(num_classes)
  if guess and labels_lib.resolve(guess) is not None:
    notices.append(f"labels: {guess} (guessed from {num_classes} classes; --labels overrides)")
    return labels_lib.read_label_file(labels_lib.resolve(guess), num_classes)
  return None


def prepare(checkpoint: str, config: Any = None, *, labels: str | None = None,
            adapt: str = "resize", use_ema: bool = False) -> Prepared:
  """Load ``checkpoint`` (its EMA weights with ``use_ema``) and work out the test views from
  ``config`` (or the checkpoint)."""
  from uniformerv2_jax import checkpoint as ckpt_lib

  if adapt not in ADAPT_MODES:
    raise InputError(f"adapt must be one of {ADAPT_MODES}, got {adapt!r}")
  from uniformerv2_jax.exported import is_exported

  if is_exported(checkpoint):
    return _prepare_exported(str(checkpoint), load_config(config), labels, use_ema)
  meta = ckpt_lib.read_config(checkpoint)
  cfg = ckpt_lib.config_from_json(meta["model"])
  notices: list[str] = []
  config = load_config(config)
  default_labels = ""
  if config is None and isinstance(meta.get("train_config"), Mapping):
    config = dict(meta["train_config"])
    notices.append("test views from the checkpoint's training config")
  if config is None:
    config, dataset = _default_views(meta, cfg, notices)
    default_labels = ZOO_LABELS.get(dataset, "")
  elif isinstance(config.get("model"), Mapping) and config["model"]:
    _check_model(config["model"], cfg, str(checkpoint))

  # Frame count: the config's (the model accepts any T), even with temporal downsampling.
  frames = int(_get(config, "model.num_frames", cfg.num_frames) or cfg.num_frames)
  if frames != cfg.num_frames:
    notices.append(f"the config reads {frames} frames per clip, the checkpoint's model was "
                   f"built for {cfg.num_frames}: using {frames} (no parameter depends on it)")
  if cfg.temporal_downsample and frames % 2:
    notices.append(f"temporal downsampling needs an even frame count: reading {frames + 1} "
                   f"frames instead of {frames}")
    frames += 1

  # Resolution: the views must come out at the model's input resolution.
  res = cfg.input_resolution
  crop = int(_get(config, "aug.crop_size", res) or res)
  precision = _get(config, "precision", "float32") or "float32"
  model = ckpt_lib.load_checkpoint(checkpoint, remat_policy="none", dtype=precision,
                                   use_ema=use_ema)
  if crop != res:
    if adapt == "pos_embed":
      model = _adapt_resolution(model, crop)
      notices.append(f"config crop size {crop} != model resolution {res}: positional embedding "
                     f"interpolated to {crop} (--adapt pos_embed)")
    else:
      notices.append(f"config crop size {crop} != model resolution {res}: test views are made at "
                     f"{res} (short side {res}, {res} crops; --adapt pos_embed runs at {crop})")
      crop = res

  s = config.get("sampling", {}) if isinstance(config.get("sampling"), Mapping) else {}
  a = config.get("aug", {}) if isinstance(config.get("aug"), Mapping) else {}
  sampling = SamplingConfig(num_frames=frames, mode=s.get("mode", "sparse"),
                            sampling_rate=int(s.get("sampling_rate", 16)),
                            num_clips=int(s.get("test_clips", 1)))
  eval_cfg = EvalConfig(crop_size=crop, num_spatial_crops=int(s.get("test_crops", 1)),
                        single_crop_index=int(s.get("single_crop_index", 1)),
                        mean=tuple(a.get("mean", (0.45,) * 3)),
                        std=tuple(a.get("std", (0.225,) * 3)))
  reader = ReaderConfig(seek_threshold=_get(config, "dataset.seek_threshold", 0) or None)
  views = ViewSettings(sampling, eval_cfg, bool(_get(config, "dataset.bgr", False)), reader)
  names = _resolve_labels(labels, config, meta, cfg.num_classes, default_labels, notices)
  for message in notices:
    notice(message)
  return Prepared(model, views, names, notices, config)


# ----------------------------------------------------------------------------- views and model
@functools.partial(jax.jit, static_argnums=(0, 3))
def _forward(graphdef, state, x, extract_all: bool):
  """Per-view probabilities and fused features (+ block / global tokens with ``extract_all``).

  Module level with the graph definition static, so runs with equal model structure and batch
  shape share one compilation."""
  model = nnx.merge(graphdef, state)
  if extract_all:
    logits, inter = model(x, train=False, return_intermediates=True)
    fused = inter["fused"]
    cfg = model.cfg
    blocks = jnp.stack([inter[f"block_{i:02d}"][:, :, 0].mean(axis=1)
                        for i in range(cfg.layers)], axis=1)
    tokens = jnp.stack([inter[f"global_{j:02d}"] for j in range(cfg.n_layers)], axis=1)
    extra = {"block_cls": blocks.astype(jnp.float32), "global_tokens": tokens.astype(jnp.float32)}
  else:
    logits, fused = model(x, train=False, return_features=True)
    extra = {}
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return probs, fused.astype(jnp.float32), extra


@dataclasses.dataclass
class VideoResults:
  """Per-video view averages (rows of failed videos are NaN) and errors (None = fine)."""

  videos: list[str]
  probs: np.ndarray  # [N, K] float64
  features: np.ndarray  # [N, D] float32
  extra: dict[str, np.ndarray]  # block_cls [N, layers, C], global_tokens [N, n_layers, D]
  errors: list[str | None]
  num_views: int


def _error_message(err: BaseException, video: str) -> str:
  from uniformerv2_jax.data.video import DecodeError

  if isinstance(err, DecodeError):  # "kind: path: detail"; the entry already names the video
    # A frame folder's error names the frame file: keep it relative to the folder.
    where = "" if err.path == video else os.path.relpath(err.path, video) + ": "
    return "cannot read video: " + str(err).replace(f"{err.path}: ", where, 1)
  return f"{type(err).__name__}: {err}"


class _ViewBatches:
  """Views in, fixed-shape batches through the model, outputs summed per video.

  One batch is in flight on the device while the next fills on the host; the buffer is
  replaced after each dispatch because the device may still read the old one."""

  def __init__(self, prepared: Prepared, batch_size: int, extract_all: bool,
               acc: ViewAccumulator):
    views = prepared.views
    self.exported = prepared.exported
    if self.exported is None:
      self.graphdef, self.state = nnx.split(prepared.model)
    self.batch_size, self.extract_all, self.acc = batch_size, extract_all, acc
    self.shape = (batch_size, views.sampling.num_frames, views.eval_cfg.crop_size,
                  views.eval_cfg.crop_size, 3)
    self.buf = np.zeros(self.shape, np.float32)
    self.owners: list[tuple[int, int]] = []  # (video, view) of each filled row
    self.in_flight: list[tuple[Any, list[tuple[int, int]]]] = []

  def add(self, view: np.ndarray, video: int, view_index: int) -> None:
    self.buf[len(self.owners)] = view
    self.owners.append((video, view_index))
    if len(self.owners) == self.batch_size:
      self.flush()

  def flush(self) -> None:
    if not self.owners:
      return
    if self.exported is not None:
      logits, features = self.exported.forward(self.buf)
      out = (jax.nn.softmax(logits, axis=-1), features, {})
    else:
      out = _forward(self.graphdef, self.state, self.buf, self.extract_all)  # asynchronous
    if self.in_flight:
      self._collect()  # the previous batch, while this one runs
    self.in_flight.append((out, list(self.owners)))
    self.buf = np.zeros(self.shape, np.float32)
    self.owners.clear()

  def finish(self) -> None:
    self.flush()
    while self.in_flight:
      self._collect()

  def _collect(self) -> None:
    out, who = self.in_flight.pop()
    probs, features, extra = jax.device_get(out)
    n = len(who)
    video, view = (np.array(c, np.int64) for c in zip(*who, strict=True))
    self.acc.add(probs[:n], video, view, np.ones(n, bool), np.zeros(n, np.int64),
                 extra={"features": features[:n], **{k: v[:n] for k, v in extra.items()}})


def _accumulator(cfg: ModelConfig, num_videos: int, num_views: int,
                 extract_all: bool) -> ViewAccumulator:
  shapes = {"features": (cfg.n_dim,)}
  if extract_all:
    shapes.update(block_cls=(cfg.layers, cfg.width), global_tokens=(cfg.n_layers, cfg.n_dim))
  return ViewAccumulator(num_videos, cfg.num_classes, num_views, shapes)


def _feed_views(videos: Sequence[str], views: ViewSettings, batches: _ViewBatches, *,
                read_threads: int, progress: bool) -> list[str | None]:
  """Decode the videos ``2 x read_threads`` ahead in threads and hand every test view of each
  to ``batches``, in video order. Returns each video's error (None = fine)."""
  from tqdm import tqdm

  def read(path: str) -> np.ndarray:
    return read_test_clips(video_record(path, bgr=views.bgr), views.sampling, views.reader,
                           views.num_clips)

  n = len(videos)
  errors: list[str | None] = [None] * n
  bar = tqdm(total=n, desc="videos", unit="video", disable=not progress, file=sys.stderr)
  window = max(1, read_threads) * 2
  with ThreadPoolExecutor(max(1, read_threads)) as pool:
    pending = {i: pool.submit(read, videos[i]) for i in range(min(window, n))}
    for i in range(n):
      if i + window < n:
        pending[i + window] = pool.submit(read, videos[i + window])
      try:
        clips = pending.pop(i).result()
      except Exception as err:  # noqa: BLE001 (one bad video must not stop the others)
        errors[i] = _error_message(err, videos[i])
        bar.write(f"skipped {videos[i]}: {errors[i]}", file=sys.stderr)
      else:
        for j in range(views.num_views):  # anything failing here is a bug: raise
          batches.add(test_view(clips, j, views.eval_cfg), i, j)
        del clips
      bar.update(1)
  bar.close()
  return errors


def _video_results(videos: Sequence[str], acc: ViewAccumulator, errors: list[str | None],
                   num_views: int) -> VideoResults:
  ok = np.array([e is None for e in errors], bool)
  if not acc.seen[ok].all():  # every view of a readable video is scored
    raise RuntimeError(f"view bookkeeping: views counted {acc.seen[ok].sum(1).tolist()}, "
                       f"expected {num_views} each")
  probs, means = acc.means()
  features = means.pop("features").astype(np.float32)
  extra = {k: v.astype(np.float32) for k, v in means.items()}
  return VideoResults(list(videos), probs, features, extra, errors, num_views)


def run_videos(prepared: Prepared, videos: Sequence[str], *, batch_size: int = 8,
               extract_all: bool = False, read_threads: int = 2,
               progress: bool = True) -> VideoResults:
  """Every view of every video through the model, ``batch_size`` views per call, averaged per
  video (a failed video's rows are NaN)."""
  if batch_size < 1:
    raise InputError(f"batch_size must be positive, got {batch_size}")
  views = prepared.views
  if extract_all and prepared.exported is not None:
    raise InputError("--extract_all needs the checkpoint: an exported model computes logits and "
                     "the fused features only")
  acc = _accumulator(prepared.cfg, len(videos), views.num_views, extract_all)
  batches = _ViewBatches(prepared, batch_size, extract_all, acc)
  errors = _feed_views(videos, views, batches, read_threads=read_threads, progress=progress)
  batches.finish()
  return _video_results(videos, acc, errors, views.num_views)


# ----------------------------------------------------------------------------- entry points
def check_output(output: str | None, what: str) -> None:
  """Fails before any work when ``output`` could not be written: an existing directory, a path
  below a file, or a folder without write permission (local paths; object stores are written
  as they are)."""
  if not output or storage.is_url(output):
    return
  path = os.path.abspath(output)
  if os.path.isdir(path):
    raise InputError(f"--output {output}: is a directory; {what} is written to a file")
  check_can_write("--output", str(output))


def check_input(inputs: Any) -> None:
  """A local ``--input`` path must exist before the model is loaded."""
  if isinstance(inputs, str | os.PathLike) and not storage.is_url(inputs) \
      and not os.path.exists(inputs):
    raise InputNotFound(f"--input {inputs}: no such file or directory (give a video file, a "
                        "frame folder, a folder of videos or a list file)")


def _write_atomically(output: str, write) -> None:
  """``write(file)`` into ``output`` so that an interruption leaves the old file or the new one,
  never half of one."""
  from etils import epath

  out = epath.Path(output)
  out.parent.mkdir(parents=True, exist_ok=True)
  if storage.is_url(output):
    with out.open("wb") as f:
      write(f)
    return
  tmp = f"{output}.tmp{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      write(f)
    os.replace(tmp, output)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _summary(prepared: Prepared, results: VideoResults) -> str:
  failed = sum(e is not None for e in results.errors)
  return (f"{len(results.videos) - failed} of {len(results.videos)} videos processed"
          f"{f' ({failed} failed)' if failed else ''}; {prepared.views.describe()}")


def topk_entries(probs: np.ndarray, names: list[str] | None, k: int) -> list[dict[str, Any]]:
  order = np.argsort(-probs, kind="stable")[: max(1, min(k, len(probs)))]
  return [{"label": labels_lib.name_of(names, int(i)), "index": int(i), "prob": float(probs[i])}
          for i in order]


def format_table(entries: Sequence[Mapping[str, Any]]) -> str:
  lines = []
  for e in entries:
    lines.append(str(e["video"]))
    if e["error"]:
      lines.append(f"    ERROR  {e['error']}")
      continue
    for rank, t in enumerate(e["topk"], 1):
      lines.append(f"  {rank:2d}. {t['prob']:.4f}  {t['label']}")
  return "\n".join(lines)


def predict_videos(checkpoint: str, inputs: Any, *, config: Any = None, topk: int = 5,
                   output: str | None = None, labels: str | None = None, batch_size: int = 8,
                   adapt: str = "resize", read_threads: int = 2, progress: bool = True,
                   verbose: bool = True, use_ema: bool = False,
                   merge: bool = False) -> list[dict[str, Any]]:
  """Top-``topk`` classes of every video of ``inputs`` (see :func:`find_videos`).

  Returns (and with ``output`` writes as JSON) one entry per video:
  ``{"video": path, "topk": [{"label", "index", "prob"}, ...], "error": None or message}``.
  ``config``: a ConfigDict / dict / ``path.py[:arg]``, or None for the checkpoint's own
  settings. ``labels``: a shipped map name or a file (one name per line). ``adapt``: what to do
  when the config's crop size differs from the model resolution (``resize`` the views to the
  model resolution, or ``pos_embed``: interpolate the positional embedding to the crop size).
  ``use_ema``: the checkpoint's EMA weights (``checkpoint.NoEmaError`` when it has none).
  Under several processes the entries are this process's videos, ``output`` names its part
  (see the module docstring) and ``merge`` has process 0 write ``output`` whole.
  """
  if topk < 1:
    raise InputError(f"topk must be at least 1, got {topk}")
  share = ProcessShare.current()
  share.check(output, merge)
  check_input(inputs)
  check_output(output, "the predictions JSON")
  prepared = prepare(checkpoint, config, labels=labels, adapt=adapt, use_ema=use_ema)
  videos = share.take(find_videos(inputs, _get(prepared.config, "dataset.root", "") or ""))
  results = run_videos(prepared, videos, batch_size=batch_size, read_threads=read_threads,
                       progress=progress)
  entries = []
  for v, path in enumerate(results.videos):
    err = results.errors[v]
    entries.append({"video": path, "error": err,
                    "topk": [] if err else topk_entries(results.probs[v], prepared.names, topk)})
  target = share.part_path(str(output)) if output else None
  if target:
    _write_predictions(target, entries)
  if verbose:
    print(format_table(entries))
    print(_summary(prepared, results) + (f"; wrote {target}" if target else ""))
  if output and share.count > 1:
    share.finish(str(output), "predict", merge=merge, verbose=verbose)
  return entries


def _write_predictions(output: str, entries: Sequence[Mapping[str, Any]]) -> None:
  _write_atomically(output, lambda f: f.write(json.dumps(entries, indent=1).encode()))


def extract_features(checkpoint: str, inputs: Any, *, config: Any = None,
                     output: str | None = None, extract_all: bool = False, batch_size: int = 8,
                     adapt: str = "resize", read_threads: int = 2, progress: bool = True,
                     verbose: bool = True, use_ema: bool = False,
                     merge: bool = False) -> dict[str, Any]:
  """Per-video features averaged over the test views.

  Returns ``{"features": [N, D] float32, "videos": [N] paths, "errors": [N] None or message,
  "num_views": V x S}`` and with ``extract_all`` also ``block_cls [N, layers, width]`` (each
  backbone block's class token, mean over frames) and ``global_tokens [N, n_layers, D]`` (the
  video token after each global block). Rows of videos that failed are NaN. ``output``:
  ``.npz`` (all of the above; errors as strings, '' = fine) or ``.npy`` (features only, with
  the paths in ``<stem>.videos.txt`` beside it). ``use_ema``, several processes and ``merge``:
  as :func:`predict_videos` (the parts are ``.npz``).
  """
  if output and not str(output).endswith((".npz", ".npy")):
    raise InputError(f"--output {output}: use a .npz (or, for the features only, .npy) file")
  if output and extract_all and str(output).endswith(".npy"):
    raise InputError("--extract_all writes several arrays: use a .npz output")
  share = ProcessShare.current()
  share.check(output, merge)
  check_input(inputs)
  check_output(output, "the features")
  prepared = prepare(checkpoint, config, adapt=adapt, use_ema=use_ema)
  videos = share.take(find_videos(inputs, _get(prepared.config, "dataset.root", "") or ""))
  results = run_videos(prepared, videos, batch_size=batch_size, extract_all=extract_all,
                       read_threads=read_threads, progress=progress)
  out = {"features": results.features, "videos": results.videos, "errors": results.errors,
         "num_views": results.num_views, **results.extra}
  target = share.part_path(str(output)) if output else None
  if target:
    _write_features(target, out)
  if verbose:
    for path, err in zip(results.videos, results.errors, strict=True):
      if err:
        print(f"{path}\n    ERROR  {err}")
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in out.items() if isinstance(v, np.ndarray))
    print(_summary(prepared, results) + f"; {shapes}" + (f"; wrote {target}" if target else ""))
  if output and share.count > 1:
    share.finish(str(output), "extract", merge=merge, verbose=verbose)
  return out


def _write_features(output: str, out: Mapping[str, Any]) -> None:
  arrays = {k: v for k, v in out.items() if isinstance(v, np.ndarray)}
  if output.endswith(".npy"):
    _write_atomically(output, lambda f: np.save(f, arrays["features"]))
    side = output[: -len(".npy")] + ".videos.txt"
    _write_atomically(side, lambda f: f.write("".join(f"{v}\n" for v in out["videos"]).encode()))
    return
  arrays.update(videos=np.asarray(out["videos"], dtype=str),
                errors=np.asarray([e or "" for e in out["errors"]], dtype=str),
                num_views=np.asarray(out["num_views"]))
  _write_atomically(output, lambda f: np.savez(f, **arrays))


# ----------------------------------------------------------------------------- several processes
def index_path(output: str) -> str:
  """Where process 0 lists the parts of ``output``: ``<stem>.index.json`` beside it."""
  return os.path.splitext(output)[0] + ".index.json"


@dataclasses.dataclass(frozen=True)
class ProcessShare:
  """This process's block of the videos when ``count`` processes run the same command.

  Contiguous blocks of the (deterministic) input order, sizes differing by at most one: part
  ``i`` then holds rows ``i`` of the single-process output in order, so merging is concatenation
  and a part's videos read as one range of the input list."""

  index: int
  count: int

  @classmethod
  def current(cls) -> ProcessShare:
    """The share of this process (``jax.process_index`` of ``jax.process_count``)."""
    return cls(jax.process_index(), jax.process_count())

  def check(self, output: str | None, merge: bool) -> None:
    """Fails before any work on settings the parts cannot honour."""
    if merge and not output:
      raise InputError("--merge joins the parts of --output: give --output FILE")
    if self.count > 1 and output and str(output).endswith(".npy"):
      raise InputError(f"--output {output}: {self.count} processes write parts that carry their "
                       "videos and errors; use a .npz output")

  def take(self, videos: Sequence[str]) -> list[str]:
    """This process's contiguous block of ``videos``."""
    n = len(videos)
    return list(videos[self.index * n // self.count:(self.index + 1) * n // self.count])

  def part_path(self, output: str, index: int | None = None) -> str:
    """``OUTPUT-0000i-of-0000N.ext`` (``output`` itself for one process)."""
    if self.count == 1:
      return output
    stem, ext = os.path.splitext(output)
    return f"{stem}-{self.index if index is None else index:05d}-of-{self.count:05d}{ext}"

  def finish(self, output: str, kind: str, *, merge: bool, verbose: bool) -> None:
    """Every process waits here until all parts are written; process 0 then writes the index
    and, with ``merge``, ``output``."""
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"uniformerv2_jax {kind} parts of {output}")
    if self.index != 0:
      return
    parts = [self.part_path(output, i) for i in range(self.count)]
    loaded = [_read_part(p, kind, output) for p in parts]
    index = {"output": output, "merged": merge,
             "num_videos": sum(len(p["videos"]) for p in loaded),
             "num_failed": sum(e is not None for p in loaded for e in p["errors"]),
             "parts": [{"process": i, "file": path, "num_videos": len(p["videos"]),
                        "errors": [{"video": v, "error": e}
                                   for v, e in zip(p["videos"], p["errors"], strict=True) if e]}
                       for i, (path, p) in enumerate(zip(parts, loaded, strict=True))]}
    _write_atomically(index_path(output),
                      lambda f: f.write(json.dumps(index, indent=1).encode()))
    if merge:
      _write_merged(output, kind, loaded)
    if verbose:
      print(f"wrote {index_path(output)}: {index['num_videos']} videos in {self.count} parts "
            f"({index['num_failed']} failed)" + (f"; merged into {output}" if merge else ""))


def _read_part(path: str, kind: str, output: str) -> dict[str, Any]:
  """One part as written: ``videos``, ``errors`` (None = fine) and the payload (``entries``
  of a prediction JSON, ``arrays`` of a features .npz)."""
  from etils import epath

  part = epath.Path(path)
  if not part.exists():
    raise InputError(f"--output {output}: process 0 finds no part {path}; the parts must be "
                     "written to a folder all processes share (NFS, gs://...)")
  if kind == "predict":
    entries = json.loads(part.read_text())
    return {"videos": [e["video"] for e in entries], "errors": [e["error"] for e in entries],
            "entries": entries}
  with np.load(io.BytesIO(part.read_bytes())) as z:
    arrays = {k: z[k] for k in z.files}
  return {"videos": arrays["videos"].tolist(),
          "errors": [e or None for e in arrays["errors"].tolist()], "arrays": arrays}


def _write_merged(output: str, kind: str, parts: Sequence[Mapping[str, Any]]) -> None:
  """The parts, in process order, as one output in the single-process format."""
  if kind == "predict":
    _write_predictions(output, [e for p in parts for e in p["entries"]])
    return
  arrays = {k: (v if k == "num_views" else np.concatenate([p["arrays"][k] for p in parts]))
            for k, v in parts[0]["arrays"].items()}
  _write_atomically(output, lambda f: np.savez(f, **arrays))
