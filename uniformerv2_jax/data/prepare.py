"""Convert a list of videos into the project's ArrayRecord shards.

Each video is a msgpack map record (no pickle): ``path`` (as in the list file), ``label``,
``format`` (``mp4`` or ``jpeg``), ``num_frames``, ``height``, ``width`` and, for ``mp4``, ``video``
(H.264 bytes of the whole re-encoded video). For ``jpeg`` the map has ``frame_records`` (= the
frame count) and each frame follows as its own record (the JPEG bytes), so that a clip reads
only its 8 frames: reading a 300-frame video's JPEGs as one record took ~30 ms per clip. Frames
are resized so the short side is ``short_side`` (never upscaled), the usual storage form of
Kinetics (320p); every frame is kept, so temporal sampling sees the original length L. ``jpeg``
shards are larger but decode only the sampled frames, which makes them the fastest training
input. ``OUT/index.json`` lists, per shard, its record count and where each video's map record
is (:class:`uniformerv2_jax.data.sources.ArrayRecordSource` reads it). Shards are written
uncompressed: JPEG and H.264 payloads do not compress, and decompression cost read time.

Shard ``k`` holds the videos at list positions ``[k * records_per_shard, (k + 1) *
records_per_shard)`` in list order, so the output does not depend on which worker writes which
shard or when. A shard is written under a temporary name and renamed when complete, after its
index entry (``OUT/.prepare/shard-XXXXX.json``); a run that finds complete shards of the same
list and settings (``OUT/.prepare/plan.json``) keeps them, which is how a crashed run resumes.
The list itself, as read, is ``OUT/.prepare/videos.jsonl`` (where Beam workers find their
shards' videos).
Videos that cannot be read (missing, empty, truncated, undecodable) are left out of the shards,
logged, and listed in ``OUT/errors.jsonl`` (``path``, ``kind``, ``reason``); ``index.json``
counts them.

Shards are written one after another in this process (``--runner local``) or by an Apache Beam
pipeline (:mod:`uniformerv2_jax.data.prepare_beam`; the default when ``apache-beam`` is
installed); both call :func:`write_shard`. ``--list``, ``--prefix`` and ``--out`` may be any
``etils.epath`` path (``gs://...``): videos are read as bytes through epath, and a shard for a
non-local ``--out`` is written to a local temporary file, then copied.

CLI::

    python -m uniformerv2_jax.data.prepare --list train.csv --prefix DIR --out OUT \
        [--short-side 320] [--format mp4|jpeg] [--records-per-shard 1000] [--num-classes K] \
        [--runner local|DirectRunner|DataflowRunner|FlinkRunner|SparkRunner] [--overwrite] \
        [Beam pipeline options, e.g. --direct_num_workers 2]
    python -m uniformerv2_jax.data.prepare --dataset ucf101|hmdb51 --split 1 --subset train \
        --prefix ROOT --out OUT   # the official split files; also writes OUT/labels.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence

import av
import numpy as np
from absl import logging
from array_record.python.array_record_module import ArrayRecordWriter
from etils import epath
from PIL import Image

from uniformerv2_jax import storage
from uniformerv2_jax.arg_types import positive_int
from uniformerv2_jax.data import splits
from uniformerv2_jax.data.sources import Record, VideoListSource, encode_record
from uniformerv2_jax.data.video import DecodeError, read_file_bytes, read_video
from uniformerv2_jax.errors import InputError, check_can_write, run_main


def _resize_short(frames: np.ndarray, short_side: int) -> np.ndarray:
  h, w = frames.shape[1:3]
  if min(h, w) <= short_side:
    return frames
  if h <= w:
    nh, nw = short_side, round(w * short_side / h)
  else:
    nh, nw = round(h * short_side / w), short_side
  nh, nw = nh + nh % 2, nw + nw % 2  # yuv420p needs even sizes
  return np.stack(
    [np.asarray(Image.fromarray(f).resize((nw, nh), Image.Resampling.BILINEAR)) for f in frames]
  )


def _even(frames: np.ndarray) -> np.ndarray:
  h, w = frames.shape[1:3]
  return frames[:, : h - h % 2, : w - w % 2]


def encode_h264(frames: np.ndarray, fps: float = 30.0, crf: int = 20, gop: int = 30) -> bytes:
  """H.264 (mpeg4 if libx264 is missing) mp4 bytes; short GOP keeps seeking cheap."""
  buf = io.BytesIO()
  codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
  opts = {"crf": str(crf), "g": str(gop), "preset": "veryfast"} if codec == "libx264" else {}
  frames = _even(frames)
  with av.open(buf, mode="w", format="mp4") as container:
    stream = container.add_stream(codec, rate=round(fps) or 30, options=opts)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p"
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return buf.getvalue()


def encode_jpegs(frames: np.ndarray, quality: int = 90) -> list[bytes]:
  out = []
  for f in frames:
    b = io.BytesIO()
    Image.fromarray(f).save(b, format="JPEG", quality=quality)
    out.append(b.getvalue())
  return out


def _all_frames(data: bytes, label: str) -> tuple[np.ndarray, float]:
  # read_video first: it names what is wrong with a bad file (empty, unreadable, truncated).
  clip = read_video(data, lambda length: np.arange(max(1, length)), label=label)
  with av.open(io.BytesIO(data)) as c:
    fps = float(c.streams.video[0].average_rate or 30)
  # Keep only distinct decoded positions (metadata may overcount: trailing repeats dropped).
  last = int(clip.indices.max())
  return clip.frames[: last + 1], fps


INDEX_FILE = "index.json"
INDEX_VERSION = 2
ERRORS_FILE = "errors.jsonl"
STATE_DIR = ".prepare"  # the plan and one index entry per complete shard, for resuming
PLAN_FILE = "plan.json"
VIDEOS_FILE = "videos.jsonl"  # the plan's videos in list order: [path, stored path, label]
LOCAL_RUNNER = "local"
BEAM_RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner")
# What one unreadable video raises; anything else is a bug and stops the run.
BAD_VIDEO_ERRORS = (DecodeError, av.FFmpegError, OSError, ValueError)


def make_records(path: str, rel_path: str, label: int, short_side: int, fmt: str) -> list[bytes]:
  """The records of one video: its map record, then (``jpeg``) one record per frame."""
  frames, fps = _all_frames(read_file_bytes(path), path)
  frames = _resize_short(frames, short_side)
  rec = {
    "path": rel_path,
    "label": int(label),
    "format": fmt,
    "num_frames": len(frames),
    "height": int(frames.shape[1]),
    "width": int(frames.shape[2]),
  }
  if fmt == "mp4":
    rec["video"] = encode_h264(frames, fps)
    return [encode_record(rec)]
  if fmt == "jpeg":
    rec["frame_records"] = len(frames)
    return [encode_record(rec), *encode_jpegs(frames)]
  raise ValueError(f"format must be 'mp4' or 'jpeg', got {fmt!r}")


# ----------------------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class Video:
  """One list entry: where to read it, the path stored in its record, its label."""

  path: str
  rel: str
  label: int


@dataclasses.dataclass(frozen=True)
class Settings:
  """How the videos are stored (part of what a resumed run must match)."""

  short_side: int = 320
  fmt: str = "mp4"
  records_per_shard: int = 1000


@dataclasses.dataclass(frozen=True)
class ShardJob:
  """Everything a worker needs to write shard ``index`` of ``count``: list positions
  ``[start, start + len(videos))``."""

  out: str
  index: int
  count: int
  start: int
  videos: tuple[Video, ...]
  settings: Settings

  @property
  def name(self) -> str:
    return shard_name(self.index, self.count)

  def task(self, videos_sha256: str) -> ShardTask:
    """The task of this job; ``videos_sha256``: of the plan's ``videos.jsonl``."""
    return ShardTask(self.out, self.index, self.count, self.start,
                     self.start + len(self.videos), self.settings, videos_sha256)


