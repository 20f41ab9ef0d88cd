"""Tiny UCF-101 and HMDB-51 archives in their official layouts (for the split-file tests and the
README's transfer commands): split files as distributed (CRLF line endings, HMDB-51's trailing
spaces), short colour-coded videos (one colour per class, so a few steps learn them)."""

from __future__ import annotations

import os

import numpy as np

from uniformerv2_jax.data.demo_dataset import write_mp4

# classInd.txt order on purpose not alphabetical: the label map must follow the file.
UCF_CLASSES = ["Basketball", "ApplyEyeMakeup", "HandstandPushups"]
UCF_COLOURS = [(220, 40, 40), (40, 220, 40), (40, 40, 220)]
HMDB_CLASSES = ["ride_bike", "brush_hair", "fall_floor"]  # underscores, as HMDB-51 names
GROUPS, CLIPS = 3, 2  # split s tests on group s, trains on the others


def _file_stem(cls: str) -> str:
  # The released files spell one class differently from its folder (v_HandStandPushups_*).
  return "HandStandPushups" if cls == "HandstandPushups" else cls


def _video(path: str, colour, seed: int) -> None:
  rng = np.random.default_rng(seed)
  frames = np.empty((16, 64, 80, 3), np.uint8)
  frames[:] = np.asarray(colour, np.uint8)
  frames = np.clip(frames + rng.integers(-20, 21, frames.shape), 0, 255).astype(np.uint8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  write_mp4(path, frames)


def _write_crlf(path: str, lines: list[str]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="") as f:
    f.write("".join(f"{line}\r\n" for line in lines))


def make_ucf101(root: str, with_videos: bool = True) -> dict:
  """The official UCF-101 layout; returns what each split's lists name: {(split, subset):
  [(path relative to UCF-101/, label)]}."""
  _write_crlf(f"{root}/ucfTrainTestlist/classInd.txt",
              [f"{i + 1} {c}" for i, c in enumerate(UCF_CLASSES)])
  expected = {}
  for split in (1, 2, 3):
    train, test = [], []
    for label, cls in enumerate(UCF_CLASSES):
      for g in range(1, GROUPS + 1):
        for c in range(1, CLIPS + 1):
          rel = f"{cls}/v_{_file_stem(cls)}_g{g:02d}_c{c:02d}.avi"
          (test if g == split else train).append((rel, label))
    _write_crlf(f"{root}/ucfTrainTestlist/trainlist0{split}.txt",
                [f"{rel} {label + 1}" for rel, label in train])
    _write_crlf(f"{root}/ucfTrainTestlist/testlist0{split}.txt", [rel for rel, _ in test])
    expected[split, "train"], expected[split, "test"] = train, test
  if with_videos:
    for i, (rel, label) in enumerate(expected[1, "train"] + expected[1, "test"]):
      _video(f"{root}/UCF-101/{rel}", UCF_COLOURS[label], seed=i)
  return expected


def make_hmdb51(root: str) -> dict:
  """The official HMDB-51 layout (split files only); returns {(split, subset): [(path relative
  to root, label)]} with labels in sorted class order."""
  expected = {}
  order = sorted(HMDB_CLASSES)
  for split in (1, 2, 3):
    sets = {"train": [], "test": []}
    for cls in HMDB_CLASSES:
      lines = []
      for v in range(6):
        flag = (v + split) % 3  # each video is train, test and unused across the splits
        name = f"{cls}_video_{v}_u_nm_np1_fr_med_{v}.avi"
        lines.append(f"{name} {flag} ")  # the released files end each line with a space
        if flag:
          sets["train" if flag == 1 else "test"].append((f"{cls}/{name}", order.index(cls)))
      _write_crlf(f"{root}/testTrainMulti_7030_splits/{cls}_test_split{split}.txt", lines)
    for subset, items in sets.items():
      expected[split, subset] = sorted(items, key=lambda t: (t[1], t[0]))
  return expected
