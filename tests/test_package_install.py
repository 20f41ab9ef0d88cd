"""``pip install .`` alone gives a working command: in a fresh virtual environment, run from a
folder outside the checkout, ``uniformerv2-jax`` lists the recipes, converts an official
checkpoint (``.npz``: no torch needed), generates the demo data, predicts on a video and trains
the demo recipe by name. The new environment borrows the test environment's dependencies
through a ``.pth`` file (no network here), but not the package: that comes from the install,
which the test checks."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys

import pytest

from tests.conftest import FIXTURES, REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
  base = tmp_path_factory.mktemp("install")
  venv = base / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = venv / "bin" / "python"
  target = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
  deps = [p for p in site.getsitepackages() if os.path.isdir(p)]
  with open(os.path.join(target.stdout.strip(), "test-deps.pth"), "w") as f:
    f.write("\n".join(deps) + "\n")
  # What a source distribution holds, copied: building in place would leave build/ in the
  # checkout, and a copy shows the package needs nothing else of it.
  source = base / "source"
  source.mkdir()
  for name in ("pyproject.toml", "requirements.txt", "README.md"):
    shutil.copy(REPO / name, source / name)
  shutil.copytree(REPO / "uniformerv2_jax", source / "uniformerv2_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                      "--no-deps", "--no-build-isolation", "--no-index", str(source)],
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  work = base / "work"  # outside the checkout: nothing of it is importable from here
  work.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  where = subprocess.run([str(python), "-c", "import uniformerv2_jax; print(uniformerv2_jax"
                          ".__file__)"], cwd=work, env=env, capture_output=True, text=True,
                         check=True)
  assert where.stdout.strip().startswith(str(venv)), where.stdout  # the installed copy
  return {"command": str(venv / "bin" / "uniformerv2-jax"), "work": str(work), "env": env}


def _run(installed, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
  r = subprocess.run([installed["command"], *args], cwd=installed["work"], env=installed["env"],
                     capture_output=True, text=True, timeout=timeout)
  assert r.returncode == 0, (args, r.stderr[-3000:])
  return r


def test_installed_command_converts_predicts_and_trains(installed):
  work = installed["work"]
  assert "k400:b16_8x224" in _run(installed, "recipes").stdout.split()
  src = FIXTURES / "tiny_k400"
  _run(installed, "convert", "--input", str(src / "model.npz"), "--output", "ckpt",
       "--official-config", str(src / "config.json"), "--verify")
  _run(installed, "demo-data", "--out", "data", "--train-per-class", "1", "--val-per-class", "1")
  val = os.path.join(work, "data", "val")
  video = os.path.join(val, sorted(os.listdir(val))[0])
  _run(installed, "predict", "--checkpoint", "ckpt", "--input", video, "--output", "preds.json",
       "--topk", "3")
  preds = json.load(open(os.path.join(work, "preds.json")))
  assert len(preds) == 1 and preds[0]["error"] is None and len(preds[0]["topk"]) == 3
  r = _run(installed, "train", "--config", "demo", "--workdir", "run",
           "--config.dataset.root=data", "--config.total_steps=2", "--config.batch_size=4",
           "--config.eval_batch_size=4", "--config.eval_every_steps=2")
  final = json.loads(r.stdout.strip().splitlines()[-1])["final_eval"]
  assert final["num_videos"] == 10
  assert os.path.isdir(os.path.join(work, "run", "checkpoints", "2"))