@dataclasses.dataclass(frozen=True)
class ShardTask:
  """A shard job without its videos: what a Beam element carries. A runner ships the elements
  inside the job graph (Dataflow refuses graphs above ~10 MB; the 240 jobs of a Kinetics-400
  list pickle to 24 MB, their tasks to 11 KB), so the worker reads its videos from the plan's
  ``videos.jsonl`` in the output's state folder instead, once per worker process."""

  out: str
  index: int
  count: int
  start: int
  stop: int
  settings: Settings
  videos_sha256: str  # the plan file it was cut from: a changed file is an error, never used

  def job(self) -> ShardJob:
    videos = read_plan_videos(self.out, self.videos_sha256)[self.start:self.stop]
    return ShardJob(self.out, self.index, self.count, self.start, videos, self.settings)


def shard_name(index: int, count: int) -> str:
  return f"data-{index:05d}-of-{count:05d}.array_record"


def _state(out: str, name: str) -> epath.Path:
  return epath.Path(out) / STATE_DIR / name


def _entry_file(out: str, index: int) -> epath.Path:
  return _state(out, f"shard-{index:05d}.json")


@dataclasses.dataclass(frozen=True)
class Plan:
  """The videos of a list in order, cut into shards of ``records_per_shard`` list positions."""

  out: str
  videos: tuple[Video, ...]
  settings: Settings

  @property
  def num_shards(self) -> int:
    return len(list(_chunks(len(self.videos), self.settings.records_per_shard)))

  def jobs(self) -> list[ShardJob]:
    n = self.num_shards
    return [ShardJob(self.out, k, n, c.start, self.videos[c.start:c.stop], self.settings)
            for k, c in enumerate(_chunks(len(self.videos), self.settings.records_per_shard))]

  @functools.cached_property
  def videos_text(self) -> str:
    """The ``videos.jsonl`` of the plan: one ``[path, stored path, label]`` per line."""
    return "".join(json.dumps([v.path, v.rel, v.label]) + "\n" for v in self.videos)

  @functools.cached_property
  def videos_sha256(self) -> str:
    return hashlib.sha256(self.videos_text.encode()).hexdigest()

  def fingerprint(self) -> dict:
    """What identifies the output: the list's stored paths and labels and the settings."""
    listing = json.dumps([[v.rel, v.label] for v in self.videos]).encode()
    return {"list_sha256": hashlib.sha256(listing).hexdigest(), "num_videos": len(self.videos),
            **dataclasses.asdict(self.settings)}


