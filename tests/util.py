"""Helpers shared by tests."""

from __future__ import annotations

import math
import os
import socket

import numpy as np

from uniformerv2_jax.mapping import expected_torch_shapes
from uniformerv2_jax.model import ModelConfig

# XLA CPU flags that roughly halve compile time (LLVM at -O0) at the cost of slower kernels: for
# test subprocesses that run a few steps and whose numbers are compared only with runs compiled
# under the same flags (never with fixed reference numbers), or not compared at all. In-process
# tests pass the same options to one compile: ``jit(f).lower(...).compile(FAST_COMPILE_OPTIONS)``.
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0,
                        "xla_llvm_disable_expensive_passes": True}
FAST_COMPILE = " ".join(f"--{k}={str(v).lower()}" for k, v in FAST_COMPILE_OPTIONS.items())

LOOPBACK = "127.0.0.1"  # every server a test starts binds here, and nothing else is reached


def free_port() -> int:
  """A TCP port on the loopback address that nothing listens on at the moment of the call."""
  with socket.socket() as s:
    s.bind((LOOPBACK, 0))
    return s.getsockname()[1]


def fast_compile_env(xla_flags: str = "", *, compile_cache: str | os.PathLike | None = None,
                     **extra: str) -> dict[str, str]:
  """``os.environ`` plus ``extra``, with ``XLA_FLAGS`` = ``xla_flags`` and FAST_COMPILE.

  ``compile_cache``: a folder for JAX's persistent compilation cache, for runs that repeat a
  compile another run of the test already did (a resume, a second run of one config): the
  repeat loads the executable instead (tiny train run: 21 -> 15 s). Not for runs whose test
  interrupts them at a moment of the run (a cached compile moves every later moment)."""
  env = {**os.environ, **extra, "XLA_FLAGS": " ".join(f for f in (xla_flags, FAST_COMPILE) if f)}
  if compile_cache is not None:
    env["JAX_COMPILATION_CACHE_DIR"] = os.fspath(compile_cache)
  return env


def random_official_state_dict(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
  """Random, non-trivial values for every official key of ``cfg`` (prefix stripped).

  Like the fixtures: weights ~ N(0, 1/fan_in), biases ~ 0.1 N(0,1), norm scales ~ 1 + 0.2 N,
  BN running var ~ U(0.5, 1.5); nothing is left at a constant, so every branch is exercised.
  """
  rng = np.random.default_rng(seed)
  sd = {}
  for key, (shape, dtype) in expected_torch_shapes(cfg).items():
    if np.issubdtype(dtype, np.integer):
      sd[key] = np.asarray(100, dtype)
    elif key.endswith("running_var"):
      sd[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif key.endswith("running_mean"):
      sd[key] = (0.2 * rng.standard_normal(shape)).astype(np.float32)
    elif len(shape) <= 1 and ("ln" in key or "pos_embed.0" in key or "proj.0" in key) \
        and key.endswith("weight"):
      sd[key] = (1 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
    elif len(shape) <= 1 and key != "class_embedding" and key != "transformer.balance":
      sd[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    else:
      fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
      scale = 1.0 if key in ("class_embedding", "transformer.balance") else fan_in**-0.5
      sd[key] = (scale * rng.standard_normal(shape)).astype(np.float32)
  return sd
