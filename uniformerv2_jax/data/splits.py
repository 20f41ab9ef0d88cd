"""The official split files of UCF-101 and HMDB-51, read as they are distributed.

``root`` is the folder the official archives were extracted into:

- UCF-101: ``root/UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` beside ``root/ucfTrainTestlist/``,
  which holds ``classInd.txt`` (``1 ApplyEyeMakeup``: 1-based index, class name),
  ``trainlist0{1,2,3}.txt`` (``<Class>/<video>.avi <index>``) and ``testlist0{1,2,3}.txt``
  (``<Class>/<video>.avi``: the label is the folder's class through ``classInd.txt``). The files
  ship with CRLF line endings.
- HMDB-51: ``root/<class>/<video>.avi`` beside ``root/testTrainMulti_7030_splits/``, which
  holds one file per class and split, ``<class>_test_split{1,2,3}.txt``, with lines
  ``<video>.avi <flag>`` (1 train, 2 test, 0 unused in that split). HMDB-51 has no class index
  file: classes are numbered in sorted name order, the order every published HMDB-51 label map
  uses.

Both datasets have no validation set: ``val`` and ``test`` read the test list. A line that does
not parse, a class that ``classInd.txt`` does not know, or a train label that contradicts the
video's folder raises :class:`ListFileError` naming the file and line. Videos listed but absent
on disk are kept as records (the pipeline counts and logs them as skipped samples, like a
missing file of any list) and summarised in one warning when the split is read.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

from uniformerv2_jax import storage
from uniformerv2_jax.data.sources import ListFileError, Record
from uniformerv2_jax.errors import InputError

KINDS = ("ucf101", "hmdb51")
SPLITS = (1, 2, 3)
UCF101_LISTS = "ucfTrainTestlist"
UCF101_VIDEOS = "UCF-101"
HMDB51_LISTS = "testTrainMulti_7030_splits"
_HMDB51_FILE = re.compile(r"(?P<cls>.+)_test_split(?P<split>\d+)\.txt")
_HMDB51_FLAGS = {"train": 1, "test": 2}


def _lines(path: str) -> list[tuple[int, str]]:
  """(1-based line number, stripped text) of every non-blank line; CRLF or LF."""
  if not storage.isfile(path):
    raise ListFileError(f"split file not found: {path}")
  text = storage.read_text(path)
  return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise InputError(f"dataset.kind {kind!r}: split files exist for {', '.join(KINDS)}")


def _check(kind: str, split: int, subset: str) -> str:
  _check_kind(kind)
  if split not in SPLITS:
    raise InputError(f"dataset.split {split!r}: {kind} has splits 1, 2, 3")
  if subset not in ("train", "val", "test"):
    raise InputError(f"subset {subset!r}: expected train, val or test")
  return "train" if subset == "train" else "test"


# ----------------------------------------------------------------------------- UCF-101
def ucf101_classes(root: str) -> list[str]:
  """Class names in label order (``classInd.txt``: index 1 is label 0)."""
  path = os.path.join(root, UCF101_LISTS, "classInd.txt")
  names: list[str] = []
  for lineno, line in _lines(path):
    parts = line.split()
    if len(parts) != 2 or not parts[0].isdigit():
      raise ListFileError(f"{path}:{lineno}: expected '<index> <ClassName>', got {line!r}")
    if int(parts[0]) != len(names) + 1:
      raise ListFileError(f"{path}:{lineno}: index {parts[0]} out of order "
                          f"(expected {len(names) + 1})")
    names.append(parts[1])
  if not names:
    raise ListFileError(f"{path}: no classes")
  return names


def _ucf101_records(root: str, split: int, subset: str) -> tuple[str, list[Record]]:
  names = ucf101_classes(root)
  by_name = {n: i for i, n in enumerate(names)}
  path = os.path.join(root, UCF101_LISTS, f"{subset}list0{split}.txt")
  videos = os.path.join(root, UCF101_VIDEOS)
  records = []
  for lineno, line in _lines(path):
    parts = line.split()
    if len(parts) != (2 if subset == "train" else 1):
      want = "<Class>/<video>.avi <index>" if subset == "train" else "<Class>/<video>.avi"
      raise ListFileError(f"{path}:{lineno}: expected '{want}', got {line!r}")
    rel = parts[0]
    folder = rel.split("/", 1)[0] if "/" in rel else ""
    label = by_name.get(folder)
    if label is None:
      raise ListFileError(f"{path}:{lineno}: class folder {folder!r} of {rel!r} is not in "
                          f"{UCF101_LISTS}/classInd.txt")
    if subset == "train":
      if not parts[1].isdigit():
        raise ListFileError(f"{path}:{lineno}: class index {parts[1]!r} is not an integer")
      if int(parts[1]) - 1 != label:
        raise ListFileError(f"{path}:{lineno}: class index {parts[1]} is "
                            f"{_name_at(names, int(parts[1]) - 1)} but the video is in "
                            f"{folder}/ (index {label + 1})")
    records.append({"kind": "video", "path": os.path.join(videos, rel), "label": label,
                    "source_line": f"{path}:{lineno}"})
  return path, records


def _name_at(names: Sequence[str], i: int) -> str:
  return repr(names[i]) if 0 <= i < len(names) else "out of range"


# ----------------------------------------------------------------------------- HMDB-51
def _hmdb51_files(root: str) -> dict[str, dict[int, str]]:
  """class -> split -> split file path."""
  folder = os.path.join(root, HMDB51_LISTS)
  if not storage.isdir(folder):
    raise ListFileError(f"HMDB-51 split folder not found: {folder}")
  files: dict[str, dict[int, str]] = {}
  for name in sorted(storage.listdir(folder)):
    m = _HMDB51_FILE.fullmatch(name)
    if m:
      files.setdefault(m["cls"], {})[int(m["split"])] = os.path.join(folder, name)
  if not files:
    raise ListFileError(f"{folder}: no '<class>_test_split<N>.txt' files")
  return files


def _hmdb51_lines(path: str) -> list[tuple[int, str, int]]:
  """(line number, video file name, flag) of every line of one class's split file."""
  out = []
  for lineno, line in _lines(path):
    parts = line.split()
    if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
      raise ListFileError(f"{path}:{lineno}: expected '<video>.avi 0|1|2', got {line!r}")
    out.append((lineno, parts[0], int(parts[1])))
  return out