def _chunks(n: int, size: int) -> Iterator[range]:
  for start in range(0, n, size):
    yield range(start, min(n, start + size))


def make_plan(source: Sequence[Record], prefix: str, out: str, settings: Settings) -> Plan:
  """The plan of any source of ``video`` records; paths are stored relative to ``prefix``."""
  videos = []
  for i in range(len(source)):
    rec = source[i]
    rel = os.path.relpath(rec["path"], prefix) if prefix else rec["path"]
    videos.append(Video(rec["path"], rel, int(rec["label"])))
  return Plan(out, tuple(videos), settings)


# ----------------------------------------------------------------------------- writing a shard
def write_shard(job: ShardJob) -> dict:
  """Encode the job's videos in list order and write its shard under a temporary name, then its
  index entry, then rename the shard (the rename marks it complete). Unreadable videos are left
  out and returned (and stored) as errors. Returns the index entry."""
  start = time.perf_counter()
  out = epath.Path(job.out)
  tmp = out / f".{job.name}.tmp-{uuid.uuid4().hex}"  # unique: a retried worker never collides
  local = not storage.is_url(job.out)
  workdir = None if local else tempfile.mkdtemp(prefix="prepare-")
  write_to = os.fspath(tmp) if local else os.path.join(workdir, job.name)
  try:
    shard, errors = _write_records(job, write_to)
    if not local:
      epath.Path(write_to).copy(tmp, overwrite=True)
  finally:
    if workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  entry = {"shard": shard, "errors": errors}
  _entry_file(job.out, job.index).write_text(json.dumps(entry))
  tmp.replace(out / job.name)  # replace: a retried worker may find its shard already there
  seconds = max(time.perf_counter() - start, 1e-9)
  print(f"prepare: shard {job.index + 1}/{job.count} written: {len(job.videos)} videos "
        f"({len(errors)} errors) in {seconds:.1f} s, {len(job.videos) / seconds:.2f} videos/s",
        file=sys.stderr, flush=True)
  return entry


