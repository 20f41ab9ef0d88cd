"""Pinning activations to the batch axes of the mesh while a step is traced.

With FSDP the weights' ``embed`` dimension is split over the ``fsdp`` axis, and left alone the
partitioner may keep the *activations* laid out along ``embed`` (gathering the batch) instead of
gathering the weights: temporaries then grow with the global batch (measured: L/14 8x224 on
``fsdp=4`` needed 27.8 GiB of temporaries per chip vs 11.3 GiB on ``data=4``). The model calls
:func:`constrain_batch` on the residual stream between blocks; it is a no-op unless a step
builder entered :func:`activation_sharding` (so eager calls and single-device code are
unaffected). The context is read at trace time, which is when it matters. Per-device BatchNorm
(``bn_sync=False``) reads the number of batch shards from the same context
(:func:`batch_shards`).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

_CURRENT: contextvars.ContextVar[tuple[Mesh, Any] | None] = contextvars.ContextVar(
  "uniformerv2_activation_sharding", default=None)


def batch_axes(rules: Mapping[str, Any]) -> Any:
  """The mesh axes the batch is split over (the ``batch`` logical rule)."""
  axis = rules.get("batch", ("data", "fsdp"))
  return tuple(axis) if isinstance(axis, (list, tuple)) else axis


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None, rules: Mapping[str, Any]) -> Iterator[None]:
  """While tracing inside this context, :func:`constrain_batch` pins leading batch axes."""
  if mesh is None or mesh.size == 1:
    yield
    return
  token = _CURRENT.set((mesh, batch_axes(rules)))
  try:
    yield
  finally:
    _CURRENT.reset(token)


def batch_shards() -> int:
  """How many blocks the batch is split into over the mesh of the enclosing
  :func:`activation_sharding` (its batch axes' sizes multiplied); 1 outside one.

  ``P(axes)`` on the leading dimension gives the device at position ``g`` of the batch axes
  (row-major over data x fsdp) the ``g``-th contiguous block of the batch; per-device
  BatchNorm groups the batch the same way.
  """
  current = _CURRENT.get()
  if current is None:
    return 1
  mesh, axes = current
  names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
  return math.prod(mesh.shape[a] for a in names)


def constrain_batch(x: jax.Array) -> jax.Array:
  """``x``'s leading (batch) dimension split over the batch mesh axes, the rest replicated."""
  current = _CURRENT.get()
  if current is None:
    return x
  mesh, axes = current
  return jax.lax.with_sharding_constraint(
    x, NamedSharding(mesh, P(axes, *([None] * (x.ndim - 1)))))
