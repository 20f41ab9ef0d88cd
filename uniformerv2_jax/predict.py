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
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uniformerv2_jax import labels as labels_lib
from uniformerv2_jax.data import splits
from uniformerv2_jax.data.pipeline import ReaderConfig, SamplingConfig
from uniformerv2_jax.data.sources import read_clip
from uniformerv2_jax.data.transforms import EvalConfig, eval_view
from uniformerv2_jax.model import ModelConfig, UniFormerV2

VIDEO_EXTENSIONS = frozenset({
  ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp",
  ".ogv", ".ts", ".mts", ".gif",
})
LIST_EXTENSIONS = frozenset({".txt", ".csv", ".lst", ".list"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
ADAPT_MODES = ("resize", "pos_embed")

# Fields that fix the parameter shapes (or the meaning of the head): a config whose model differs
# from the checkpoint's in any of them describes another model.
ARCH_FIELDS = ("num_classes", "patch_size", "width", "layers", "heads", "temporal_kernel",
               "temporal_downsample", "no_lmhra", "double_lmhra", "dw_reduction", "return_list",
               "n_layers", "n_dim", "n_head", "mlp_factor", "frozen")

# Label maps shipped with the package, by zoo dataset (configs/common.py DATASETS agrees).
ZOO_LABELS = {"k400": "kinetics400", "k600": "kinetics600", "k700": "kinetics700",
              "k710": "kinetics710", "mit": "mit", "sthv2": "sthv2"}
# A converted checkpoint without any dataset information: the class count is a strong hint
# (174 is SSv1 or SSv2 and 200 ActivityNet or HACS: no guess there).
LABELS_BY_CLASS_COUNT = {400: "kinetics400", 600: "kinetics600", 700: "kinetics700",
                         710: "kinetics710", 339: "mit"}


class CheckpointMismatchError(ValueError):
  """The config describes a different model than the checkpoint holds."""


def notice(message: str) -> None:
  """A one-line notice on stderr (shown under absl and pytest alike)."""
  print(f"note: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- inputs
def _is_list_file(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in LIST_EXTENSIONS


def _label_free_paths(line: str) -> list[str]:
  """The paths a list line may name once its trailing labels are dropped, likeliest first:
  minus ``num_frames label`` (Something-Something ``folder num_frames label`` lines), minus a
  ``label`` (official ``path,label`` / ``path label`` lines)."""
  out = []
  for sep in (",", None):
    parts = line.rsplit(sep, 2)
    ints = 0
    while ints < len(parts) - 1 and parts[len(parts) - 1 - ints].strip().lstrip("-").isdigit():
      ints += 1
    for drop in range(ints, 0, -1):
      head = (sep or " ").join(parts[: len(parts) - drop]).strip()
      if head:
        out.append(head)
  return list(dict.fromkeys(out))


def _natural_key(name: str) -> list[Any]:
  # Digit runs compare as numbers (img_2 < img_10); re.split keeps str/int positions aligned.
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def frame_files(folder: str) -> list[str]:
  """The image files directly in ``folder``, in natural order (the frames of a frame folder)."""
  names = [f for f in os.listdir(folder)
           if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
           and os.path.isfile(os.path.join(folder, f))]
  return [os.path.join(folder, f) for f in sorted(names, key=_natural_key)]


def _scan_folder(path: str) -> list[str]:
  """Video files and frame folders under ``path`` (recursively), sorted. A directory with
  image files and no video files is one frame-folder video; its subdirectories are still
  searched (a nested layout stays usable)."""
  found = []
  for d, _, files in os.walk(path):
    exts = {os.path.splitext(f)[1].lower() for f in files}
    videos = [os.path.join(d, f) for f in files
              if os.path.splitext(f)[1].lower() in VIDEO_EXTENSIONS]
    found.extend(videos)
    if not videos and exts & IMAGE_EXTENSIONS:
      found.append(d)
  return sorted(found)


def _resolve(path: str, bases: Sequence[str]) -> str:
  if os.path.isabs(path):
    return path
  for base in bases:
    cand = os.path.join(base, path)
    if os.path.exists(cand):
      return cand
  return os.path.join(bases[0], path) if bases else path


def _resolve_line(line: str, bases: Sequence[str]) -> str:
  """A list line's video: the first reading of it (as written, then without labels) that
  exists, as given or against ``bases``; a missing video keeps the label-free reading (it is
  reported per video later)."""
  readings = list(dict.fromkeys([line, *_label_free_paths(line)]))
  for r in readings:
    if os.path.exists(r) or (not os.path.isabs(r)
                             and any(os.path.exists(os.path.join(b, r)) for b in bases)):
      return _resolve(r, bases)
  return _resolve(readings[1] if len(readings) > 1 else line, bases)


def find_videos(inputs: str | os.PathLike | Sequence[str | os.PathLike],
                root: str = "") -> list[str]:
  """The videos of ``inputs``: a video file; a frame folder (image files, no videos: one
  video); a folder (its video files and frame folders, recursively, sorted); a list file
  (``.txt``/``.csv``/``.lst``: official ``path,label`` lines, Something-Something
  ``folder num_frames label`` lines, or bare paths; relative paths against ``root``, the
  list's folder, then the working directory; an official UCF-101 / HMDB-51 split file is
  read as training reads it); or a sequence of any of these. A missing video
  named by a list is kept (reported per video later).
  """
  if isinstance(inputs, (list, tuple)):
    return [p for item in inputs for p in find_videos(item, root)]
  path = os.fspath(inputs)
  if os.path.isdir(path):
    found = _scan_folder(path)
    if not found:
      raise FileNotFoundError(
        f"no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) and no frame folders (images: "
        f"{', '.join(sorted(IMAGE_EXTENSIONS))}) in {path}")
    return found
  if not os.path.exists(path):
    raise FileNotFoundError(f"input {path} does not exist (give a video file, a frame folder, a "
                            "folder of videos or a list file)")
  if not _is_list_file(path):
    return [path]
  official = splits.videos_of_split_file(path)  # UCF-101 / HMDB-51 split files as distributed
  if official is not None:
    return official
  bases = [b for b in (root, os.path.dirname(os.path.abspath(path)), os.getcwd()) if b]
  with open(path, encoding="utf-8") as f:
    lines = [line.strip() for line in f.read().splitlines()]
  videos = [_resolve_line(line, bases) for line in lines if line and not line.startswith("#")]
  if not videos:
    raise ValueError(f"list file {path} names no videos")
  return videos


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
  """A model ready to run and how to feed it."""

  model: UniFormerV2
  views: ViewSettings
  names: list[str] | None
  notices: list[str]
  config: dict[str, Any] | None


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
  bad = []
  for name in ARCH_FIELDS:
    if name not in config_model:
      continue
    want, have = config_model[name], getattr(cfg, name)
    if isinstance(have, tuple):
      same = tuple(want) == have
    elif isinstance(have, float):
      same = math.isclose(float(want), have)
    else:
      same = want == have
    if not same:
      bad.append(f"{name}: checkpoint {have!r}, config {want!r}")
  if bad:
    raise CheckpointMismatchError(
      f"checkpoint {checkpoint} does not match the config's model ({'; '.join(bad)}). Pass the "
      "config the checkpoint was trained or converted with, or leave --config out to use the "
      "checkpoint's own settings.")


def _adapt_resolution(model: UniFormerV2, size: int) -> UniFormerV2:
  """The same weights at input resolution ``size``: the positional embedding's patch grid is
  resized bicubically (``convert.resize_positional_embedding``); nothing else depends on it."""
  from uniformerv2_jax.convert import resize_positional_embedding
  from uniformerv2_jax.model import create_model
  from uniformerv2_jax.trees import flat_state

  cfg = model.cfg
  if size % cfg.patch_size:
    raise ValueError(f"--adapt pos_embed: crop size {size} is not a multiple of the patch size "
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
      raise FileNotFoundError(f"label file {labels!r} not found (a file with one class name per "
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
    raise ValueError(f"adapt must be one of {ADAPT_MODES}, got {adapt!r}")
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
def decode_clips(path: str, views: ViewSettings) -> np.ndarray:
  """uint8 ``[V, T, H, W, 3]``: the V temporal test clips of a video file or a frame folder
  (channel order as the model expects). Short videos repeat frames (the sampler clamps),
  never fail."""
  s, count = views.sampling, views.num_clips

  def indices(length: int) -> np.ndarray:
    return np.concatenate([s.test_indices(length, v, count) for v in range(count)])

  r = views.reader
  if os.path.isdir(path):
    frames = read_frame_files(frame_files(path), indices, label=path, max_pixels=r.max_pixels)
  else:
    frames = read_clip({"kind": "video", "path": path, "label": 0}, indices,
                       max_pixels=r.max_pixels, seek_threshold=r.seek_threshold,
                       decode_threads=r.decode_threads).frames
  frames = frames.reshape(count, s.num_frames, *frames.shape[1:])
  return np.ascontiguousarray(frames[..., ::-1]) if views.bgr else frames


def read_frame_files(files: Sequence[str], indices_for_length, *, label: str,
                     max_pixels: int) -> np.ndarray:
  """uint8 RGB ``[T, H, W, 3]``: the images ``files[indices_for_length(len(files))]``, read as
  the training reader reads frame images; positions past the end repeat the last frame."""
  from uniformerv2_jax.data.video import DecodeError, read_image_files

  if not files:
    raise DecodeError("no_frames", label, "no image files")
  idx = np.minimum(np.asarray(indices_for_length(len(files)), np.int64), len(files) - 1)
  return read_image_files([files[i] for i in idx], label=label, max_pixels=max_pixels)


def make_views(clips: np.ndarray, views: ViewSettings) -> Iterator[np.ndarray]:
  """The float32 test views of decoded clips, view ``j`` = clip ``j // S``, crop ``j % S``."""
  for j in range(views.num_views):
    yield eval_view(clips[j // views.num_crops], j % views.num_crops, views.eval_cfg)


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


def run_videos(prepared: Prepared, videos: Sequence[str], *, batch_size: int = 8,
               extract_all: bool = False, read_threads: int = 2,
               progress: bool = True) -> VideoResults:
  """Every view of every video through the model, ``batch_size`` views per call."""
  from tqdm import tqdm

  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  model, views = prepared.model, prepared.views
  cfg = model.cfg
  graphdef, state = nnx.split(model)
  n, nv = len(videos), views.num_views
  shape = (views.sampling.num_frames, views.eval_cfg.crop_size, views.eval_cfg.crop_size, 3)
  probs = np.zeros((n, cfg.num_classes), np.float64)
  feats = np.zeros((n, cfg.n_dim), np.float64)
  extra = {"block_cls": np.zeros((n, cfg.layers, cfg.width), np.float64),
           "global_tokens": np.zeros((n, cfg.n_layers, cfg.n_dim), np.float64)} \
    if extract_all else {}
  counts = np.zeros((n,), np.int64)
  errors: list[str | None] = [None] * n

  buf = np.zeros((batch_size, *shape), np.float32)
  owners: list[int] = []
  in_flight: list[tuple[Any, list[int]]] = []

  def collect() -> None:
    out, who = in_flight.pop()
    p, f, e = jax.device_get(out)
    for row, v in enumerate(who):
      probs[v] += p[row]
      feats[v] += f[row]
      for k in extra:
        extra[k][v] += e[k][row]
      counts[v] += 1

  def flush() -> None:
    nonlocal buf
    if not owners:
      return
    out = _forward(graphdef, state, buf, extract_all)  # dispatched asynchronously
    if in_flight:
      collect()  # the previous batch, while this one runs
    in_flight.append((out, list(owners)))
    buf = np.zeros((batch_size, *shape), np.float32)  # the device may still read the old one
    owners.clear()

  bar = tqdm(total=n, desc="videos", unit="video", disable=not progress, file=sys.stderr)
  window = max(1, read_threads) * 2
  with ThreadPoolExecutor(max(1, read_threads)) as pool:
    pending = {}
    for i in range(min(window, n)):
      pending[i] = pool.submit(decode_clips, videos[i], views)
    for i in range(n):
      if i + window < n:
        pending[i + window] = pool.submit(decode_clips, videos[i + window], views)
      try:
        clips = pending.pop(i).result()
      except Exception as err:  # noqa: BLE001 (one bad video must not stop the others)
        errors[i] = _error_message(err, videos[i])
        bar.write(f"skipped {videos[i]}: {errors[i]}", file=sys.stderr)
        bar.update(1)
        continue
      for view in make_views(clips, views):  # anything failing here is a bug: raise
        buf[len(owners)] = view
        owners.append(i)
        if len(owners) == batch_size:
          flush()
      del clips
      bar.update(1)
  flush()
  while in_flight:
    collect()
  bar.close()

  ok = np.array([e is None for e in errors], bool)
  if np.any(counts[ok] != nv):  # every view of a readable video is scored exactly once
    raise RuntimeError(f"view bookkeeping: counts {counts[ok].tolist()}, expected {nv} each")
  denom = np.where(ok, np.maximum(counts, 1), 1)[:, None]
  probs = np.where(ok[:, None], probs / denom, np.nan)
  feats = np.where(ok[:, None], feats / denom, np.nan).astype(np.float32)
  extra = {k: np.where(ok[:, None, None], v / denom[:, :, None], np.nan).astype(np.float32)
           for k, v in extra.items()}
  return VideoResults(list(videos), probs, feats, extra, errors, nv)


# ----------------------------------------------------------------------------- entry points
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
                   verbose: bool = True, use_ema: bool = False) -> list[dict[str, Any]]:
  """Top-``topk`` classes of every video of ``inputs`` (see :func:`find_videos`).

  Returns (and with ``output`` writes as JSON) one entry per video:
  ``{"video": path, "topk": [{"label", "index", "prob"}, ...], "error": None or message}``.
  ``config``: a ConfigDict / dict / ``path.py[:arg]``, or None for the checkpoint's own
  settings. ``labels``: a shipped map name or a file (one name per line). ``adapt``: what to do
  when the config's crop size differs from the model resolution (``resize`` the views to the
  model resolution, or ``pos_embed``: interpolate the positional embedding to the crop size).
  ``use_ema``: the checkpoint's EMA weights (``checkpoint.NoEmaError`` when it has none).
  """
  prepared = prepare(checkpoint, config, labels=labels, adapt=adapt, use_ema=use_ema)
  videos = find_videos(inputs, _get(prepared.config, "dataset.root", "") or "")
  results = run_videos(prepared, videos, batch_size=batch_size, read_threads=read_threads,
                       progress=progress)
  entries = []
  for v, path in enumerate(results.videos):
    err = results.errors[v]
    entries.append({"video": path, "error": err,
                    "topk": [] if err else topk_entries(results.probs[v], prepared.names, topk)})
  if output:
    from etils import epath

    out = epath.Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(entries, indent=1))
  if verbose:
    print(format_table(entries))
    print(_summary(prepared, results) + (f"; wrote {output}" if output else ""))
  return entries


def extract_features(checkpoint: str, inputs: Any, *, config: Any = None,
                     output: str | None = None, extract_all: bool = False, batch_size: int = 8,
                     adapt: str = "resize", read_threads: int = 2, progress: bool = True,
                     verbose: bool = True, use_ema: bool = False) -> dict[str, Any]:
  """Per-video features averaged over the test views.

  Returns ``{"features": [N, D] float32, "videos": [N] paths, "errors": [N] None or message,
  "num_views": V x S}`` and with ``extract_all`` also ``block_cls [N, layers, width]`` (each
  backbone block's class token, mean over frames) and ``global_tokens [N, n_layers, D]`` (the
  video token after each global block). Rows of videos that failed are NaN. ``output``:
  ``.npz`` (all of the above; errors as strings, '' = fine) or ``.npy`` (features only, with
  the paths in ``<stem>.videos.txt`` beside it). ``use_ema``: as :func:`predict_videos`.
  """
  if output and not str(output).endswith((".npz", ".npy")):
    raise ValueError(f"--output {output}: use a .npz (or, for the features only, .npy) file")
  if output and extract_all and str(output).endswith(".npy"):
    raise ValueError("--extract_all writes several arrays: use a .npz output")
  prepared = prepare(checkpoint, config, adapt=adapt, use_ema=use_ema)
  videos = find_videos(inputs, _get(prepared.config, "dataset.root", "") or "")
  results = run_videos(prepared, videos, batch_size=batch_size, extract_all=extract_all,
                       read_threads=read_threads, progress=progress)
  out = {"features": results.features, "videos": results.videos, "errors": results.errors,
         "num_views": results.num_views, **results.extra}
  if output:
    _write_features(str(output), out)
  if verbose:
    for path, err in zip(results.videos, results.errors, strict=True):
      if err:
        print(f"{path}\n    ERROR  {err}")
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in out.items() if isinstance(v, np.ndarray))
    print(_summary(prepared, results) + f"; {shapes}" + (f"; wrote {output}" if output else ""))
  return out


def _write_features(output: str, out: Mapping[str, Any]) -> None:
  from etils import epath

  path = epath.Path(output)
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {k: v for k, v in out.items() if isinstance(v, np.ndarray)}
  if output.endswith(".npy"):
    with path.open("wb") as f:
      np.save(f, arrays["features"])
    side = path.parent / (path.name[: -len(".npy")] + ".videos.txt")
    side.write_text("".join(f"{v}\n" for v in out["videos"]))
    return
  arrays.update(videos=np.asarray(out["videos"], dtype=str),
                errors=np.asarray([e or "" for e in out["errors"]], dtype=str),
                num_views=np.asarray(out["num_views"]))
  with path.open("wb") as f:
    np.savez(f, **arrays)
