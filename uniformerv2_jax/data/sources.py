"""Record sources: random-access sequences of plain dicts that grain can index and pickle.

A record names where a video's frames are and its label. Kinds:

- ``video``: a video file path (official list files ``path<SEP>label``);
- ``frames``: a folder of numbered images (SSv2 label files ``folder num_frames label``);
- ``array``: frames already decoded in memory (TFDS ``Video`` features);
- ``encoded``: video bytes (TFDS encoded video, or the project ArrayRecord format with mp4);
- ``jpegs``: a sequence of JPEG byte strings (project ArrayRecord format with jpeg: read lazily,
  one record per frame);
- ``image_folder``: a folder of image files of any names, in natural order (``img_2`` before
  ``img_10``): a frame folder handed to prediction without a list file.

A ``video`` or ``image_folder`` record with ``bgr`` set is returned in BGR channel order.

:func:`read_clip` turns any record plus a sampling rule into decoded uint8 frames.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgpack
import numpy as np

from uniformerv2_jax import storage
from uniformerv2_jax.data import video as video_lib
from uniformerv2_jax.data.video import Clip, DecodeError
from uniformerv2_jax.errors import InputError, InputNotFound

Record = dict[str, Any]
IndicesFn = Callable[[int], np.ndarray]

VIDEO_EXTENSIONS = frozenset({
  ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp",
  ".ogv", ".ts", ".mts", ".gif",
})
LIST_EXTENSIONS = frozenset({".txt", ".csv", ".lst", ".list"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class ListFileError(InputError):
  """A list file that cannot be used; the message names the file and line."""


def _read_lines(list_file: str) -> list[str]:
  if not storage.isfile(list_file):
    raise ListFileError(f"list file not found: {list_file}")
  return storage.read_text(list_file).splitlines()


def _list_lines(list_file: str) -> Iterator[tuple[int, str]]:
  """(1-based line number, text without surrounding blanks) of each non-blank line."""
  for lineno, raw in enumerate(_read_lines(list_file), start=1):
    line = raw.strip()
    if line:
      yield lineno, line


def _parse_label(text: str, list_file: str, lineno: int, line: str, num_classes: int | None) -> int:
  try:
    label = int(text)
  except ValueError:
    raise ListFileError(
      f"{list_file}:{lineno}: label {text!r} is not an integer in {line!r}"
    ) from None
  if label < 0 or (num_classes is not None and label >= num_classes):
    raise ListFileError(
      f"{list_file}:{lineno}: label {label} outside [0, {num_classes}) in {line!r}"
    )
  return label


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


def _resolve(path: str, bases: Sequence[str]) -> str:
  if storage.isabs(path):
    return path
  for base in bases:
    cand = os.path.join(base, path)
    if storage.exists(cand):
      return cand
  return os.path.join(bases[0], path) if bases else path


def _resolve_line(line: str, bases: Sequence[str]) -> str:
  """A list line's video: the first reading of it (as written, then without labels) that
  exists, as given or against ``bases``; a missing video keeps the label-free reading (it is
  reported per video later)."""
  readings = list(dict.fromkeys([line, *_label_free_paths(line)]))
  for r in readings:
    if storage.exists(r) or (not storage.isabs(r)
                             and any(storage.exists(os.path.join(b, r)) for b in bases)):
      return _resolve(r, bases)
  return _resolve(readings[1] if len(readings) > 1 else line, bases)


def list_file_videos(list_file: str, root: str = "") -> list[str]:
  """The videos a list file names, labels optional: official ``path,label`` / ``path label``
  lines, Something-Something ``folder num_frames label`` lines, or bare paths (``#`` comments
  and blank lines skipped). Relative paths resolve against ``root``, the list's folder, then
  the working directory; an official UCF-101 / HMDB-51 split file is read as training reads it.
  """
  from uniformerv2_jax.data import splits  # splits builds on this module

  official = splits.videos_of_split_file(list_file)
  if official is not None:
    return official
  bases = [b for b in (root, storage.dirname(storage.absolute(list_file)), os.getcwd()) if b]
  videos = [_resolve_line(line, bases) for _, line in _list_lines(list_file)
            if not line.startswith("#")]
  if not videos:
    raise ListFileError(f"list file {list_file} names no videos")
  return videos


def _natural_key(name: str) -> list[Any]:
  # Digit runs compare as numbers (img_2 < img_10); re.split keeps str/int positions aligned.
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def frame_files(folder: str) -> list[str]:
  """The image files directly in ``folder``, in natural order (the frames of a frame folder)."""
  names = [f for f in storage.listdir(folder)
           if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
           and storage.isfile(os.path.join(folder, f))]
  return [os.path.join(folder, f) for f in sorted(names, key=_natural_key)]


def _scan_folder(path: str) -> list[str]:
  """Video files and frame folders under ``path`` (recursively), sorted. A directory with
  image files and no video files is one frame-folder video; its subdirectories are still
  searched (a nested layout stays usable)."""
  found = []
  for d, _, files in storage.walk(path):
    exts = {os.path.splitext(f)[1].lower() for f in files}
    videos = [os.path.join(d, f) for f in files
              if os.path.splitext(f)[1].lower() in VIDEO_EXTENSIONS]
    found.extend(videos)
    if not videos and exts & IMAGE_EXTENSIONS:
      found.append(d)
  return sorted(found)


def find_videos(inputs: str | os.PathLike | Sequence[str | os.PathLike],
                root: str = "") -> list[str]:
  """The videos of ``inputs``: a video file; a frame folder (image files, no videos: one
  video); a folder (its video files and frame folders, recursively, sorted); a list file
  (``.txt``/``.csv``/``.lst``, see :func:`list_file_videos`); or a sequence of any of these.
  A missing video named by a list is kept (reported per video later).
  """
  if isinstance(inputs, (list, tuple)):
    return [p for item in inputs for p in find_videos(item, root)]
  path = os.fspath(inputs)
  if storage.isdir(path):
    found = _scan_folder(path)
    if not found:
      raise InputNotFound(
        f"no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) and no frame folders (images: "
        f"{', '.join(sorted(IMAGE_EXTENSIONS))}) in {path}")
    return found
  if not storage.exists(path):
    raise InputNotFound(f"input {path} does not exist (give a video file, a frame folder, a "
                            "folder of videos or a list file)")
  if os.path.splitext(path)[1].lower() not in LIST_EXTENSIONS:
    return [path]
  return list_file_videos(path, root)


def video_record(path: str, *, bgr: bool = False) -> Record:
  """The record of a video file or a frame folder found by :func:`find_videos` (label 0)."""
  kind = "image_folder" if storage.isdir(path) else "video"
  return {"kind": kind, "path": path, "label": 0, "bgr": bgr}


class _ListSource:
  """Records parsed from a list file, held in memory."""

  records: list[Record]

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> Record:
    return self.records[index]


class VideoListSource(_ListSource):
  """Official Kinetics-style list file: one ``relative/path.mp4<SEP>label`` per line.

  The separator defaults to ',' (the recipes' ``PATH_LABEL_SEPARATOR``); a line without it
  falls back to the last whitespace. Paths are joined to ``prefix`` (absolute paths stay).
  Blank lines are skipped; anything else that does not parse raises :class:`ListFileError`.
  """

  def __init__(
    self,
    list_file: str,
    prefix: str = "",
    num_classes: int | None = None,
    sep: str = ",",
  ):
    self.list_file = list_file
    self.records: list[Record] = []
    for lineno, line in _list_lines(list_file):
      if sep and sep in line:
        path, label_text = line.rsplit(sep, 1)
      else:
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
          raise ListFileError(f"{list_file}:{lineno}: expected 'path{sep}label', got {line!r}")
        path, label_text = parts
      path = path.strip()
      if not path:
        raise ListFileError(f"{list_file}:{lineno}: empty path in {line!r}")
      label = _parse_label(label_text.strip(), list_file, lineno, line, num_classes)
      self.records.append({"kind": "video", "path": os.path.join(prefix, path), "label": label})

class FrameFolderListSource(_ListSource):
  """SSv2-style label file: ``folder num_frames label`` per line, frames ``folder/template``.

  ``num_frames`` is the sampling length L (the official loader trusts the file, not the disk).
  Frame files are 1-based (``img_00001.jpg`` first), hence ``index_base`` 1. ``bgr`` defaults
  to True because the official SSv2 loader decodes with OpenCV and feeds BGR to the model.
  """

  def __init__(
    self,
    list_file: str,
    prefix: str = "",
    num_classes: int | None = None,
    template: str = "img_{:05d}.jpg",
    bgr: bool = True,
    index_base: int = 1,
  ):
    self.list_file = list_file
    self.records: list[Record] = []
    for lineno, line in _list_lines(list_file):
      parts = line.split()
      if len(parts) != 3:
        raise ListFileError(
          f"{list_file}:{lineno}: expected 'folder num_frames label', got {line!r}"
        )
      folder, n_text, label_text = parts
      try:
        n = int(n_text)
      except ValueError:
        raise ListFileError(
          f"{list_file}:{lineno}: frame count {n_text!r} is not an integer"
        ) from None
      if n < 1:
        raise ListFileError(f"{list_file}:{lineno}: frame count {n} < 1")
      label = _parse_label(label_text, list_file, lineno, line, num_classes)
      self.records.append(
        {
          "kind": "frames",
          "path": os.path.join(prefix, folder),
          "num_frames": n,
          "label": label,
          "template": template,
          "bgr": bgr,
          "index_base": index_base,
        }
      )

class TfdsSource:
  """A TFDS dataset read with ``tfds.data_source`` (random access, no TensorFlow graph).

  ``data_source`` may be given directly (anything with ``__len__``/``__getitem__`` returning
  feature dicts), which is how tests run without TFDS. The video feature may be decoded frames
  ``[T, H, W, 3]`` or encoded video bytes.
  """

  def __init__(
    self,
    name: str | None = None,
    split: str = "train",
    data_dir: str | None = None,
    video_key: str = "video",
    label_key: str = "label",
    data_source: Any = None,
  ):
    if data_source is None:
      if name is None:
        raise ValueError("TfdsSource needs a dataset name or a data_source")
      try:
        import tensorflow_datasets as tfds
      except ImportError as e:
        raise ImportError(
          "TfdsSource needs tensorflow_datasets: pip install tensorflow-datasets"
        ) from e
      if data_dir:
        check_local_array_record(data_dir, "TFDS data_dir")
      data_source = tfds.data_source(name, split=split, data_dir=data_dir)
    self.data_source = data_source
    self.name = name or type(data_source).__name__
    self.video_key, self.label_key = video_key, label_key

  def __len__(self) -> int:
    return len(self.data_source)

  def __getitem__(self, index: int) -> Record:
    ex = self.data_source[index]
    vid = ex[self.video_key]
    label = int(np.asarray(ex[self.label_key]))
    path = f"{self.name}[{index}]"
    if isinstance(vid, (bytes, bytearray, np.bytes_)):
      return {"kind": "encoded", "data": bytes(vid), "label": label, "path": path}
    return {
      "kind": "array",
      "frames": np.asarray(vid),
      "label": label,
      "path": path,
    }


# ----------------------------------------------------------------------------- ArrayRecord
def check_local_array_record(path: str | os.PathLike, what: str) -> None:
  """ArrayRecord files must be local: the ``array_record`` reader opens paths with the local
  file API (given a ``gs://`` name it does not fail, it hangs), so a URL is refused here."""
  if storage.is_url(path):
    raise InputError(
      f"{what} {os.fspath(path)}: ArrayRecord files are read from local paths only (the "
      "array_record reader cannot open URLs); mount the bucket (e.g. gcsfuse --implicit-dirs "
      "BUCKET /mnt/BUCKET) and give the mounted path")

def encode_record(rec: Record) -> bytes:
  """Serialise a project ArrayRecord entry (msgpack; no pickle so shards are safe to read)."""
  return msgpack.packb(rec, use_bin_type=True)


def decode_record(data: bytes) -> Record:
  return msgpack.unpackb(data, raw=False)


class ArrayRecordSource:
  """Shards written by :mod:`uniformerv2_jax.data.prepare` (``*.array_record``).

  With the ``index.json`` that ``prepare`` writes next to the shards, only the video map records
  are videos and a ``jpeg`` video's frames are read one record each, on demand (the record's
  ``frames`` is a lazy sequence). Shards without an index (written before it existed) hold one
  record per video with every frame inside.
  """

  def __init__(self, paths: str | Sequence[str]):
    import grain

    check_local_array_record(paths if isinstance(paths, str) else next(iter(paths), ""),
                             "ArrayRecord shards")
    if isinstance(paths, str):
      paths = (
        sorted(os.path.join(paths, p) for p in os.listdir(paths) if p.endswith(".array_record"))
        if os.path.isdir(paths)
        else [paths]
      )
    if not paths:
      raise FileNotFoundError("no .array_record shards given")
    self.paths = list(paths)
    self._source = grain.sources.ArrayRecordDataSource(self.paths)
    self._videos = _video_records(self.paths)

  def __len__(self) -> int:
    return len(self._source) if self._videos is None else len(self._videos)

  def __getitem__(self, index: int) -> Record:
    at = index if self._videos is None else self._videos[index]
    rec = decode_record(self._source[at])
    if rec["format"] == "mp4":
      return {
        "kind": "encoded",
        "data": rec["video"],
        "label": rec["label"],
        "path": rec["path"],
      }
    frames = rec["frames"] if "frames" in rec else _FrameRecords(self._source, at + 1, rec)
    return {
      "kind": "jpegs",
      "frames": frames,
      "label": rec["label"],
      "path": rec["path"],
      "bgr": False,
    }


def _video_records(paths: Sequence[str]) -> list[int] | None:
  """Global record index of every video's map record, from ``index.json``; None without one."""
  from uniformerv2_jax.data.prepare import INDEX_FILE, INDEX_VERSION

  index_path = os.path.join(os.path.dirname(os.path.abspath(paths[0])), INDEX_FILE)
  if not os.path.isfile(index_path):
    return None
  with open(index_path, encoding="utf-8") as f:
    index = json.load(f)
  if index.get("version") != INDEX_VERSION:
    raise InputError(f"{index_path}: index version {index.get('version')} != {INDEX_VERSION}")
  shards = {s["name"]: s for s in index["shards"]}
  videos, offset = [], 0
  for path in paths:  # the order grain concatenates the shards in
    shard = shards.get(os.path.basename(path))
    if shard is None:
      raise InputError(f"{path} is not listed in {index_path}")
    videos.extend(offset + v for v in shard["videos"])
    offset += shard["num_records"]
  return videos


class _FrameRecords(Sequence):
  """The JPEG frames of one video, one ArrayRecord read per frame asked for."""

  def __init__(self, source: Any, first: int, rec: Record):
    self.source, self.first, self.count = source, first, int(rec["frame_records"])

  def __len__(self) -> int:
    return self.count

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(self.count))]
    if not -self.count <= i < self.count:
      raise IndexError(i)
    return self.source[self.first + (i % self.count)]


