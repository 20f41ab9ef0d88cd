"""End-to-end training on a small generated dataset: the loss falls, eval runs, checkpoints,
TensorBoard events and the plot are written; a run killed with SIGKILL and restarted ends
bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO
from uniformerv2_jax.checkpoint import checkpoint_steps, load_checkpoint
from uniformerv2_jax.convert import flat_state
from uniformerv2_jax.data import demo_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("demo")
  demo_dataset.generate(str(root), seed=3, train_per_class=2, val_per_class=1)
  return str(root)


def test_training_reduces_loss_and_writes_everything(dataset, tmp_path):
  from tests.tiny_train_config import get_config
  from uniformerv2_jax.train import train_and_evaluate

  config = get_config(dataset)
  config.total_steps = 40
  config.eval_every_steps = 20
  config.checkpoint_every_steps = 20
  workdir = str(tmp_path / "run")
  summary = train_and_evaluate(config, workdir)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [r["loss"] for r in rows if r["kind"] == "train"]
  assert len(losses) == 40
  assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.1, losses
  assert summary["num_videos"] == 10 and 0.0 <= summary["top1"] <= 1.0
  results = json.load(open(os.path.join(workdir, "eval_results.json")))
  assert results["step"] == 40 and {"top1", "top5", "num_videos"} <= set(results)
  assert os.path.getsize(os.path.join(workdir, "eval_predictions.csv")) > 0
  assert checkpoint_steps(workdir) == [20, 40]
  assert any(f.startswith("events.out.tfevents")
             for f in os.listdir(os.path.join(workdir, "tensorboard")))
  assert os.path.getsize(os.path.join(workdir, "training_curves.png")) > 1000
  model = load_checkpoint(workdir)  # Orbax alone restores the model with its config
  assert model.cfg.width == 32


def _train_cmd(dataset, workdir, steps):
  return [sys.executable, "main.py", "--config", f"tests/tiny_train_config.py:{dataset}",
          "--workdir", workdir, f"--config.total_steps={steps}",
          "--config.checkpoint_every_steps=3", "--config.eval_every_steps=100",
          "--config.keep_checkpoints=20"]


def test_sigkill_then_resume_is_bit_identical(dataset, tmp_path):
  steps = 12
  full = str(tmp_path / "full")
  subprocess.run(_train_cmd(dataset, full, steps), cwd=REPO, check=True, capture_output=True,
                 timeout=600)
  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(_train_cmd(dataset, killed, steps), cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while time.time() < deadline and not any(s >= 6 for s in checkpoint_steps(killed)):
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  reached = max(checkpoint_steps(killed))
  assert 6 <= reached < steps, f"killed at step {reached}: too late to test a resume"
  subprocess.run(_train_cmd(dataset, killed, steps), cwd=REPO, check=True, capture_output=True,
                 timeout=600)
  assert max(checkpoint_steps(killed)) == steps
  a, b = flat_state(load_checkpoint(full)), flat_state(load_checkpoint(killed))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=str(k))