def hmdb51_classes(root: str) -> list[str]:
  """Class names in label order (sorted, as the split file names give them)."""
  return sorted(_hmdb51_files(root))


def _hmdb51_records(root: str, split: int, subset: str) -> tuple[str, list[Record]]:
  files = _hmdb51_files(root)
  want = _HMDB51_FLAGS[subset]
  records = []
  for label, cls in enumerate(sorted(files)):
    path = files[cls].get(split)
    if path is None:
      raise ListFileError(f"{os.path.join(root, HMDB51_LISTS)}: {cls}_test_split{split}.txt "
                          f"is missing (class {cls!r} has splits {sorted(files[cls])})")
    for lineno, video, flag in _hmdb51_lines(path):
      if flag == want:
        records.append({"kind": "video", "path": os.path.join(root, cls, video),
                        "label": label, "source_line": f"{path}:{lineno}"})
  return os.path.join(root, HMDB51_LISTS, f"*_test_split{split}.txt"), records


# ----------------------------------------------------------------------------- both
def class_names(kind: str, root: str) -> list[str]:
  """The label map a split defines (label i is entry i)."""
  _check_kind(kind)
  return ucf101_classes(root) if kind == "ucf101" else hmdb51_classes(root)


class SplitSource:
  """The videos of one official split and subset, as ``video`` records (see module doc)."""

  def __init__(self, kind: str, root: str, split: int = 1, subset: str = "train",
               num_classes: int | None = None):
    which = _check(kind, int(split), subset)
    read = _ucf101_records if kind == "ucf101" else _hmdb51_records
    self.list_file, self.records = read(root, int(split), which)
    self.class_names = class_names(kind, root)
    if num_classes is not None and num_classes != len(self.class_names):
      raise ListFileError(f"{self.list_file}: the split files define {len(self.class_names)} "
                          f"classes, the model has {num_classes} (set model.num_classes)")
    if not self.records:
      raise ListFileError(f"{self.list_file}: no {which} videos in split {split}")
    # Checked up front on local disks; on an object store each check is a request, so absent
    # videos there are found (and counted as skipped samples) when read.
    absent = ([] if storage.is_url(root) else
              [r for r in self.records if not os.path.isfile(r["path"])])
    if absent:
      logging.warning("%s split %d %s: %d of %d listed videos are absent (first: %s, %s); they "
                      "will be counted as skipped samples", kind, split, which, len(absent),
                      len(self.records), absent[0]["source_line"], absent[0]["path"])
    self.num_absent = len(absent)

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> Record:
    return self.records[index]


_UCF101_LIST = re.compile(r"(?P<subset>train|test)list0(?P<split>\d)\.txt")


def videos_of_split_file(path: str) -> list[str] | None:
  """The videos an official split file names, or None if ``path`` is not one: a UCF-101
  ``trainlist0N.txt`` / ``testlist0N.txt`` (beside ``classInd.txt``) gives its videos, an HMDB-51
  ``<class>_test_splitN.txt`` its test videos (flag 2). Lets predict and extract take a split
  file as their input, resolved the way training reads it."""
  path = storage.absolute(path)
  folder, name = storage.dirname(path), path.rstrip("/").rsplit("/", 1)[-1]
  root = storage.dirname(folder)
  m = _UCF101_LIST.fullmatch(name)
  if m and storage.isfile(os.path.join(folder, "classInd.txt")):
    _, records = _ucf101_records(root, int(m["split"]), m["subset"])
    return [r["path"] for r in records]
  m = _HMDB51_FILE.fullmatch(name)
  if m and os.path.basename(folder) == HMDB51_LISTS:
    return [os.path.join(root, m["cls"], video) for _, video, flag in _hmdb51_lines(path)
            if flag == _HMDB51_FLAGS["test"]]
  return None