def write_task(task: ShardTask) -> dict:
  """:func:`write_shard` for a task (a Beam element): its videos read from the plan."""
  return write_shard(task.job())


def _write_records(job: ShardJob, path: str) -> tuple[dict, list[dict]]:
  # group_size 1: every record is read on its own (random access).
  writer = ArrayRecordWriter(path, "group_size:1,uncompressed")
  count, videos, errors = 0, [], []
  try:
    for v in job.videos:
      try:
        records = make_records(v.path, v.rel, v.label, job.settings.short_side,
                               job.settings.fmt)
      except BAD_VIDEO_ERRORS as e:
        logging.warning("prepare: skipping %s: %s", v.path, e)
        errors.append({"path": v.rel, "kind": getattr(e, "kind", "unreadable"),
                       "reason": str(e)})
        continue
      videos.append(count)
      for r in records:
        writer.write(r)
      count += len(records)
  finally:
    writer.close()
  return {"name": job.name, "num_records": count, "videos": videos}, errors


# ----------------------------------------------------------------------------- the output folder
def pending_jobs(plan: Plan, overwrite: bool = False) -> list[ShardJob]:
  """The shards still to write: all with ``overwrite`` (the folder's previous output removed),
  else those not complete. Raises InputError when ``out`` holds another list's output."""
  out = epath.Path(plan.out)
  if overwrite:
    _remove_output(out)
  _check_same_plan(plan)
  _state(plan.out, PLAN_FILE).parent.mkdir(parents=True, exist_ok=True)
  _state(plan.out, PLAN_FILE).write_text(json.dumps(plan.fingerprint()))
  write_plan_videos(plan)  # a Beam worker reads its shard's videos there
  for stale in out.glob(".data-*.tmp-*"):  # shards a killed run left half-written
    stale.unlink()
  return [job for job in plan.jobs()
          if not ((out / job.name).exists() and _entry_file(plan.out, job.index).exists())]


def write_plan_videos(plan: Plan) -> None:
  """Write the plan's videos to ``out``'s state folder (``plan.videos_sha256`` is its hash)."""
  _state(plan.out, VIDEOS_FILE).write_text(plan.videos_text)


@functools.lru_cache(maxsize=4)  # keyed by the content's hash: never a stale list
def read_plan_videos(out: str, sha256: str) -> tuple[Video, ...]:
  """The videos :func:`write_plan_videos` wrote to ``out``'s state folder, in list order;
  raises when the file is no longer the one of hash ``sha256``."""
  path = _state(out, VIDEOS_FILE)
  text = path.read_text()
  if hashlib.sha256(text.encode()).hexdigest() != sha256:
    raise RuntimeError(f"{path} changed while the pipeline ran (another prepare into --out "
                       f"{out}?): run again")
  return tuple(Video(p, rel, int(label)) for p, rel, label in map(json.loads, text.splitlines()))


def _output_files(out: epath.Path) -> list[epath.Path]:
  if not out.exists():
    return []
  names = (INDEX_FILE, ERRORS_FILE, "skipped.txt", STATE_DIR)
  return [p for p in out.iterdir()
          if p.name in names or p.name.endswith(".array_record") or p.name.startswith(".data-")]


def _remove_output(out: epath.Path) -> None:
  for p in _output_files(out):
    if p.is_dir():
      p.rmtree()
    else:
      p.unlink()


