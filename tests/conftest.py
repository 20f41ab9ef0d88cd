"""Shared test setup: fixture paths and numerics."""

import json
from pathlib import Path

import jax
import pytest

# Ground truth produced by the official PyTorch code (see fixtures/README.md); carried in the
# repository so that a clone tests itself with nothing beside it.
REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"

# Parity tests compare float32 results at 1e-4: ask XLA for full-precision matmuls everywhere.
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
  return FIXTURES


def sampling_fixture(name: str) -> dict:
  """A JSON file of ``fixtures/data_sampling``."""
  return json.loads((FIXTURES / "data_sampling" / name).read_text())
