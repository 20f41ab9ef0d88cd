"""Shared test setup: fixture paths and numerics."""

import json
import os
from pathlib import Path

import jax
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("UNIFORMERV2_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"

# Parity tests compare float32 results at 1e-4: ask XLA for full-precision matmuls everywhere.
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
  if not FIXTURES.is_dir():
    pytest.fail(f"fixtures not found at {FIXTURES} (set UNIFORMERV2_SHARED)")
  return FIXTURES


def sampling_fixture(name: str) -> dict:
  """A JSON file of ``fixtures/data_sampling`` (a missing fixture fails, it never skips)."""
  path = FIXTURES / "data_sampling" / name
  if not path.exists():
    pytest.fail(f"fixture {path} not found (set UNIFORMERV2_SHARED)")
  return json.loads(path.read_text())