def _check_same_plan(plan: Plan) -> None:
  out = epath.Path(plan.out)
  found = _output_files(out)
  if not found:
    return
  plan_file = _state(plan.out, PLAN_FILE)
  want = plan.fingerprint()
  have = json.loads(plan_file.read_text()) if plan_file.exists() else None
  if have == want:
    return
  short = lambda v: v[:12] if isinstance(v, str) and len(v) == 64 else v  # a sha256: its head
  what = ("shards of another list or settings (" + ", ".join(
    f"{k} {short(have.get(k))} here, {short(v)} now" for k, v in want.items()
    if have.get(k) != v) + ")"
    if have else f"shards that no plan file ({STATE_DIR}/{PLAN_FILE}) ties to a list")
  raise InputError(f"--out {plan.out} holds {what}: give another --out, or --overwrite to "
                   "replace them")


def finish(out: str, count: int) -> dict:
  """Write ``index.json`` and ``errors.jsonl`` from the index entries of all ``count`` shards
  (in shard order); returns the summary (videos, errors)."""
  entries = [json.loads(_entry_file(out, k).read_text()) for k in range(count)]
  errors = [e for entry in entries for e in entry["errors"]]
  shards = [entry["shard"] for entry in entries]
  summary = {"num_videos": sum(len(s["videos"]) for s in shards), "num_errors": len(errors)}
  index = {"version": INDEX_VERSION, "shards": shards, **summary}
  (epath.Path(out) / ERRORS_FILE).write_text("".join(json.dumps(e) + "\n" for e in errors))
  (epath.Path(out) / INDEX_FILE).write_text(json.dumps(index))
  return summary


def read_summary(out: str) -> dict:
  """The video and error counts of a finished output's ``index.json``."""
  index = json.loads((epath.Path(out) / INDEX_FILE).read_text())
  return {"num_videos": index["num_videos"], "num_errors": index["num_errors"]}


# ----------------------------------------------------------------------------- running
def prepare(
  list_file: str,
  prefix: str,
  out: str,
  *,
  short_side: int = 320,
  fmt: str = "mp4",
  records_per_shard: int = 1000,
  num_classes: int | None = None,
  sep: str = ",",
  runner: str = LOCAL_RUNNER,
  beam_args: Sequence[str] = (),
  overwrite: bool = False,
) -> list[str]:
  """Write ``OUT/data-XXXXX-of-YYYYY.array_record`` shards and ``OUT/index.json`` for the videos
  of an official list file; returns the shard paths."""
  source = VideoListSource(list_file, prefix, num_classes=num_classes, sep=sep)
  return prepare_source(source, prefix, out, short_side=short_side, fmt=fmt,
                        records_per_shard=records_per_shard, runner=runner, beam_args=beam_args,
                        overwrite=overwrite)


def prepare_source(
  source: Sequence[Record],
  prefix: str,
  out: str,
  *,
  short_side: int = 320,
  fmt: str = "mp4",
  records_per_shard: int = 1000,
  runner: str = LOCAL_RUNNER,
  beam_args: Sequence[str] = (),
  overwrite: bool = False,
) -> list[str]:
  """:func:`prepare` for any source of ``video`` records (a list file, the UCF-101 / HMDB-51
  split files); paths are stored relative to ``prefix``. ``runner`` is ``local`` (this process,
  shard after shard) or a Beam runner, given ``beam_args`` (Beam pipeline options)."""
  if runner != LOCAL_RUNNER:
    from uniformerv2_jax.data import prepare_beam

    prepare_beam.check_available(runner)
  if runner == "DataflowRunner":  # cloud workers read the videos and the plan, write shards
    local = [f"--{k} {v}" for k, v in (("prefix", prefix), ("out", out))
             if v and not storage.is_url(v)]
    if local:
      raise InputError(f"--runner DataflowRunner: {', '.join(local)} must be gs:// paths (the "
                       "workers read the videos and write the shards there)")
  if prefix and not epath.Path(prefix).exists():
    raise InputError(f"--prefix {prefix} does not exist")
  if not storage.is_url(out):
    check_can_write("--out", out)
  plan = make_plan(source, prefix, out, Settings(short_side, fmt, records_per_shard))
  start = time.perf_counter()
  jobs = pending_jobs(plan, overwrite)
  if runner == LOCAL_RUNNER:
    for job in jobs:
      write_shard(job)
    summary = finish(out, plan.num_shards)
  else:
    tasks = [job.task(plan.videos_sha256) for job in jobs]
    summary = prepare_beam.run(tasks, out, plan.num_shards, runner, beam_args)
  seconds = time.perf_counter() - start
  done = sum(len(j.videos) for j in jobs)
  print(f"prepare: {summary['num_videos']} videos in {plan.num_shards} shard(s), "
        f"{summary['num_errors']} errors (listed in {ERRORS_FILE}); this run encoded {done} "
        f"videos of {len(jobs)} shard(s) in {seconds:.1f} s ({done / max(seconds, 1e-9):.2f} "
        f"videos/s), kept {plan.num_shards - len(jobs)} complete shard(s)", file=sys.stderr)
  return [os.fspath(epath.Path(out) / shard_name(k, plan.num_shards))
          for k in range(plan.num_shards)]


