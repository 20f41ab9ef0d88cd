"""Small helpers over a model's variables as flat ``{path: array}`` dicts.

Kept apart from the checkpoint converter so that training, evaluation and prediction can read
a model's values without importing any conversion code.
"""

from __future__ import annotations

from typing import Any

from flax import nnx


def flat_state(model: nnx.Module, *filters) -> dict[tuple[str, ...], Any]:
  """{path: array} for the model's variables (Params and BatchStats unless filtered)."""
  state = nnx.state(model, filters or (nnx.Param, nnx.BatchStat))
  return {tuple(str(k) for k in path): v.get_value() if hasattr(v, "get_value") else v.value
          for path, v in nnx.to_flat_state(state)}
