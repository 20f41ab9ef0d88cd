"""Device mesh, logical-axis sharding of parameters and batches, multi-host setup.

Mesh axes are ``data``, ``fsdp`` and ``tensor`` (sizes from the config, ``-1`` fills). Every
parameter gets logical axis names from its path (``embed``, ``heads``, ``mlp``, ``classes``,
``layers``...); the config's rules map logical names to mesh axes (default: ``embed`` -> fsdp,
``heads``/``mlp`` -> tensor). A dimension that the mesh axis does not divide stays replicated.
The batch is split over ``data`` x ``fsdp``. Everything else is replicated. Under ``jax.jit``
the whole step sees the global batch, so BatchNorm statistics are synchronised across devices,
unless the model says ``bn_sync=False``: then each batch shard is normalised with its own
statistics (``model.BatchNorm``; the step must be built with its ``mesh``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from uniformerv2_jax.activation_sharding import batch_axes
from uniformerv2_jax.errors import InputError
from uniformerv2_jax.model import STACKED

AXES = ("data", "fsdp", "tensor")


def maybe_initialize_distributed() -> None:
  """``jax.distributed.initialize()`` when this is one process of several.

  Cloud TPU VMs and SLURM are detected by JAX itself; elsewhere set
  ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
  """
  env = os.environ
  multi = ("JAX_COORDINATOR_ADDRESS" in env or int(env.get("SLURM_NTASKS", "1")) > 1
           or "TPU_WORKER_HOSTNAMES" in env and "," in env.get("TPU_WORKER_HOSTNAMES", ""))
  if not multi:
    return
  kwargs = {}
  if "JAX_COORDINATOR_ADDRESS" in env:
    kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                  num_processes=int(env["JAX_NUM_PROCESSES"]),
                  process_id=int(env["JAX_PROCESS_ID"]))
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def make_mesh(shape: Mapping[str, int], devices=None) -> Mesh:
  """Mesh over ``devices`` (default all) with axes data, fsdp, tensor; one size may be -1."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [int(shape.get(a, 1)) for a in AXES]
  if sizes.count(-1) > 1:
    raise InputError(f"mesh {dict(zip(AXES, sizes, strict=True))}: at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise InputError(f"mesh {dict(zip(AXES, sizes, strict=True))} does not divide "
                       f"{len(devices)} devices")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise InputError(f"mesh {dict(zip(AXES, sizes, strict=True))} needs {math.prod(sizes)} "
                     f"devices, {len(devices)} available")
  try:
    arr = jax.experimental.mesh_utils.create_device_mesh(sizes, devices=devices)
  except Exception:  # noqa: BLE001 - CPU / odd topologies: plain reshape
    arr = np.asarray(devices, dtype=object).reshape(sizes)
  return Mesh(arr, AXES)


def logical_axes(path: tuple[str, ...], ndim: int) -> tuple[str | None, ...]:
  """Logical names of a parameter's dimensions, from its path (stacked layer axis first)."""
  names = list(path)
  stacked = names[0] in STACKED
  leaf = names[-1]
  parent = names[-2] if len(names) > 1 else ""
  core = ndim - (1 if stacked else 0)
  axes: tuple[str | None, ...]
  if leaf == "in_proj_kernel":
    axes = ("embed", None, "heads", None)
  elif leaf == "out_proj_kernel":
    axes = ("heads", None, "embed")
  elif parent == "c_fc" and leaf == "kernel":
    axes = ("embed", "mlp")
  elif parent == "c_fc" and leaf == "bias":
    axes = ("mlp",)
  elif parent == "c_proj" and leaf == "kernel":
    axes = ("mlp", "embed")
  elif parent == "head" and leaf == "kernel":
    axes = ("embed", "classes")
  elif parent == "head" and leaf == "bias":
    axes = ("classes",)
  elif parent == "down" and leaf == "kernel":
    axes = ("embed", None)
  elif parent == "up" and leaf == "kernel":
    axes = (None, "embed")
  elif leaf in ("kernel",) and names[0] in ("conv1", "dpe"):
    axes = (None,) * (core - 1) + ("embed",)
  elif leaf == "positional_embedding":
    axes = (None, "embed")
  else:  # biases, norms, embeddings, small tensors: replicated
    axes = (None,) * core
  if len(axes) != core:
    axes = (None,) * core
  return (("layers",) if stacked else ()) + axes


def partition_spec(path, shape, rules: Mapping[str, Any], mesh: Mesh) -> P:
  spec = []
  used = set()
  for name, dim in zip(logical_axes(path, len(shape)), shape, strict=True):
    axis = rules.get(name) if name else None
    if isinstance(axis, (list, tuple)):
      axis = tuple(axis)
    mesh_axes = axis if isinstance(axis, tuple) else ((axis,) if axis else ())
    size = math.prod(mesh.shape[a] for a in mesh_axes) if mesh_axes else 1
    if not mesh_axes or size == 1 or dim % size or used & set(mesh_axes):
      spec.append(None)
    else:
      spec.append(axis)
      used |= set(mesh_axes)
  return P(*spec)


def leaf_names(path) -> tuple[str, ...]:
  """Path of a pytree leaf as strings; an ``nnx.Variable`` adds a trailing ``value``."""
  names = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
  return names[:-1] if names and names[-1] == "value" else names


def tree_shardings(tree, mesh: Mesh, rules: Mapping[str, Any]):
  """NamedShardings for a params-like pytree (``nnx.State`` of Params or a pure dict)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, leaf: NamedSharding(mesh, partition_spec(leaf_names(path), np.shape(leaf), rules,
                                                          mesh)), tree)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, rules: Mapping[str, Any], ndim: int) -> NamedSharding:
  return NamedSharding(mesh, P(batch_axes(rules), *([None] * (ndim - 1))))


def global_batch(batch: Mapping[str, np.ndarray], mesh: Mesh,
                 rules: Mapping[str, Any]) -> dict[str, jax.Array]:
  """Process-local NumPy batch -> global ``jax.Array``s split over the batch axes."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, rules, np.ndim(v)), v)
          for k, v in batch.items()}


def batch_divisor(mesh: Mesh, rules: Mapping[str, Any]) -> int:
  axes = batch_axes(rules)
  axes = axes if isinstance(axes, tuple) else (axes,)
  return math.prod(mesh.shape[a] for a in axes)
