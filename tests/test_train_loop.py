"""End-to-end training on a small generated dataset: the loss falls, eval runs, checkpoints,
TensorBoard events and the plot are written; a run killed with SIGKILL and restarted, and one
stopped with SIGTERM (it saves and exits 0) and restarted, and ones stopped with Ctrl-C during the
first compile, mid-run and during a save (exit 130) and restarted, end bit-identical to an
uninterrupted one; a second Ctrl-C exits at once."""

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
from tests.util import fast_compile_env
from uniformerv2_jax.checkpoint import checkpoint_steps, load_checkpoint
from uniformerv2_jax.data import demo_dataset
from uniformerv2_jax.trees import flat_state


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
  config.export_hub = True
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
  # The hub folder of the finished run: the final checkpoint's weights bit for bit, its class
  # names, and a card with the last eval's top-1 and the command that measured it.
  hub = os.path.join(workdir, "hub")
  final, exported = flat_state(model), flat_state(load_checkpoint(hub))
  assert final.keys() == exported.keys()
  for k in final:
    np.testing.assert_array_equal(np.asarray(exported[k]), np.asarray(final[k]), err_msg=str(k))
  assert open(os.path.join(hub, "labels.txt")).read().splitlines() == list(demo_dataset.CLASSES)
  card = open(os.path.join(hub, "README.md")).read()
  assert f"top-1 {100 * results['top1']:.2f} %" in card and "(step 40)" in card, card
  assert f"--mode eval --config <the run's config> --checkpoint {workdir}" in card


def _train_cmd(dataset, workdir, steps, checkpoint_every=3):
  return [sys.executable, "main.py", "--config", f"tests/tiny_train_config.py:{dataset}",
          "--workdir", workdir, f"--config.total_steps={steps}",
          f"--config.checkpoint_every_steps={checkpoint_every}", "--config.eval_every_steps=100",
          "--config.keep_checkpoints=20"]


STEPS = 12
# The interrupted runs are compared only with the uninterrupted one, all run by the same command
# and compiled alike (bit-identical either way): cheap XLA compiles.
ENV = fast_compile_env()


@pytest.fixture(scope="module")
def full_run(dataset, tmp_path_factory) -> str:
  """The uninterrupted run the interrupted ones must reproduce."""
  full = str(tmp_path_factory.mktemp("full"))
  subprocess.run(_train_cmd(dataset, full, STEPS), cwd=REPO, check=True, capture_output=True,
                 timeout=600, env=ENV)
  return full


def _wait_for(predicate, proc: subprocess.Popen) -> None:
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None and not predicate():
    time.sleep(0.2)


def _train_rows(workdir: str) -> list[int]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  rows = [json.loads(line) for line in open(path).read().splitlines() if line.strip()]
  return [r["step"] for r in rows if r.get("kind") == "train"]


def _resume_and_compare(dataset: str, full: str, resumed: str) -> None:
  # The resumes compile what the first of them compiled: they share a compilation cache (the
  # interrupted runs never use it, their interrupts are timed against the run's progress).
  cache = os.path.join(os.path.dirname(full), "resume_compile_cache")
  subprocess.run(_train_cmd(dataset, resumed, STEPS), cwd=REPO, check=True, capture_output=True,
                 timeout=600, env=fast_compile_env(compile_cache=cache))
  assert max(checkpoint_steps(resumed)) == STEPS
  a, b = flat_state(load_checkpoint(full)), flat_state(load_checkpoint(resumed))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=str(k))


