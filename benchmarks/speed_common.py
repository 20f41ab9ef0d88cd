"""Helpers shared by the model benchmarks: builders of the real eval / train steps, timing,
the float32 matmul reference and accelerator peaks."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from uniformerv2_jax import flops as flops_lib  # noqa: E402
from uniformerv2_jax import zoo  # noqa: E402
from uniformerv2_jax.model import ModelConfig, create_model  # noqa: E402
from uniformerv2_jax.optim import OptimConfig, make_optimizer  # noqa: E402
from uniformerv2_jax.steps import (  # noqa: E402
  init_train_state,
  make_eval_step,
  make_train_step,
  split_model,  # noqa: E402
)

TINY_JSON = REPO / "tests" / "fixtures" / "tiny_k400" / "config.json"

# Dense bf16 peaks (TFLOP/s, no sparsity) by device_kind substring, most specific first.
GPU_BF16_PEAK_TFLOPS = (
  ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0),
  ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0),
  ("V100", 125.0), ("TPU v5 lite", 197.0), ("TPU v5e", 197.0), ("TPU v5p", 459.0),
  ("TPU v5", 459.0), ("TPU v4", 275.0), ("TPU v6", 918.0),
)


def accelerator_peak_flops() -> float | None:
  """bf16 dense peak FLOP/s of device 0 (None on CPU or an unknown device)."""
  d = jax.devices()[0]
  if d.platform == "cpu":
    return None
  kind = getattr(d, "device_kind", "")
  for name, tf in GPU_BF16_PEAK_TFLOPS:
    if name.lower() in kind.lower():
      return tf * 1e12
  return None


def model_config(name: str, **overrides) -> ModelConfig:
  """``tiny`` (the tiny_k400 fixture), ``b16`` (k400:b16_8x224), ``l14`` (k400 L/14 8x224),
  ``l14_336_64`` (k400 L/14@336 64f)."""
  if name == "tiny":
    from uniformerv2_jax import config_from_official

    return config_from_official(TINY_JSON, **overrides)
  key = {"b16": ("k400", "b16_8x224"), "l14": ("k400", "l14_8x224_k710"),
         "l14_336_64": ("k400", "l14_64x336_k710")}[name]
  return zoo.get(*key).model_config(**overrides)


def optimizer(params, cfg: ModelConfig):
  oc = OptimConfig(base_lr=1e-5, steps_per_epoch=100, epochs=10.0, warmup_epochs=1.0)
  return make_optimizer(oc, params, num_layers=cfg.layers)


def _video(cfg: ModelConfig, batch: int, seed: int = 0):
  r = cfg.input_resolution
  x = np.random.default_rng(seed).standard_normal((batch, cfg.num_frames, r, r, 3))
  return jnp.asarray(x, jnp.float32)


class Bench:
  """Compiled eval forward and train step of one config (the repo's real step functions)."""

  def __init__(self, cfg: ModelConfig, batch: int, *, train: bool = True, evaluate: bool = True):
    self.cfg, self.batch = cfg, batch
    model = create_model(cfg)
    self.video = _video(cfg, batch)
    self.labels = jnp.zeros((batch,), jnp.int32)
    self.macs = flops_lib.forward_macs(cfg) * batch
    self.eval_compiled = self.train_compiled = None
    self.eval_compile_s = self.train_compile_s = None
    self.eval_compile_cpu_s = self.train_compile_cpu_s = None
    self.eval_memory = self.train_memory = None
    if evaluate:
      graphdef, params, batch_stats, other = split_model(model)
      fn = jax.jit(make_eval_step(graphdef, other))
      t0, c0 = time.perf_counter(), time.process_time()
      self.eval_compiled = fn.lower(params, batch_stats, self.video).compile()
      self.eval_compile_s = time.perf_counter() - t0
      self.eval_compile_cpu_s = time.process_time() - c0
      self.eval_memory = memory(self.eval_compiled)
      # Copies: the train step donates (deletes) the state it was given.
      self.eval_args = jax.tree.map(jnp.copy, (params, batch_stats))
    if train:
      tx = optimizer(split_model(model)[1], cfg)
      graphdef, other, state = init_train_state(model, tx, seed=0)
      fn = jax.jit(make_train_step(graphdef, other, tx), donate_argnums=(0,))
      batch_ = {"video": self.video, "label": self.labels}
      t0, c0 = time.perf_counter(), time.process_time()
      self.train_compiled = fn.lower(state, batch_).compile()
      self.train_compile_s = time.perf_counter() - t0
      self.train_compile_cpu_s = time.process_time() - c0
      self.train_memory = memory(self.train_compiled)
      self.state, self.batch_dict = state, batch_
    del model

  def run_eval(self):
    probs, _ = self.eval_compiled(*self.eval_args, self.video)
    return probs.block_until_ready()

  def run_train(self):
    self.state, metrics = self.train_compiled(self.state, self.batch_dict)
    return jax.block_until_ready(metrics["loss"])

  @property
  def eval_flops(self) -> float:
    return 2.0 * self.macs

  @property
  def train_flops(self) -> float:
    return 3 * 2.0 * self.macs


def memory(compiled) -> dict[str, int] | None:
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001
    return None
  if m is None:
    return None
  d = {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
       "alias_bytes": int(m.alias_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes)}
  d["peak_bytes"] = d["argument_bytes"] + d["output_bytes"] - d["alias_bytes"] + d["temp_bytes"]
  return d


def time_call(fn: Callable[[], object], min_seconds: float = 0.2, cpu: list | None = None) -> float:
  """Wall seconds per call: one call, or the mean of enough calls to last ``min_seconds``.
  With ``cpu`` (a list), the process CPU seconds per call (all threads) are appended to it."""
  c0, t0 = time.process_time(), time.perf_counter()
  fn()
  dt = time.perf_counter() - t0
  n = 1
  if dt < min_seconds:
    n = max(int(min_seconds / max(dt, 1e-6)), 1)
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
      fn()
    dt = time.perf_counter() - t0
  if cpu is not None:
    cpu.append((time.process_time() - c0) / n)
  return dt / n


class MatmulPeak:
  """float32 2048x2048 ``jnp.dot`` under ``jax.jit``: the reference FLOP/s on this machine."""

  N = 2048

  def __init__(self, dtype=jnp.float32):
    rng = np.random.default_rng(0)
    self.a = jnp.asarray(rng.standard_normal((self.N, self.N)), dtype)
    self.b = jnp.asarray(rng.standard_normal((self.N, self.N)), dtype)
    self.fn = jax.jit(jnp.dot).lower(self.a, self.b).compile()
    self.fn(self.a, self.b).block_until_ready()
    self.samples: list[float] = []
    self.cpu_samples: list[float] = []  # FLOP per CPU-second (all threads)

  def sample(self, repeats: int = 5) -> float:
    """Median FLOP/s of ``repeats`` matmuls; kept for the run's median."""
    cpu: list[float] = []
    times = [time_call(lambda: self.fn(self.a, self.b).block_until_ready(), 0.0, cpu)
             for _ in range(repeats)]
    f = 2.0 * self.N**3 / statistics.median(times)
    self.samples.append(f)
    self.cpu_samples.append(2.0 * self.N**3 / statistics.median(cpu))
    return f

  @property
  def flops(self) -> float:
    return statistics.median(self.samples)

  @property
  def flops_per_cpu_s(self) -> float:
    return statistics.median(self.cpu_samples)


def loadavg() -> list[float] | None:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def emit(record: dict) -> None:
  # The allocator setting changes CPU step times by ~20-30 % (uniformerv2_jax/host_memory.py).
  record = {"glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), **record}
  print(json.dumps(record, sort_keys=True), flush=True)


def median(xs):
  return statistics.median(xs) if xs else float("nan")
