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

CLI::

    python -m uniformerv2_jax.data.prepare --list train.csv --prefix DIR --out OUT \
        [--short-side 320] [--format mp4|jpeg] [--records-per-shard 1000] [--num-classes K]
    python -m uniformerv2_jax.data.prepare --dataset ucf101|hmdb51 --split 1 --subset train \
        --prefix ROOT --out OUT   # the official split files; also writes OUT/labels.txt

Unreadable videos are skipped with a warning and listed in ``OUT/skipped.txt``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from collections.abc import Iterator, Sequence

import av
import numpy as np
from absl import logging
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from uniformerv2_jax.arg_types import positive_int
from uniformerv2_jax.data import splits
from uniformerv2_jax.data.sources import Record, VideoListSource, encode_record
from uniformerv2_jax.data.video import DecodeError, read_video
from uniformerv2_jax.errors import run_main


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


def _all_frames(path: str) -> tuple[np.ndarray, float]:
  with av.open(path) as c:
    s = c.streams.video[0]
    fps = float(s.average_rate or 30)
  clip = read_video(path, lambda length: np.arange(max(1, length)))
  # Keep only distinct decoded positions (metadata may overcount: trailing repeats dropped).
  last = int(clip.indices.max())
  return clip.frames[: last + 1], fps


INDEX_FILE = "index.json"
INDEX_VERSION = 2


def make_records(path: str, rel_path: str, label: int, short_side: int, fmt: str) -> list[bytes]:
  """The records of one video: its map record, then (``jpeg``) one record per frame."""
  frames, fps = _all_frames(path)
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


def _chunks(n: int, size: int) -> Iterator[range]:
  for start in range(0, n, size):
    yield range(start, min(n, start + size))


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
) -> list[str]:
  """Write ``OUT/data-XXXXX-of-YYYYY.array_record`` shards and ``OUT/index.json`` for the videos
  of an official list file; returns the shard paths."""
  source = VideoListSource(list_file, prefix, num_classes=num_classes, sep=sep)
  return prepare_source(source, prefix, out, short_side=short_side, fmt=fmt,
                        records_per_shard=records_per_shard)


def prepare_source(
  source: Sequence[Record],
  prefix: str,
  out: str,
  *,
  short_side: int = 320,
  fmt: str = "mp4",
  records_per_shard: int = 1000,
) -> list[str]:
  """:func:`prepare` for any source of ``video`` records (a list file, the UCF-101 / HMDB-51
  split files); paths are stored relative to ``prefix``."""
  os.makedirs(out, exist_ok=True)
  paths_in = [source[i]["path"] for i in range(len(source))]
  rel = [os.path.relpath(p, prefix) if prefix else p for p in paths_in]
  chunks = list(_chunks(len(source), records_per_shard))
  paths, skipped, shards = [], [], []
  for k, chunk in enumerate(chunks):
    name = f"data-{k:05d}-of-{len(chunks):05d}.array_record"
    path = os.path.join(out, name)
    # group_size 1: every record is read on its own (random access).
    writer = ArrayRecordWriter(path, "group_size:1,uncompressed")
    count, videos = 0, []
    try:
      for i in chunk:
        rec = source[i]
        try:
          records = make_records(rec["path"], rel[i], rec["label"], short_side, fmt)
        except (DecodeError, av.FFmpegError, OSError, ValueError) as e:
          logging.warning("prepare: skipping %s: %s", rec["path"], e)
          skipped.append(f"{rel[i]}\t{e}\n")
          continue
        videos.append(count)
        for r in records:
          writer.write(r)
        count += len(records)
    finally:
      writer.close()
    paths.append(path)
    shards.append({"name": name, "num_records": count, "videos": videos})
  with open(os.path.join(out, "skipped.txt"), "w") as f:
    f.writelines(skipped)
  with open(os.path.join(out, INDEX_FILE), "w") as f:
    json.dump({"version": INDEX_VERSION, "shards": shards}, f)
  return paths


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="Write UniFormerV2 ArrayRecord video shards.")
  parser.add_argument("--list", help="list file: path<SEP>label per line")
  parser.add_argument("--dataset", choices=splits.KINDS,
                      help="read the official split files of this dataset instead of --list "
                           "(--prefix is the folder the archives were extracted into)")
  parser.add_argument("--split", type=int, default=1, choices=splits.SPLITS)
  parser.add_argument("--subset", default="train", choices=("train", "test"))
  parser.add_argument("--prefix", default="", help="directory the list paths are relative to")
  parser.add_argument("--out", required=True)
  parser.add_argument("--short-side", type=positive_int, default=320)
  parser.add_argument("--format", choices=("mp4", "jpeg"), default="mp4")
  parser.add_argument("--records-per-shard", type=positive_int, default=1000)
  parser.add_argument("--num-classes", type=positive_int, default=None)
  parser.add_argument("--sep", default=",")
  args = parser.parse_args(argv)
  if (args.list is None) == (args.dataset is None):
    parser.error("give exactly one of --list and --dataset")
  kw = dict(short_side=args.short_side, fmt=args.format, records_per_shard=args.records_per_shard)
  if args.dataset:
    source = splits.SplitSource(args.dataset, args.prefix, args.split, args.subset,
                                num_classes=args.num_classes)
    paths = prepare_source(source, args.prefix, args.out, **kw)
    with open(os.path.join(args.out, "labels.txt"), "w", encoding="utf-8") as f:
      f.writelines(f"{name}\n" for name in source.class_names)
  else:
    paths = prepare(args.list, args.prefix, args.out, num_classes=args.num_classes, sep=args.sep,
                    **kw)
  print(f"wrote {len(paths)} shard(s) to {args.out}")


if __name__ == "__main__":
  run_main(main)