# ----------------------------------------------------------------------------- reading frames
def read_clip(
  record: Record,
  indices_for_length: IndicesFn,
  *,
  max_pixels: int = video_lib.DEFAULT_MAX_PIXELS,
  seek_threshold: int | None = None,
  decode_threads: str = "AUTO",
  selective: bool = True,
) -> Clip:
  """Decode the frames ``indices_for_length(L)`` (0-based positions) of any record kind.

  ``decode_threads``: FFmpeg ``thread_type`` for video records ('AUTO' default; 'NONE' costs
  ~15-25% less CPU per clip, the better choice when worker processes already fill every core).
  ``selective``: read H.264-in-MP4 video records selectively (bit-identical; see
  :func:`uniformerv2_jax.data.video.read_video`).
  """
  kind = record["kind"]
  path = record.get("path", "<record>")
  if kind in ("video", "encoded"):  # a file path, or the encoded bytes of an ArrayRecord
    clip = video_lib.read_video(
      record["path"] if kind == "video" else record["data"],
      indices_for_length,
      label=None if kind == "video" else path,
      max_pixels=max_pixels,
      seek_threshold=seek_threshold,
      threads=decode_threads,
      selective=selective,
    )
    return _to_bgr(clip) if kind == "video" and record.get("bgr") else clip
  if kind == "image_folder":
    files = frame_files(record["path"])
    if not files:
      raise DecodeError("no_frames", path, "no image files")
    idx = np.minimum(np.asarray(indices_for_length(len(files)), np.int64), len(files) - 1)
    frames = video_lib.read_image_files([files[i] for i in idx], label=path,
                                        bgr=bool(record.get("bgr")), max_pixels=max_pixels)
    return Clip(frames=frames, indices=idx, num_frames=len(files))
  if kind == "frames":
    length = int(record["num_frames"])
    idx = np.asarray(indices_for_length(length), np.int64)
    frames = video_lib.read_frame_folder(
      record["path"],
      idx + int(record.get("index_base", 1)),
      record.get("template", "img_{:05d}.jpg"),
      bgr=bool(record.get("bgr", False)),
      max_pixels=max_pixels,
    )
    return Clip(frames=frames, indices=idx, num_frames=length)
  if kind == "jpegs":
    jpegs = record["frames"]
    if not jpegs:
      raise DecodeError("no_frames", path)
    idx = np.minimum(np.asarray(indices_for_length(len(jpegs)), np.int64), len(jpegs) - 1)
    frames = video_lib.decode_jpeg_frames(jpegs, idx, bgr=bool(record.get("bgr")), label=path)
    return Clip(frames=frames, indices=idx, num_frames=len(jpegs))
  if kind == "array":
    arr = record["frames"]
    if arr.ndim != 4 or arr.shape[0] == 0:
      raise DecodeError("no_frames", path, f"frames of shape {arr.shape}")
    if arr.shape[1] * arr.shape[2] > max_pixels:
      raise DecodeError("too_large", path)
    idx = np.minimum(np.asarray(indices_for_length(len(arr)), np.int64), len(arr) - 1)
    return Clip(frames=np.asarray(arr[idx], np.uint8), indices=idx, num_frames=len(arr))
  raise ValueError(f"unknown record kind {kind!r}")


def _to_bgr(clip: Clip) -> Clip:
  # Decoders give RGB; recipes trained on OpenCV frames (SSv1/SSv2) want BGR.
  return dataclasses.replace(clip, frames=np.ascontiguousarray(clip.frames[..., ::-1]))
