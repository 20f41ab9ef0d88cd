"""Mistakes a user makes, run as the user runs them (the real command in a subprocess): each ends
with exit status 2 and one line on stderr naming the key, file or value, no traceback, before
any work (no workdir created, no checkpoint touched); partial failures of predict exit 3 with
the results kept. Ctrl-C during training is tested in test_train_loop.py beside the resume
checks it shares."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from uniformerv2_jax.checkpoint import checkpoint_steps
from uniformerv2_jax.data import demo_dataset

TINY = "tests/tiny_train_config.py"


def run(*args: str, cwd=REPO, timeout: int = 300) -> subprocess.CompletedProcess:
  """``python -m uniformerv2_jax ARGS`` (the installed command's code) from ``cwd``."""
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  return subprocess.run([sys.executable, "-m", "uniformerv2_jax", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def assert_user_error(r: subprocess.CompletedProcess, *names: str, status: int = 2) -> str:
  """Exit ``status``, no traceback, and a final ``error:`` line that names each of ``names``."""
  assert r.returncode == status, (r.returncode, r.stderr[-3000:])
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  errors = [ln for ln in lines if ln.startswith("error:") or ": error: " in ln]
  assert len(errors) == 1, r.stderr[-3000:]
  for name in names:
    assert name in errors[0], (name, errors[0])
  return errors[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
  root = tmp_path_factory.mktemp("demo")
  demo_dataset.generate(str(root), seed=5, train_per_class=1, val_per_class=1)
  return str(root)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> str:
  """A 2-step run of the tiny config (width 32), as a workdir."""
  workdir = str(tmp_path_factory.mktemp("run") / "run")
  r = run("train", "--config", f"{TINY}:{dataset}", "--workdir", workdir,
          "--config.total_steps=2", "--config.eval_every_steps=2")
  assert r.returncode == 0, r.stderr[-3000:]
  return workdir


def _snapshot(workdir: str) -> dict[str, int]:
  """Every file under ``workdir`` with its size (what a refused command must leave alone)."""
  out = {}
  for base, _, files in os.walk(workdir):
    for f in files:
      p = os.path.join(base, f)
      out[os.path.relpath(p, workdir)] = os.path.getsize(p)
  return out


# ----------------------------------------------------------------------------- config values
@pytest.mark.parametrize("override, names", [
  ("--config.batch_size=0", ["batch_size = 0", "positive"]),
  ("--config.batch_size=-4", ["batch_size = -4"]),
  ("--config.precision=float8", ["precision = 'float8'", "float32, bfloat16"]),
  ("--config.total_steps=-5", ["total_steps = -5"]),
  ("--config.mesh.data=3", ["mesh", "3"]),
  ("--config.optim.base_lr=-1.0", ["optim.base_lr = -1.0"]),
  ("--config.dataset.kind=videos", ["dataset.kind = 'videos'", "video_list"]),
  ("--config.aug.crop_size=30", ["aug.crop_size = 30", "patch_size 8"]),
  ("--config.model.width=33", ["width 33", "heads 2"]),
])
def test_bad_config_value_is_one_line_before_any_work(dataset, tmp_path, override, names):
  workdir = tmp_path / "w"
  r = run("train", "--config", f"{TINY}:{dataset}", "--workdir", str(workdir), override)
  assert_user_error(r, *names)
  assert not workdir.exists()  # nothing was written


def test_every_problem_is_named_at_once(dataset, tmp_path):
  r = run("train", "--config", f"{TINY}:{dataset}", "--workdir", str(tmp_path / "w"),
          "--config.batch_size=0", "--config.precision=float8", "--config.total_steps=-5")
  assert_user_error(r, "batch_size = 0", "precision = 'float8'", "total_steps = -5")


@pytest.mark.parametrize("args, names", [
  (["train", "--config", "k400:nope", "--workdir", "w"], ["nope", "b16_8x224"]),
  (["train", "--config", "nosuch.py", "--workdir", "w"], ["nosuch.py", "recipes"]),
  (["train", "--config", "demo", "--workdir", "w", "--config.foo=1"], ["--config.foo=1", "foo"]),
  (["train", "--config", "demo"], ["--workdir"]),
  (["train", "--config", "k400:b16_8x224", "--workdir", "w"], ["dataset.root"]),
  (["train", "--config", "k400:b16_8x224", "--workdir", "w",
    "--config.dataset.root=/no/such/dir"], ["dataset.root", "/no/such/dir"]),
  (["predict", "--checkpoint", "x", "--input", "y", "--topk", "0"], ["--topk", "0"]),
  (["plan", "--config", "demo", "--device_memory_gb=-1"], ["--device_memory_gb", "-1"]),
  (["eval", "--config", "demo", "--checkpoint", "/no/such/ckpt"], ["/no/such/ckpt"]),
  (["train", "--config", "demo", "--workdir", "w", "extra"], ["extra"]),
  (["fly"], ["fly", "train"]),
  (["train", "--config", "demo", "--workdir", "a_file/w"], ["--workdir", "is a file"]),
])
def test_bad_command_line_is_one_line(tmp_path, args, names):
  (tmp_path / "a_file").write_text("x")
  r = run(*args, cwd=tmp_path)
  assert_user_error(r, *names)
  assert not (tmp_path / "w").exists()


def test_demo_data_rejects_negative_counts(tmp_path):
  r = run("demo-data", "--out", str(tmp_path / "d"), "--train-per-class", "-1")
  assert_user_error(r, "--train-per-class", "-1")
  assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- data files
def test_bad_label_in_a_list_file_names_file_and_line(dataset, tmp_path):
  root = tmp_path / "data"
  root.mkdir()
  lines = open(os.path.join(dataset, "train.csv")).read().splitlines()
  first = lines[0].split(",")[0]
  os.symlink(os.path.join(dataset, "train"), root / "train")
  (root / "train.csv").write_text(f"{first},3\n{first},99\n")
  (root / "val.csv").write_text(f"{first},3\n")
  r = run("train", "--config", f"{TINY}:{root}", "--workdir", str(tmp_path / "w"),
          "--config.dataset.kind=video_list", "--config.dataset.labels=")
  assert_user_error(r, "train.csv:2", "99")


def test_empty_list_file_is_named(dataset, tmp_path):
  root = tmp_path / "data"
  root.mkdir()
  (root / "train.csv").write_text("")
  (root / "val.csv").write_text("")
  r = run("train", "--config", f"{TINY}:{root}", "--workdir", str(tmp_path / "w"),
          "--config.dataset.kind=video_list", "--config.dataset.labels=")
  assert_user_error(r, "train.csv")


def test_prepare_bad_line_is_one_line(dataset, tmp_path):
  (tmp_path / "list.csv").write_text("a.mp4,notanumber\n")
  r = run("prepare", "--list", str(tmp_path / "list.csv"), "--out", str(tmp_path / "out"))
  assert_user_error(r, "list.csv:1")


# ----------------------------------------------------------------------------- checkpoints
def test_resume_with_another_model_names_the_fields_and_keeps_the_run(trained, dataset):
  before = _snapshot(trained)
  r = run("train", "--config", f"{TINY}:{dataset}", "--workdir", trained,
          "--config.total_steps=4", "--config.model.width=64", "--config.model.n_dim=64")
  line = assert_user_error(r, "resume", "width: checkpoint 32, config 64",
                           "n_dim: checkpoint 32, config 64")
  assert "n_head" not in line  # only what differs
  assert _snapshot(trained) == before
  assert checkpoint_steps(trained) == [2]


def test_eval_with_another_model_names_the_field(trained, dataset):
  r = run("eval", "--config", f"{TINY}:{dataset}", "--checkpoint", trained,
          "--config.dataset.test_list=val.csv", "--config.model.num_classes=7")
  assert_user_error(r, "num_classes: checkpoint 10, config 7")


def test_convert_overwrite_refuses_a_training_workdir(trained, tmp_path):
  before = _snapshot(trained)
  src = REPO / "tests" / "fixtures" / "tiny_k400"
  r = subprocess.run([sys.executable, "convert_torch_weights.py", "--input",
                      str(src / "model.npz"), "--output", trained, "--official-config",
                      str(src / "config.json"), "--overwrite"],
                     cwd=REPO, capture_output=True, text=True, timeout=300)
  assert_user_error(r, trained, "training run")
  assert _snapshot(trained) == before


def test_convert_invalid_official_config_names_the_file(tmp_path):
  bad = tmp_path / "config.json"
  bad.write_text("{MODEL: 1")
  src = REPO / "tests" / "fixtures" / "tiny_k400" / "model.npz"
  r = run("convert", "--input", str(src), "--output", str(tmp_path / "out"),
          "--official-config", str(bad))
  assert_user_error(r, str(bad), "not valid JSON")
  assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- predict / extract
@pytest.mark.parametrize("mode", ["predict", "extract"])
def test_unwritable_output_fails_before_inference(trained, dataset, tmp_path, mode):
  video = os.path.join(dataset, "val")
  a_file = tmp_path / "file.txt"
  a_file.write_text("x")
  a_folder = tmp_path / "out.npz"  # named like an output file
  a_folder.mkdir()
  for output, name in ((str(a_folder), "is a directory"),
                       (str(a_file / "out.npz"), "is a file")):
    r = run(mode, "--checkpoint", trained, "--input", video, "--output", output)
    assert_user_error(r, "--output", name)
    assert "videos processed" not in r.stdout  # no inference ran


def test_some_inputs_failing_exit_3_with_results_kept(trained, dataset, tmp_path):
  videos = tmp_path / "videos"
  videos.mkdir()
  good = sorted(os.listdir(os.path.join(dataset, "val")))[0]
  os.symlink(os.path.join(dataset, "val", good), videos / good)
  (videos / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
  out = tmp_path / "preds.json"
  out.write_text("old")
  r = run("predict", "--checkpoint", trained, "--input", str(videos), "--output", str(out))
  assert r.returncode == 3, r.stderr[-3000:]
  assert "Traceback" not in r.stderr
  entries = {os.path.basename(e["video"]): e for e in json.loads(out.read_text())}
  assert entries[good]["error"] is None and len(entries[good]["topk"]) == 5
  assert entries["broken.mp4"]["error"] and entries["broken.mp4"]["topk"] == []


def test_eval_csv_keeps_names_with_spaces_and_commas(tmp_path):
  """Class names with spaces and commas (as Kinetics has) come back exactly from the CSV,
  against an independent top-5 of the scores."""
  from uniformerv2_jax.evaluate import ViewAccumulator, write_results

  names = [f"air drumming, take {i}" for i in range(7)]
  scores = np.random.default_rng(1).random((3, 7)).astype(np.float32)
  acc = ViewAccumulator(3, 7, 1)
  acc.add(scores, np.array([0, 1, 2]), np.zeros(3, int), np.ones(3, bool), np.array([4, 0, 6]))
  write_results(tmp_path, acc, {"top1": 0.0}, step=1, names=names, paths=["a", "b", "c"])
  rows = list(csv.DictReader(open(tmp_path / "eval_predictions.csv")))
  for v, row in enumerate(rows):
    want = list(np.argsort(-scores[v], kind="stable")[:5])
    assert json.loads(row["top5_indices"]) == want
    assert json.loads(row["top5"]) == [names[i] for i in want]
    assert row["label"] == names[[4, 0, 6][v]] and int(row["label_index"]) == [4, 0, 6][v]