def _default_runner() -> str:
  try:
    import apache_beam  # noqa: F401
  except ImportError:
    return LOCAL_RUNNER
  return "DirectRunner"


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description="Write UniFormerV2 ArrayRecord video shards. Arguments not listed here are "
                "Apache Beam pipeline options (e.g. --direct_num_workers 2, --project, "
                "--region, --temp_location for Dataflow).")
  parser.add_argument("--list", help="list file: path<SEP>label per line (any epath path)")
  parser.add_argument("--dataset", choices=splits.KINDS,
                      help="read the official split files of this dataset instead of --list "
                           "(--prefix is the folder the archives were extracted into)")
  parser.add_argument("--split", type=int, default=1, choices=splits.SPLITS)
  parser.add_argument("--subset", default="train", choices=("train", "test"))
  parser.add_argument("--prefix", default="", help="directory the list paths are relative to")
  parser.add_argument("--out", required=True, help="output folder (any epath path, gs://...)")
  parser.add_argument("--short-side", type=positive_int, default=320)
  parser.add_argument("--format", choices=("mp4", "jpeg"), default="mp4")
  parser.add_argument("--records-per-shard", type=positive_int, default=1000)
  parser.add_argument("--num-classes", type=positive_int, default=None)
  parser.add_argument("--sep", default=",")
  parser.add_argument("--runner", choices=(LOCAL_RUNNER, *BEAM_RUNNERS), default=None,
                      help="local: this process, one shard after another; a Beam runner "
                           "(needs apache-beam). Default: DirectRunner on all local cores when "
                           "apache-beam is installed, else local")
  parser.add_argument("--overwrite", action="store_true",
                      help="rewrite every shard (default: keep the complete shards of an "
                           "interrupted run of the same list and settings)")
  args, beam_args = parser.parse_known_args(argv)
  if (args.list is None) == (args.dataset is None):
    parser.error("give exactly one of --list and --dataset")
  runner = args.runner or _default_runner()
  if runner == LOCAL_RUNNER and beam_args:
    parser.error(f"unrecognized arguments: {' '.join(beam_args)} (Beam pipeline options need "
                 "a Beam --runner)")
  kw = dict(short_side=args.short_side, fmt=args.format, records_per_shard=args.records_per_shard,
            runner=runner, beam_args=beam_args, overwrite=args.overwrite)
  if args.dataset:
    source = splits.SplitSource(args.dataset, args.prefix, args.split, args.subset,
                                num_classes=args.num_classes)
    paths = prepare_source(source, args.prefix, args.out, **kw)
    labels = "".join(f"{name}\n" for name in source.class_names)
    (epath.Path(args.out) / "labels.txt").write_text(labels)
  else:
    paths = prepare(args.list, args.prefix, args.out, num_classes=args.num_classes, sep=args.sep,
                    **kw)
  print(f"wrote {len(paths)} shard(s) to {args.out}")


if __name__ == "__main__":
  # Run the imported module's main: Beam pickles ShardJob and write_shard by module name, which
  # must be uniformerv2_jax.data.prepare (importable by its workers), not __main__.
  from uniformerv2_jax.data import prepare as _module

  run_main(_module.main)
