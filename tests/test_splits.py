"""UCF-101 and HMDB-51 read from their official split files: tiny archives in the official
layouts (CRLF line endings as UCF-101 ships them, HMDB-51's trailing spaces) are parsed back to
exactly what was written, malformed files give errors naming the file and line, the same readers
feed prepare and predict, and a short fine-tuning of a converted checkpoint beats chance and is
evaluated on the three splits with ``--eval_splits``."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import FIXTURES, REPO
from tests.fake_archives import HMDB_CLASSES, UCF_CLASSES, make_hmdb51, make_ucf101
from uniformerv2_jax.data import splits
from uniformerv2_jax.data.sources import ArrayRecordSource, ListFileError


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("ucf"))
  return root, make_ucf101(root)


def test_ucf101_lists_parse_back_to_what_was_written(ucf_root):
  root, expected = ucf_root
  assert splits.class_names("ucf101", root) == UCF_CLASSES
  for split in (1, 2, 3):
    for subset in ("train", "test"):
      src = splits.SplitSource("ucf101", root, split, subset, num_classes=3)
      got = [(os.path.relpath(r["path"], f"{root}/UCF-101"), r["label"]) for r in src.records]
      assert got == expected[split, subset], (split, subset)
  val = splits.SplitSource("ucf101", root, 2, "val")  # no validation set: the test list
  assert [r["path"] for r in val.records] == [
    f"{root}/UCF-101/{rel}" for rel, _ in expected[2, "test"]]


def test_hmdb51_split_files_parse_back_to_what_was_written(tmp_path):
  root = str(tmp_path)
  expected = make_hmdb51(root)
  assert splits.class_names("hmdb51", root) == sorted(HMDB_CLASSES)
  for split in (1, 2, 3):
    for subset in ("train", "test"):
      src = splits.SplitSource("hmdb51", root, split, subset)
      got = sorted(((os.path.relpath(r["path"], root), r["label"]) for r in src.records),
                   key=lambda t: (t[1], t[0]))
      assert got == expected[split, subset], (split, subset)


@pytest.mark.parametrize("edit, message", [
  (("classInd.txt", 2, "2ApplyEyeMakeup"), r"classInd.txt:2: expected '<index> <ClassName>'"),
  (("classInd.txt", 2, "5 ApplyEyeMakeup"), r"classInd.txt:2: index 5 out of order"),
  (("trainlist01.txt", 3, "Juggling/v_Juggling_g02_c01.avi 1"),
   r"trainlist01.txt:3: class folder 'Juggling' .* not in ucfTrainTestlist/classInd.txt"),
  (("trainlist01.txt", 1, "Basketball/v_Basketball_g02_c01.avi 2"),
   r"trainlist01.txt:1: class index 2 is 'ApplyEyeMakeup' but the video is in Basketball/"),
  (("trainlist01.txt", 1, "Basketball/v_Basketball_g02_c01.avi"),
   r"trainlist01.txt:1: expected '<Class>/<video>.avi <index>'"),
  (("testlist01.txt", 2, "Basketball/v_Basketball_g01_c02.avi 1"),
   r"testlist01.txt:2: expected '<Class>/<video>.avi'"),
])
def test_malformed_ucf101_files_are_named(tmp_path, edit, message):
  root = str(tmp_path)
  make_ucf101(root, with_videos=False)
  name, lineno, text = edit
  path = f"{root}/ucfTrainTestlist/{name}"
  lines = open(path, newline="").read().split("\r\n")
  lines[lineno - 1] = text
  open(path, "w", newline="").write("\r\n".join(lines))
  subset = "test" if name.startswith("test") else "train"
  with pytest.raises(ListFileError, match=message):
    splits.SplitSource("ucf101", root, 1, subset)


def test_malformed_hmdb51_files_are_named(tmp_path):
  root = str(tmp_path)
  make_hmdb51(root)
  path = f"{root}/testTrainMulti_7030_splits/fall_floor_test_split2.txt"
  lines = open(path).read().splitlines()
  lines[3] = "fall_floor_video_3.avi 3"
  open(path, "w").write("\n".join(lines))
  with pytest.raises(ListFileError, match=r"fall_floor_test_split2.txt:4: expected "
                                          r"'<video>.avi 0\|1\|2'"):
    splits.SplitSource("hmdb51", root, 2, "train")
  os.remove(f"{root}/testTrainMulti_7030_splits/brush_hair_test_split3.txt")
  with pytest.raises(ListFileError, match=r"brush_hair_test_split3.txt is missing"):
    splits.SplitSource("hmdb51", root, 3, "test")
  with pytest.raises(ListFileError, match=r"define 3 classes, the model has 51"):
    splits.SplitSource("hmdb51", root, 1, "train", num_classes=51)
  with pytest.raises(ValueError, match=r"dataset.split 4: hmdb51 has splits 1, 2, 3"):
    splits.SplitSource("hmdb51", root, 4, "train")


def test_absent_videos_are_kept_and_counted(tmp_path, caplog):
  root = str(tmp_path)
  expected = make_ucf101(root, with_videos=False)
  with caplog.at_level(logging.WARNING):
    src = splits.SplitSource("ucf101", root, 1, "test")
  # Kept as records (the pipeline counts each one as a skipped sample when it fails to open).
  assert len(src) == len(expected[1, "test"]) == src.num_absent
  assert f"6 of 6 listed videos are absent (first: {root}/ucfTrainTestlist/testlist01.txt:1" \
    in caplog.text


def test_prepare_and_predict_read_the_split_files(ucf_root, tmp_path):
  from uniformerv2_jax.data import prepare
  from uniformerv2_jax.predict import find_videos

  root, expected = ucf_root
  out = str(tmp_path / "shards")
  prepare.main(["--dataset", "ucf101", "--split", "1", "--subset", "test", "--prefix", root,
                "--out", out, "--short-side", "32", "--runner", "local"])
  shards = ArrayRecordSource(out)
  assert [(shards[i]["path"], shards[i]["label"]) for i in range(len(shards))] == [
    (f"UCF-101/{rel}", label) for rel, label in expected[1, "test"]]
  assert open(f"{out}/labels.txt").read().splitlines() == UCF_CLASSES
  listed = find_videos(f"{root}/ucfTrainTestlist/testlist01.txt")
  assert listed == [f"{root}/UCF-101/{rel}" for rel, _ in expected[1, "test"]]


def test_finetune_from_converted_checkpoint_then_eval_three_splits(ucf_root, tmp_path):
  from uniformerv2_jax.checkpoint import save_model
  from uniformerv2_jax.convert import import_model
  from uniformerv2_jax.train import train_and_evaluate
  from uniformerv2_jax.variants import config_from_official

  root, _ = ucf_root
  # The tiny official K400 model stands in for the released K400 checkpoint.
  k400 = str(tmp_path / "k400")
  imp = import_model(FIXTURES / "tiny_k400" / "model.npz",
                     config_from_official(FIXTURES / "tiny_k400" / "config.json"))
  save_model(k400, imp.model)
  from uniformerv2_jax.configs import ucf101

  config = ucf101.get_config("b16_8x224")
  assert config.dataset.kind == "ucf101" and config.init_head == "new"
  tiny = dataclasses.asdict(imp.model.cfg.replace(num_classes=3))
  settings = {
    **{f"model.{k}": v for k, v in tiny.items() if config.model[k] != v},
    "dataset.root": root, "init_from": k400, "aug.crop_size": 64, "sampling.test_clips": 1,
    "sampling.test_crops": 1, "batch_size": 6, "remat_policy": "none"}
  overrides = [f"--config.{k}={v!r}".replace(" ", "") if isinstance(v, tuple)
               else f"--config.{k}={v}" for k, v in settings.items()]
  train_settings = {**settings, "total_steps": 16, "optim.base_lr": 1e-3,
                    "optim.warmup_epochs": 0.0, "aug.rand_augment": "",
                    "eval_every_steps": 1000}
  for key, value in train_settings.items():
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = value
  assert config.dataset.kind == "ucf101" and config.init_head == "new"
  workdir = str(tmp_path / "run")
  summary = train_and_evaluate(config, workdir)
  # 6 test videos of 3 colour classes: chance is 1/3; a working fine-tune separates them.
  assert summary["num_videos"] == 6 and summary["top1"] >= 5 / 6, summary

  # The 3-split evaluation: {split} in --checkpoint names each split's run; here every split
  # points at the split-1 run (copies), so split 1 must reproduce the training run's own eval.
  for n in (2, 3):
    shutil.copytree(workdir, str(tmp_path / f"run{n}"))
  os.rename(workdir, str(tmp_path / "run1"))
  out = subprocess.run(
    [sys.executable, "main.py", "--mode", "eval", "--config", "configs/ucf101.py:b16_8x224",
     "--checkpoint", str(tmp_path / "run{split}"), "--eval_splits", "1,2,3", *overrides],
    cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  per_split, final = rows[:-1], rows[-1]
  assert [r["split"] for r in per_split] == [1, 2, 3]
  assert [r["checkpoint"] for r in per_split] == [str(tmp_path / f"run{n}") for n in (1, 2, 3)]
  assert per_split[0]["top1"] == summary["top1"] and per_split[0]["num_videos"] == 6
  assert final["splits"] == [1, 2, 3]
  assert final["mean_top1"] == pytest.approx(np.mean([r["top1"] for r in per_split]))


def test_eval_splits_refuses_other_datasets(tmp_path):
  out = subprocess.run(
    [sys.executable, "main.py", "--mode", "eval", "--config", "configs/demo.py",
     "--checkpoint", str(tmp_path), "--eval_splits", "1,2,3"],
    cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "--eval_splits needs dataset.kind ucf101 or hmdb51, not 'demo'" in out.stderr
