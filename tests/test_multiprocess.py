"""Two processes on localhost (jax.distributed with a local coordinator, CPU devices) train a
few steps; the result equals a single-process run with the same global batch, and each process
reads a disjoint half of the data."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tests.util import fast_compile_env, free_port
from uniformerv2_jax.checkpoint import load_checkpoint
from uniformerv2_jax.data import demo_dataset
from uniformerv2_jax.data.pipeline import make_train_dataset
from uniformerv2_jax.data.sources import VideoListSource
from uniformerv2_jax.trees import flat_state


def _cmd(root, workdir):
  return [sys.executable, "main.py", "--config", f"tests/tiny_train_config.py:{root}",
          "--workdir", workdir, "--config.total_steps=4", "--config.eval_every_steps=100",
          "--config.checkpoint_every_steps=100"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  r = tmp_path_factory.mktemp("mp_demo")
  demo_dataset.generate(str(r), seed=5, train_per_class=2, val_per_class=1)
  return str(r)


def test_processes_read_disjoint_halves(root, tmp_path):
  # Relabel every record with its line number so that a label names one record.
  with open(os.path.join(root, "train.csv")) as f:
    paths = [line.rsplit(",", 1)[0] for line in f.read().splitlines() if line.strip()]
  assert len(paths) == 20
  relabelled = tmp_path / "train_ids.csv"
  relabelled.write_text("".join(f"{p},{i}\n" for i, p in enumerate(paths)))
  src = VideoListSource(str(relabelled), prefix=root, num_classes=len(paths))
  seen = []
  for p in range(2):
    ds = make_train_dataset(src, batch_size=2, seed=0, process_index=p, process_count=2)
    # the records of the first epoch (20 records = 5 batches of 2 per process)
    seen.append([int(x) for b in range(5) for x in ds[b]["label"]])
  for ids in seen:
    assert len(set(ids)) == 10  # no record twice within a host's epoch
  assert not set(seen[0]) & set(seen[1])
  assert set(seen[0]) | set(seen[1]) == set(range(20))
  # and the same records as one process reading the global batch
  single = make_train_dataset(src, batch_size=4, seed=0, process_index=0, process_count=1)
  assert sorted(seen[0] + seen[1]) == sorted(int(x) for b in range(5) for x in single[b]["label"])


def test_two_processes_equal_one(root, tmp_path):
  # The runs are compared only with each other, all compiled alike: cheap XLA compiles.
  single = str(tmp_path / "single")
  subprocess.run(_cmd(root, single), cwd=REPO, check=True, capture_output=True, timeout=600,
                 env=fast_compile_env())
  multi = str(tmp_path / "multi")
  port = free_port()
  procs = []
  for pid in range(2):
    env = fast_compile_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                           JAX_PROCESS_ID=str(pid), JAX_PLATFORMS="cpu")
    procs.append(subprocess.Popen(_cmd(root, multi), cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err[-3000:]
  a, b = flat_state(load_checkpoint(single)), flat_state(load_checkpoint(multi))
  for k in a:
    np.testing.assert_allclose(np.asarray(b[k]), np.asarray(a[k]), atol=1e-5, rtol=0,
                               err_msg=str(k))
