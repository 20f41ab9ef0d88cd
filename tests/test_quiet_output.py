"""What a training run prints: the progress bar, evals, the project's notices, warnings and the
final summary, and no library chatter unless asked for with ``--verbosity``."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.util import fast_compile_env
from uniformerv2_jax.data import demo_dataset

# Two runs (3 steps, then a resume to 5) print per run: one eval line, the final JSON summary
# and, on resume, the "resumed from" notice -- 5 lines in all. 25 leaves room for a few
# warnings a user can act on (bad samples skipped, a backend fallback) while anything that
# scales with checkpoint saves fails it: Orbax's INFO lines were ~140 per run.
MAX_LINES = 25
ABSL_INFO = re.compile(r"^I\d{4} ")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
  root = tmp_path_factory.mktemp("demo")
  demo_dataset.generate(str(root), seed=3, train_per_class=2, val_per_class=1)
  return str(root)


def _train(dataset: str, workdir: str, steps: int, *flags: str) -> str:
  cmd = [sys.executable, "main.py", "--config", f"tests/tiny_train_config.py:{dataset}",
         "--workdir", workdir, f"--config.total_steps={steps}",
         "--config.checkpoint_every_steps=3", "--config.eval_every_steps=100", *flags]
  # What is checked is the output, not the numbers: cheap XLA compiles (see FAST_COMPILE), and
  # the later runs load the first one's from a compilation cache beside the workdir.
  cache = os.path.join(os.path.dirname(workdir), "compile_cache")
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                        env=fast_compile_env(compile_cache=cache))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout + proc.stderr


def _lines(output: str) -> list[str]:
  """Output lines other than progress-bar updates (tqdm redraws its line with carriage
  returns) and blank ones."""
  parts = re.split(r"[\r\n]", output)
  return [p for p in parts if p.strip() and not p.startswith("train:")]


def test_training_and_resume_are_quiet_unless_asked(dataset, tmp_path):
  workdir = str(tmp_path / "run")
  output = _train(dataset, workdir, 3) + _train(dataset, workdir, 5)
  lines = _lines(output)
  assert "Sharding info not provided" not in output
  assert len(lines) <= MAX_LINES, "\n".join(lines)
  assert not [line for line in lines if ABSL_INFO.match(line) and "main.py" not in line
              and "train.py" not in line], "library INFO lines shown by default"
  assert any("resumed from" in line for line in lines)  # the project's own notice stays
  assert sum(line.startswith('{"final_eval"') for line in lines) == 2

  verbose = _lines(_train(dataset, workdir, 6, "--verbosity=1"))
  library_info = [line for line in verbose if ABSL_INFO.match(line) and "checkpoint" in line]
  assert len(library_info) > MAX_LINES, "--verbosity=1 should bring Orbax's INFO lines back"


def test_unknown_config_key_fails_in_one_line(dataset, tmp_path):
  """A key the config does not have (bn_sync was one) is refused, naming it."""
  proc = subprocess.run(
    [sys.executable, "main.py", "--config", f"tests/tiny_train_config.py:{dataset}",
     "--workdir", str(tmp_path / "run"), "--config.bn_sync=False"],
    cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr
  assert "--config.bn_sync=False: the config has no key 'bn_sync'" in proc.stderr
