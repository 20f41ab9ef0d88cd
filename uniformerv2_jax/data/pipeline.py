"""grain pipelines: records -> shuffled, process-sharded, decoded and augmented batches.

Train (infinite)::

    range(N) -> shuffle(seed) -> repeat (new shuffle each epoch) -> random_map(load + augment)
             -> [process_index::process_count] -> batch(B) -> iterator (+ mp_prefetch workers)

Per-sample randomness comes from grain's ``random_map``, seeded from the seed and the global
position in the repeated stream, so a batch depends only on (seed, step, process layout) and
never on the number of worker processes or threads. Shuffling happens before the process slice,
so the processes together see every record of an epoch exactly once (round-robin).

Eval (finite): the (video, view) items of this process' videos (videos ``pi::pc``, views of one
video consecutive, view j = temporal clip j // S, spatial crop j % S), padded with ``valid=False``
items to the same number of batches on every process.

Bad samples never stop a run. Train replaces them by the next record (index + 1 mod N, up to
``max_retries``); eval marks them ``valid=False`` (a replacement would count a video twice).
Every batch carries ``skipped[B, len(SKIP_KINDS)]`` counts so a trainer can sum them into
metrics across worker processes and hosts.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grain
import numpy as np
from absl import logging

from uniformerv2_jax.data import sampling, transforms
from uniformerv2_jax.data.sources import Record, read_clip
from uniformerv2_jax.data.video import DEFAULT_MAX_PIXELS, SKIP_KINDS, DecodeError
from uniformerv2_jax.errors import InputError

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class SamplingConfig:
  """Which frames a clip takes (defaults: the K400 8-frame sparse recipe)."""

  num_frames: int = 8  # frames read per clip (2 x backbone frames with temporal downsampling)
  mode: str = "sparse"  # "sparse" (TSN, official) or "dense"
  sampling_rate: int = 16  # dense only
  num_clips: int = 4  # test temporal views V
  short_video: str = "clamp"  # dense only: "clamp" or "loop"

  def train_indices(self, length: int, rng: np.random.Generator) -> np.ndarray:
    if self.mode == "sparse":
      return sampling.sparse_train_indices(length, self.num_frames, rng)
    if self.mode == "dense":
      return sampling.dense_train_indices(
        length, self.num_frames, self.sampling_rate, rng, self.short_video
      )
    raise InputError(f"unknown sampling mode {self.mode!r}")

  def test_indices(self, length: int, clip_index: int, num_clips: int) -> np.ndarray:
    if self.mode == "sparse":
      return sampling.sparse_test_indices(length, self.num_frames, clip_index, num_clips)
    if self.mode == "dense":
      return sampling.dense_test_indices(
        length,
        self.num_frames,
        self.sampling_rate,
        clip_index,
        num_clips,
        self.short_video,
      )
    raise InputError(f"unknown sampling mode {self.mode!r}")


@dataclass(frozen=True)
class ReaderConfig:
  """How records are read; bad-data policy."""

  max_pixels: int = DEFAULT_MAX_PIXELS
  # In-order reader only (videos that are not H.264 in MP4, or selective_decode=False): seek to
  # the keyframe before a wanted frame more than this many frames ahead.
  seek_threshold: int | None = None
  max_retries: int = 10  # train: how many following records to try after a bad one
  # FFmpeg decoder threading for video records: "AUTO" (frame/slice threads: lowest latency in
  # one process) or "NONE" (15-25% less CPU per clip; better when workers fill every core).
  decode_threads: str = "AUTO"
  # H.264 in MP4: decode only what the sampled frames depend on (bit-identical frames; ~2x less
  # decoding for 10 s Kinetics clips, see benchmarks/RESULTS.md). False: decode in order.
  selective_decode: bool = True

  def __post_init__(self):
    if self.decode_threads not in ("AUTO", "FRAME", "SLICE", "NONE"):
      raise InputError(f"decode_threads must be AUTO, FRAME, SLICE or NONE (dataset."
                       f"decode_threads), got {self.decode_threads!r}")


class _SkipLog:
  """Rate-limited warnings: the first ``first`` skips, then at most one per ``every_s``."""

  def __init__(self, first: int = 20, every_s: float = 30.0):
    self.first, self.every_s = first, every_s
    self.count, self.last = 0, 0.0

  def __call__(self, kind: str, path: str, err: BaseException) -> None:
    self.count += 1
    now = time.monotonic()
    if self.count <= self.first or now - self.last >= self.every_s:
      self.last = now
      logging.warning("bad sample skipped (%s, #%d): %s: %s", kind, self.count, path, err)

  def __getstate__(self):
    return {"first": self.first, "every_s": self.every_s}

  def __setstate__(self, state):
    self.__init__(**state)


def _skip_kind(err: BaseException) -> str:
  return err.kind if isinstance(err, DecodeError) else "other"


class TrainLoad(grain.transforms.RandomMap):
  """Global stream position -> one training example (``num_sample`` augmented clips)."""

  def __init__(
    self,
    source: Any,
    sampling_cfg: SamplingConfig,
    aug: transforms.TrainAugConfig,
    reader: ReaderConfig,
    num_sample: int = 1,
  ):
    self.source, self.sampling, self.aug, self.reader = (
      source,
      sampling_cfg,
      aug,
      reader,
    )
    self.num_sample = num_sample
    self._log = _SkipLog()

  def random_map(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(self.source)
    skipped = np.zeros(len(SKIP_KINDS), np.int32)
    for attempt in range(self.reader.max_retries + 1):
      rec: Record = self.source[(int(index) + attempt) % n]
      try:
        clip = read_clip(
          rec,
          lambda length: self.sampling.train_indices(length, rng),
          max_pixels=self.reader.max_pixels,
          seek_threshold=self.reader.seek_threshold,
          decode_threads=self.reader.decode_threads,
          selective=self.reader.selective_decode,
        )
        # Repeated augmentation: one temporal draw and decode, independent spatial augs.
        videos = [
          transforms.train_augment(clip.frames, rng, self.aug) for _ in range(self.num_sample)
        ]
      except Exception as err:  # noqa: BLE001 (bad data must never stop training)
        kind = _skip_kind(err)
        skipped[SKIP_KINDS.index(kind)] += 1
        self._log(kind, str(rec.get("path", "?")), err)
        continue
      # Counts go with the first copy only, so summing over the batch counts each skip once.
      skip_rows = np.zeros((self.num_sample, len(SKIP_KINDS)), np.int32)
      skip_rows[0] = skipped
      return {
        "video": np.stack(videos),
        "label": np.full((self.num_sample,), int(rec["label"]), np.int32),
        "skipped": skip_rows,
      }
    raise RuntimeError(
      f"{self.reader.max_retries + 1} consecutive bad records from index {index}; "
      f"skip counts {dict(zip(SKIP_KINDS, skipped.tolist(), strict=True))}"
    )


def _stack_flat(items: Sequence[dict[str, np.ndarray]]) -> Batch:
  """Batch examples whose leaves carry a leading per-example sample axis (num_sample)."""
  return {k: np.concatenate([it[k] for it in items], axis=0) for k in items[0]}


class MixupBatch(grain.transforms.RandomMap):
  """Batch-level Mixup/CutMix; adds ``soft_label`` [B, K] and keeps the integer ``label``."""

  def __init__(self, cfg: transforms.MixupConfig):
    self.cfg = cfg

  def random_map(self, batch: Batch, rng: np.random.Generator) -> Batch:
    videos, soft = transforms.mixup_cutmix(batch["video"], batch["label"], rng, self.cfg)
    return {**batch, "video": videos, "soft_label": soft}


def _process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} outside [0, {process_count})")
  return process_index, process_count


def make_train_dataset(
  source: Any,
  *,
  batch_size: int,
  seed: int,
  sampling_cfg: SamplingConfig | None = None,
  aug: transforms.TrainAugConfig | None = None,
  reader: ReaderConfig | None = None,
  num_sample: int = 1,
  mixup: transforms.MixupConfig | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> grain.MapDataset:
  """Infinite batched training ``MapDataset`` for this process.

  ``batch_size`` counts videos per process; with ``num_sample`` > 1 a batch holds
  ``batch_size * num_sample`` clips (the official SSv2 "x2 aug"). Batch ``b`` of every process
  covers stream positions ``(b * batch_size + i) * process_count + process_index``; epoch ``e``
  is positions ``[e N, (e + 1) N)`` of the stream, each a permutation of the records.
  """
  if len(source) == 0:
    raise ValueError("empty source")
  pi, pc = _process_layout(process_index, process_count)
  sampling_cfg = sampling_cfg or SamplingConfig()
  aug = aug or transforms.TrainAugConfig()
  reader = reader or ReaderConfig()
  ds = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(None)
  ds = ds.random_map(TrainLoad(source, sampling_cfg, aug, reader, num_sample), seed=seed + 1)
  ds = ds[pi::pc]
  ds = ds.batch(batch_size, drop_remainder=True, batch_fn=_stack_flat)
  if mixup is not None:
    ds = ds.random_map(MixupBatch(mixup), seed=seed + 2)
  return ds


def to_iterator(
  ds: grain.MapDataset,
  *,
  num_workers: int = 0,
  read_threads: int = 2,
  prefetch_batches: int = 2,
  worker_buffer_batches: int = 2,
) -> grain.DatasetIterator:
  """Iterator over a batched dataset, with ``get_state()``/``set_state()`` for exact resume.

  Each batch is built by one thread; ``read_threads`` batches are built concurrently per
  process (PyAV and PIL release the GIL). ``num_workers`` > 0 adds that many worker processes
  (grain ``mp_prefetch``; the main program needs an ``if __name__ == "__main__":`` guard and
  parsed absl flags). Output is identical for any number of workers or threads.
  """
  it_ds = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)
  )
  if num_workers > 0:
    it_ds = it_ds.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=worker_buffer_batches
      )
    )
  return iter(it_ds)


def make_train_iterator(
  source: Any,
  *,
  batch_size: int,
  seed: int,
  num_workers: int = 0,
  read_threads: int = 2,
  prefetch_batches: int = 2,
  **kwargs: Any,
) -> grain.DatasetIterator:
  """``make_train_dataset(source, ...)`` as an infinite, checkpointable iterator of batches.

  Batch: ``video`` [B', T, S, S, 3] float32 normalised (or uint8, ``aug.output``), ``label``
  [B'] int32, ``skipped`` [B', len(SKIP_KINDS)] int32, optional ``soft_label`` [B', K] with
  mixup; B' = batch_size * num_sample.
  """
  ds = make_train_dataset(source, batch_size=batch_size, seed=seed, **kwargs)
  return to_iterator(
    ds,
    num_workers=num_workers,
    read_threads=read_threads,
    prefetch_batches=prefetch_batches,
  )


# ----------------------------------------------------------------------------- eval
@dataclass(frozen=True)
class EvalLayout:
  """Which (video, view) each eval item of this process is; padding after the real ones."""

  num_videos: int
  views: int
  process_index: int
  process_count: int
  batch_size: int
  local_videos: int = field(init=False)
  num_batches: int = field(init=False)

  def __post_init__(self):
    local = len(range(self.process_index, self.num_videos, self.process_count))
    per_process_max = math.ceil(self.num_videos / self.process_count)
    object.__setattr__(self, "local_videos", local)
    object.__setattr__(
      self,
      "num_batches",
      math.ceil(per_process_max * self.views / self.batch_size),
    )

  def item(self, j: int) -> tuple[int, int] | None:
    """(global video index, view index) of local item j, or None for padding."""
    if j >= self.local_videos * self.views:
      return None
    return self.process_index + (j // self.views) * self.process_count, j % self.views


def read_test_clips(
  record: Record, sampling_cfg: SamplingConfig, reader: ReaderConfig, num_clips: int
) -> np.ndarray:
  """uint8 ``[V, T, H, W, 3]``: the ``num_clips`` temporal test clips of a record, decoded in
  one pass. Short videos repeat frames (the sampler clamps), never fail."""
  clip = read_clip(
    record,
    lambda length: np.concatenate(
      [sampling_cfg.test_indices(length, v, num_clips) for v in range(num_clips)]
    ),
    max_pixels=reader.max_pixels,
    seek_threshold=reader.seek_threshold,
    decode_threads=reader.decode_threads,
    selective=reader.selective_decode,
  )
  return clip.frames.reshape(num_clips, sampling_cfg.num_frames, *clip.frames.shape[1:])


def test_view(clips: np.ndarray, view: int, eval_cfg: transforms.EvalConfig) -> np.ndarray:
  """Test view ``view`` of a video's decoded clips (:func:`read_test_clips`): temporal clip
  ``view // S``, spatial crop ``view % S`` (S = ``eval_cfg.num_spatial_crops``)."""
  s_count = eval_cfg.num_spatial_crops
  return transforms.eval_view(clips[view // s_count], view % s_count, eval_cfg)


class EvalLoad(grain.transforms.Map):
  """Local item index -> one test view; decodes a video's V temporal clips once (cached)."""

  def __init__(
    self,
    source: Any,
    layout: EvalLayout,
    sampling_cfg: SamplingConfig,
    eval_cfg: transforms.EvalConfig,
    reader: ReaderConfig,
    num_clips: int,
  ):
    self.source, self.layout, self.sampling = source, layout, sampling_cfg
    self.eval_cfg, self.reader, self.num_clips = eval_cfg, reader, num_clips
    self._init_cache()

  def _init_cache(self) -> None:
    self._cache: OrderedDict[int, Any] = OrderedDict()
    self._lock = threading.Lock()
    self._log = _SkipLog()

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_lock", "_log")}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._init_cache()

  def _clips(self, vid: int) -> tuple[np.ndarray | None, str | None]:
    with self._lock:
      if vid in self._cache:
        return self._cache[vid]
    rec = self.source[vid]
    try:
      value: tuple[np.ndarray | None, str | None] = (
        read_test_clips(rec, self.sampling, self.reader, self.num_clips),
        None,
      )
    except Exception as err:  # noqa: BLE001 (a bad test video is excluded, not fatal)
      kind = _skip_kind(err)
      self._log(kind, str(rec.get("path", "?")), err)
      value = (None, kind)
    with self._lock:
      self._cache[vid] = value
      while len(self._cache) > 4:
        self._cache.popitem(last=False)
    return value

  def _empty(self) -> np.ndarray:
    s = self.eval_cfg.crop_size
    dtype = np.float32 if self.eval_cfg.output == "float32" else np.uint8
    return np.zeros((self.sampling.num_frames, s, s, 3), dtype)

  def map(self, j: int) -> dict[str, np.ndarray]:
    skipped = np.zeros(len(SKIP_KINDS), np.int32)
    where = self.layout.item(int(j))
    if where is None:
      return {
        "video": self._empty(),
        "label": np.int32(0),
        "video_index": np.int32(-1),
        "view_index": np.int32(-1),
        "valid": np.bool_(False),
        "skipped": skipped,
      }
    vid, view = where
    clips, bad = self._clips(vid)
    if clips is None:
      # Count a bad video once (on its first view) and exclude all its views.
      if view == 0:
        skipped[SKIP_KINDS.index(bad)] += 1
      video, valid = self._empty(), False
    else:
      video = test_view(clips, view, self.eval_cfg)
      valid = True
    return {
      "video": video,
      "label": np.int32(self.source[vid]["label"]),
      "video_index": np.int32(vid),
      "view_index": np.int32(view),
      "valid": np.bool_(valid),
      "skipped": skipped,
    }


def make_eval_dataset(
  source: Any,
  *,
  batch_size: int,
  sampling_cfg: SamplingConfig | None = None,
  eval_cfg: transforms.EvalConfig | None = None,
  reader: ReaderConfig | None = None,
  num_clips: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> tuple[grain.MapDataset, EvalLayout]:
  """Finite eval ``MapDataset`` of batches; the same number of batches on every process.

  ``num_clips`` defaults to ``sampling_cfg.num_clips`` (V); views per video = V x S.
  Validation (official K400 val) = ``num_clips=1``, ``EvalConfig(num_spatial_crops=1)``.
  """
  pi, pc = _process_layout(process_index, process_count)
  sampling_cfg = sampling_cfg or SamplingConfig()
  eval_cfg = eval_cfg or transforms.EvalConfig()
  reader = reader or ReaderConfig()
  v_count = sampling_cfg.num_clips if num_clips is None else num_clips
  views = v_count * eval_cfg.num_spatial_crops
  layout = EvalLayout(len(source), views, pi, pc, batch_size)
  ds = grain.MapDataset.range(layout.num_batches * batch_size)
  ds = ds.map(EvalLoad(source, layout, sampling_cfg, eval_cfg, reader, v_count))
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds, layout


def make_eval_iterator(
  source: Any,
  *,
  batch_size: int,
  num_workers: int = 0,
  read_threads: int = 2,
  prefetch_batches: int = 2,
  **kwargs: Any,
) -> grain.DatasetIterator:
  """Iterator over ``make_eval_dataset`` batches: ``video`` [B, T, S, S, 3], ``label``,
  ``video_index``, ``view_index``, ``valid`` [B] (False = padding or bad video), ``skipped``."""
  ds, _ = make_eval_dataset(source, batch_size=batch_size, **kwargs)
  return to_iterator(
    ds,
    num_workers=num_workers,
    read_threads=read_threads,
    prefetch_batches=prefetch_batches,
  )