def test_sigkill_then_resume_is_bit_identical(dataset, full_run, tmp_path):
  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(_train_cmd(dataset, killed, STEPS), cwd=REPO, env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _wait_for(lambda: any(s >= 6 for s in checkpoint_steps(killed)), proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  reached = max(checkpoint_steps(killed))
  assert 6 <= reached < STEPS, f"killed at step {reached}: too late to test a resume"
  _resume_and_compare(dataset, full_run, killed)


def test_sigterm_saves_exits_zero_then_resume_is_bit_identical(dataset, full_run, tmp_path):
  """SIGTERM once a step has run (a metrics row exists): the run saves the step it is at,
  between the periodic checkpoints, and exits 0; resuming ends where the uninterrupted run
  ends."""
  stopped = str(tmp_path / "stopped")
  # No periodic checkpoint before the end: the only one can come from the SIGTERM handling.
  proc = subprocess.Popen(_train_cmd(dataset, stopped, STEPS, checkpoint_every=STEPS), cwd=REPO,
                          env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  _wait_for(lambda: len(_train_rows(stopped)) >= 1, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err.decode()[-2000:]
  last = max(_train_rows(stopped))
  assert last < STEPS, f"stopped at step {last}: too late to test a resume"
  assert checkpoint_steps(stopped) == [last]  # the step it was at when stopped
  _resume_and_compare(dataset, full_run, stopped)


def _ckpt_entries(workdir: str) -> list[str]:
  path = os.path.join(workdir, "checkpoints")
  return sorted(os.listdir(path)) if os.path.isdir(path) else []


def _assert_clean_interrupt(proc: subprocess.Popen, err: bytes) -> str:
  text = err.decode()
  assert proc.returncode == 130, (proc.returncode, text[-3000:])  # 128 + SIGINT, no crash
  assert "Traceback" not in text and "Fatal Python error" not in text, text[-3000:]
  return text


def test_sigint_during_first_compile_then_rerun_is_bit_identical(dataset, full_run, tmp_path):
  """Ctrl-C while the train step compiles (the checkpoint folder exists, no step has run):
  the compile finishes, nothing is saved (no step completed), exit 130; a re-run from the same
  workdir matches the uninterrupted run."""
  stopped = str(tmp_path / "stopped")
  proc = subprocess.Popen(_train_cmd(dataset, stopped, STEPS), cwd=REPO, env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  _wait_for(lambda: os.path.isdir(os.path.join(stopped, "checkpoints")), proc)
  assert not _train_rows(stopped), "a step ran before the interrupt: not a compile-time test"
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=600)
  _assert_clean_interrupt(proc, err)
  assert checkpoint_steps(stopped) == [] and not _train_rows(stopped)
  _resume_and_compare(dataset, full_run, stopped)


def test_second_sigint_exits_at_once(dataset, tmp_path):
  stopped = str(tmp_path / "stopped")
  proc = subprocess.Popen(_train_cmd(dataset, stopped, STEPS), cwd=REPO, env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  _wait_for(lambda: os.path.isdir(os.path.join(stopped, "checkpoints")), proc)
  proc.send_signal(signal.SIGINT)
  time.sleep(0.2)
  t0 = time.time()
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=600)
  assert time.time() - t0 < 5, "the second Ctrl-C did not exit at once"
  assert "again" in _assert_clean_interrupt(proc, err)


def test_sigint_mid_run_saves_the_step_then_resume_is_bit_identical(dataset, full_run,
                                                                    tmp_path):
  stopped = str(tmp_path / "stopped")
  proc = subprocess.Popen(_train_cmd(dataset, stopped, STEPS, checkpoint_every=STEPS), cwd=REPO,
                          env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  _wait_for(lambda: len(_train_rows(stopped)) >= 1, proc)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=600)
  _assert_clean_interrupt(proc, err)
  last = max(_train_rows(stopped))
  assert last < STEPS, f"stopped at step {last}: too late to test a resume"
  assert checkpoint_steps(stopped) == [last]  # the step it was at, between periodic saves
  _resume_and_compare(dataset, full_run, stopped)


def test_sigint_during_a_save_keeps_it_then_resume_is_bit_identical(dataset, full_run,
                                                                    tmp_path):
  """Ctrl-C while Orbax writes a checkpoint (its temporary folder exists): the save completes,
  no temporary folder is left, exit 130; resuming matches the uninterrupted run."""
  stopped = str(tmp_path / "stopped")
  proc = subprocess.Popen(_train_cmd(dataset, stopped, STEPS, checkpoint_every=1), cwd=REPO,
                          env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  saving = []

  def in_a_save() -> bool:
    saving[:] = [e for e in _ckpt_entries(stopped) if "tmp" in e]
    return bool(saving)

  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None and not in_a_save():
    time.sleep(0.005)
  assert saving, "never saw a save in progress"
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=600)
  _assert_clean_interrupt(proc, err)
  assert not [e for e in _ckpt_entries(stopped) if "tmp" in e], _ckpt_entries(stopped)
  assert max(checkpoint_steps(stopped)) < STEPS
  _resume_and_compare(dataset, full_run, stopped)
