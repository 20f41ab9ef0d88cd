"""Training does not depend on weight conversion: importing the training loop loads neither the
converter nor its mapping table nor the foreign-file readers (each pulls in code and, for
PyTorch files, optional dependencies that a training run has no use for)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

CONVERSION_MODULES = ("uniformerv2_jax.convert", "uniformerv2_jax.mapping",
                      "uniformerv2_jax.towers", "uniformerv2_jax.checkpoint_files")


def test_train_imports_no_conversion_module():
  script = ("import sys\n"
            "import uniformerv2_jax.train\n"
            f"print([m for m in {CONVERSION_MODULES!r} if m in sys.modules])\n")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "[]", out.stdout
