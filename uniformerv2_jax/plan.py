"""Ahead-of-time plan of a config's train step: memory per device, FLOPs, largest batch.

``plan(config)`` builds the train state *abstractly* (``nnx.eval_shape`` / ``jax.eval_shape``:
no parameter is ever allocated), lays it out on the configured mesh with the trainer's own
shardings (``train.state_shardings``), lowers and compiles the trainer's own jitted step
(``train.compile_train_step``: ``make_train_step`` + ``make_optimizer``, donated state) for
``jax.ShapeDtypeStruct`` inputs, and reads ``compiled.memory_analysis()``:

* ``params_bytes`` / ``optimizer_bytes`` / ``batch_stats_bytes`` / ``ema_bytes``: the state's
  bytes on one device, from the shard shapes of the shardings;
* ``argument_bytes`` / ``output_bytes`` / ``alias_bytes`` / ``temp_bytes``: XLA's figures for one
  device; ``total_bytes_per_device = argument + output - alias + temp`` (the donated state is
  aliased to the new state, so it is counted once);
* ``flops_per_step``: 2 x the train-step MACs of ``flops.py`` (3 x forward) for the global
  batch. ``compiled.cost_analysis()`` is reported too (``xla_flops_per_device``) but counts a
  ``lax.scan`` body once, so it under-reports scanned models by ~the layer count.
* ``max_global_batch``: the largest global batch (a multiple of the batch shards) whose total
  fits ``device_memory_gb``, from a second compile at another batch size and a linear fit of
  the total in the batch (activations and temporaries grow linearly with the clips).

Backends. Without ``topology`` the plan is for the local backend (``jax.devices()``): on a
CPU-only machine XLA:CPU's buffer assignment stands in for an accelerator's (same program,
different fusion / layout decisions: expect differences of tens of percent, more for bf16,
which XLA:CPU computes partly in f32); there the plan compiles with LLVM at -O0
(``CPU_PLAN_COMPILE``: same buffers, so ``compile_seconds`` is shorter than a run's compile).
With ``topology="v5e:2x2"`` etc. and ``libtpu`` importable (``pip install 'jax[tpu]==<jax
version>'``, an optional extra) the step is compiled for that TPU slice
(``jax.experimental.topologies``), with the real TPU compiler; out of memory then shows up as
a compile error, reported as ``fits: false``. A topology is never replaced by the local
backend: a malformed one, an unknown chip kind (checked before libtpu is looked for) or a
missing ``libtpu`` raise :class:`TopologyError` with a one-line message.

Mesh. ``config.mesh`` (data / fsdp / tensor, one ``-1`` fills) is built over the devices of the
target: the topology's chips, or the local devices. A mesh larger than the local device count
cannot be planned on the local backend; simulate N CPU devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=N JAX_PLATFORMS=cpu`` (set before JAX
starts).

    from uniformerv2_jax import plan
    plan.print_memory_plan(config, device_memory_gb=80)   # a table and one JSON line
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uniformerv2_jax import flops as flops_lib
from uniformerv2_jax import sharding as shard_lib
from uniformerv2_jax import train as train_lib
from uniformerv2_jax.errors import InputError
from uniformerv2_jax.model import abstract_model, count_params
from uniformerv2_jax.ops import target_platform
from uniformerv2_jax.optim import OptimConfig, make_optimizer
from uniformerv2_jax.steps import TrainState, split_model

GiB = 1024**3

# HBM per chip (GB as the vendors quote them: 1e9 bytes) for TPU topologies, by name prefix.
TPU_HBM_GB = {"v4": 32.0, "v5e": 16.0, "v5litepod": 16.0, "v5p": 95.0, "v5": 95.0,
              "v6e": 32.0}
# Chip config of the TPU generations (megacore chips expose one device per chip).
_CHIP_CONFIG = {"v4": "megacore", "v5p": "megacore", "v5": "megacore"}


# ----------------------------------------------------------------------------- abstract state
def optim_config(config, steps_per_epoch: int = 1000) -> OptimConfig:
  """The trainer's OptimConfig; the schedule does not change the compiled program's memory, so
  its length here is arbitrary."""
  total = max(int(float(config.epochs) * steps_per_epoch), steps_per_epoch)
  return train_lib.optim_config(config, steps_per_epoch, total,
                                frozen=train_lib.model_config(config).frozen)


def _concrete_small(tree):
  """The model's non-trained state (its own RNG key and counter) as real values: it is closed
  over by the step and tiny."""
  def leaf(a):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      return jax.random.key(0)
    return jnp.zeros(a.shape, a.dtype)

  return jax.tree.map(leaf, tree)


def abstract_run(config, mesh, cfg=None) -> train_lib.Run:
  """A ``train.Run`` whose state is ``ShapeDtypeStruct``s (nothing allocated but the tiny RNG
  state), with the trainer's shardings on ``mesh``."""
  cfg = cfg or train_lib.model_config(config)
  model = abstract_model(cfg, seed=config.seed)
  graphdef, params, batch_stats, other = split_model(model)
  other = _concrete_small(other)
  oc = optim_config(config)
  tx = make_optimizer(oc, params, num_layers=cfg.layers)
  opt_state = jax.eval_shape(tx.init, params)
  state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                     batch_stats=batch_stats, opt_state=opt_state,
                     key=jax.ShapeDtypeStruct((2,), jnp.uint32),
                     ema=params if config.optim.ema_decay > 0 else None)
  rules = train_lib._rules(config)  # noqa: SLF001 - the trainer's own rule parsing
  shardings = train_lib.state_shardings(state, mesh, rules)
  return train_lib.Run(config, cfg, mesh, rules, graphdef, other, state, shardings, tx,
                       oc.steps_per_epoch, oc.steps_per_epoch)


def _with_shardings(tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree,
                      shardings)


def _bytes_per_device(tree, shardings) -> int:
  """Bytes of one device's shards of ``tree`` (abstract leaves) under ``shardings``."""
  total = 0
  for a, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True):
    shape = s.shard_shape(a.shape) if a.shape else ()
    total += math.prod(shape) * jnp.dtype(a.dtype).itemsize
  return int(total)


# ----------------------------------------------------------------------------- target devices
class TopologyError(InputError):
  """A ``--topology`` that cannot be planned for (malformed, unknown chip, no ``libtpu``)."""


def _parse_topology(topology: str) -> tuple[str, tuple[int, ...]]:
  """``"v5e:2x2"`` -> ``("v5e", (2, 2))``; the chip kind must be one of ``TPU_HBM_GB``."""
  m = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)*)", topology.strip())
  if not m:
    raise TopologyError(f"--topology {topology!r} is malformed: expected CHIP:AxB[xC], e.g. "
                        "v5e:2x2, v4:2x2x1, v6e:4x4")
  kind = m.group(1)
  if kind not in TPU_HBM_GB:
    raise TopologyError(f"--topology {topology!r}: unknown TPU chip {kind!r} (known: "
                        f"{', '.join(sorted(TPU_HBM_GB))})")
  return kind, tuple(int(d) for d in m.group(2).split("x"))


def tpu_devices(topology: str, num_slices: int = 1) -> list:
  """Compile-only devices of a TPU slice; :class:`TopologyError` for a malformed topology, an
  unknown chip or a missing ``libtpu`` (the name is checked first, so that error does not
  depend on what is installed)."""
  import importlib.util

  kind, dims = _parse_topology(topology)
  if importlib.util.find_spec("libtpu") is None:
    raise TopologyError(f"--topology {topology} needs libtpu, which is not installed: "
                        f"pip install 'jax[tpu]=={jax.__version__}'")
  from jax.experimental import topologies

  dims3 = dims + (1,) * (3 - len(dims))
  # Hosts of 2x2 chips (as in the names seen to work); smaller slices on one host.
  host = tuple(min(h, d) for h, d in zip((2, 2, 1), dims3, strict=True))
  chip_config = _CHIP_CONFIG.get(kind, "default")
  try:
    topo = topologies.get_topology_desc(
      platform="tpu", topology_name=topology, chip_config_name=chip_config,
      chips_per_host_bounds=host, num_slices=num_slices, wrap=(False, False, False))
  except Exception as e:  # noqa: BLE001 - libtpu refused the shape: one line, no fallback
    raise TopologyError(f"--topology {topology}: libtpu could not build it "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
  return list(topo.devices)


def _target(topology: str | None) -> tuple[list, str]:
  """``(devices, backend name)``: the TPU slice of ``topology``, else the local devices."""
  if topology:
    return tpu_devices(topology), f"tpu ({topology}, AOT)"
  return jax.devices(), jax.default_backend()


def _default_memory_gb(devices, topology: str | None, backend: str) -> float | None:
  if topology and backend.startswith("tpu"):
    kind, _ = _parse_topology(topology)
    return TPU_HBM_GB.get(kind)
  try:
    stats = devices[0].memory_stats() or {}
  except Exception:  # noqa: BLE001 - CPU / compile-only devices have none
    stats = {}
  limit = stats.get("bytes_limit")
  return limit / 1e9 if limit else None


def make_plan_mesh(config, devices):
  try:
    return shard_lib.make_mesh(config.mesh.to_dict(), devices)
  except ValueError as e:
    raise InputError(
      f"{e}. A plan on the local backend can only use the {len(devices)} local device(s): "
      "set config.mesh to fit them, give a TPU topology (with libtpu), or simulate N CPU "
      "devices with XLA_FLAGS=--xla_force_host_platform_device_count=N JAX_PLATFORMS=cpu"
    ) from None


# ----------------------------------------------------------------------------- compiling
def _batch_shapes(config, cfg, clips: int):
  r = cfg.input_resolution
  soft = config.aug.mixup_alpha > 0 or config.aug.cutmix_alpha > 0
  label = (jax.ShapeDtypeStruct((clips, cfg.num_classes), jnp.float32) if soft
           else jax.ShapeDtypeStruct((clips,), jnp.int32))
  return {"video": jax.ShapeDtypeStruct((clips, cfg.num_frames, r, r, 3), jnp.float32),
          "label": label}


# A plan's executable is never run, and XLA:CPU assigns buffers (what the plan reads) before
# LLVM generates code: LLVM at -O0 gives the same sizes and FLOPs in about 60 % of the time
# (B/16 batch 2: 10.0 vs 15.7 s; every byte figure equal).
CPU_PLAN_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def compile_step(run: train_lib.Run, clips: int):
  """``(compiled, seconds)`` of the train step for ``clips`` clips per step (global)."""
  shapes = _batch_shapes(run.config, run.cfg, clips)
  jitted = train_lib.compile_train_step(run, shapes)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shard_lib.batch_sharding(
    run.mesh, run.rules, len(v.shape))) for k, v in shapes.items()}
  state = _with_shardings(run.state, run.state_shardings)
  platform = run.mesh.devices.flat[0].platform
  t0 = time.perf_counter()
  with target_platform(platform):  # e.g. a TPU topology from a CPU host
    lowered = jitted.lower(state, batch)
    compiled = lowered.compile(CPU_PLAN_COMPILE if platform == "cpu" else None)
  return compiled, time.perf_counter() - t0


def _memory(compiled) -> dict[str, int]:
  m = compiled.memory_analysis()
  out = {
    "argument_bytes": int(m.argument_size_in_bytes),
    "output_bytes": int(m.output_size_in_bytes),
    "alias_bytes": int(m.alias_size_in_bytes),
    "temp_bytes": int(m.temp_size_in_bytes),
    "generated_code_bytes": int(getattr(m, "generated_code_size_in_bytes", 0) or 0),
  }
  out["total_bytes_per_device"] = (out["argument_bytes"] + out["output_bytes"]
                                   - out["alias_bytes"] + out["temp_bytes"])
  return out


def _xla_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost.get("flops", 0.0)) if cost else None


def _is_oom(e: Exception) -> bool:
  s = str(e)
  return "RESOURCE_EXHAUSTED" in s or "Ran out of memory" in s or "exceeds available" in s


# ----------------------------------------------------------------------------- the plan
def plan(config, *, device_memory_gb: float | None = None, topology: str | None = None,
         batch_size: int | None = None, fit_batch: bool = True) -> dict[str, Any]:
  """Compile the config's train step ahead of time; memory per device, FLOPs, largest batch.

  ``batch_size``: global clips per step (default ``config.batch_size x aug.num_sample``, what
  the trainer feeds the step). ``device_memory_gb``: memory per device to fit (default: the
  TPU chip's HBM for a topology, the device's ``bytes_limit`` on GPU, none on CPU: then no
  ``max_global_batch`` unless given). ``fit_batch=False`` skips the second compile.
  """
  devices, backend = _target(topology)
  mesh = make_plan_mesh(config, devices)
  cfg = train_lib.model_config(config)
  run = abstract_run(config, mesh, cfg)
  divisor = shard_lib.batch_divisor(mesh, run.rules)
  clips = int(batch_size or config.batch_size * config.aug.num_sample)
  if clips % divisor:
    raise InputError(f"global batch {clips} does not divide over {divisor} batch shards")
  if device_memory_gb is None:
    device_memory_gb = _default_memory_gb(devices, topology, backend)
  st, sh = run.state, run.state_shardings
  result: dict[str, Any] = {
    "model": (f"UniFormerV2 {cfg.width}w x {cfg.layers}L, {cfg.num_frames}x"
              f"{cfg.input_resolution}, {cfg.num_classes} classes"),
    "zoo": str(config.zoo.name) if "zoo" in config else "",
    "backend": backend, "topology": topology or "",
    "devices": int(mesh.size), "mesh": {k: int(v) for k, v in mesh.shape.items()},
    "precision": cfg.dtype, "remat_policy": cfg.remat_policy, "scan_layers": cfg.scan_layers,
    "global_batch": clips, "per_device_batch": clips // divisor,
    "param_count": count_params(st.params),
    "params_bytes": _bytes_per_device(st.params, sh.params),
    "optimizer_bytes": _bytes_per_device(st.opt_state, sh.opt_state),
    "batch_stats_bytes": _bytes_per_device(st.batch_stats, sh.batch_stats),
    "ema_bytes": 0 if st.ema is None else _bytes_per_device(st.ema, sh.ema),
    "flops_per_step": 2 * flops_lib.train_step_macs(cfg, clips),
  }
  result["flops_per_step_per_device"] = result["flops_per_step"] / mesh.size
  result["device_memory_gb"] = device_memory_gb
  try:
    compiled, secs = compile_step(run, clips)
  except Exception as e:  # noqa: BLE001
    if not _is_oom(e):
      raise
    compiled, secs = None, 0.0
    result["compile_error"] = str(e).splitlines()[0][:300]
  result["compile_seconds"] = round(secs, 2)
  if compiled is not None:
    result.update(_memory(compiled))
    result["xla_flops_per_device"] = _xla_flops(compiled)
  else:  # out of memory on the target at this batch: no figures at this batch
    result.update(argument_bytes=None, output_bytes=None, alias_bytes=None, temp_bytes=None,
                  generated_code_bytes=None, total_bytes_per_device=None,
                  xla_flops_per_device=None)
  limit = None if device_memory_gb is None else device_memory_gb * 1e9
  result["fits"] = (None if limit is None else
                    compiled is not None and result["total_bytes_per_device"] <= limit)
  result["max_global_batch"] = None
  result["bytes_per_clip"] = None
  if fit_batch and limit is not None:
    _fit(run, result, clips, divisor, limit, compiled)
  return result


def _fit(run, result, clips, divisor, limit, compiled):
  """Linear fit of the total bytes in the global batch from two compiles."""
  points = []
  if compiled is not None:
    points.append((clips, result["total_bytes_per_device"]))
  # The second point: half the batch (or double it when at one clip per batch shard; when the
  # configured batch did not compile, one and two clips per shard).
  others = ([clips // 2] if clips // divisor >= 2 and (clips // 2) % divisor == 0 else
            [clips * 2]) if compiled is not None else [divisor, 2 * divisor]
  for b in others:
    try:
      c2, _ = compile_step(run, b)
      points.append((b, _memory(c2)["total_bytes_per_device"]))
    except Exception as e:  # noqa: BLE001
      if not _is_oom(e):
        raise
      result["max_global_batch"] = 0 if b == divisor else None
      return
  (b1, t1), (b2, t2) = sorted(points)[:2]
  slope = (t2 - t1) / (b2 - b1)
  fixed = t1 - slope * b1
  result["bytes_per_clip"] = int(slope)
  result["fixed_bytes"] = int(fixed)
  if slope <= 0:
    return
  best = int((limit - fixed) // slope)
  result["max_global_batch"] = max(best // divisor * divisor, 0)


# ----------------------------------------------------------------------------- reporting
def _gib(n) -> str:
  if n is None:
    return "-"
  for unit, size in (("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
    if abs(n) >= size:
      return f"{n / size:8.2f} {unit}"
  return f"{n:8d} B"


def format_table(r: dict[str, Any]) -> str:
  rows = [
    ("model", r["model"] + (f" ({r['zoo']})" if r.get("zoo") else "")),
    ("backend", r["backend"]),
    ("mesh", " ".join(f"{k}={v}" for k, v in r["mesh"].items()) + f"  ({r['devices']} devices)"),
    ("precision / remat / scan", f"{r['precision']} / {r['remat_policy']} / {r['scan_layers']}"),
    ("global batch (per device)", f"{r['global_batch']} ({r['per_device_batch']})"),
    ("parameters", f"{r['param_count']:,}"),
    ("params / device", _gib(r["params_bytes"])),
    ("optimizer state / device", _gib(r["optimizer_bytes"])),
    ("batch stats + EMA / device", _gib(r["batch_stats_bytes"] + r["ema_bytes"])),
    ("arguments (XLA)", _gib(r["argument_bytes"])),
    ("outputs (XLA)", _gib(r["output_bytes"])),
    ("aliased (donated)", _gib(r["alias_bytes"])),
    ("temporaries (activations)", _gib(r["temp_bytes"])),
    ("total / device", _gib(r["total_bytes_per_device"])),
    ("FLOPs / step (2 x MACs, 3x fwd)", f"{r['flops_per_step'] / 1e12:.4g} TFLOP"),
    ("compile", f"{r['compile_seconds']:.1f} s"),
  ]
  if r.get("compile_error"):
    rows.append(("compile error", r["compile_error"]))
  if r.get("device_memory_gb"):
    rows.append(("device memory", f"{r['device_memory_gb']:.1f} GB  fits: {r['fits']}"))
    if r.get("bytes_per_clip") is not None:
      rows.append(("+ per extra clip (global)", _gib(r["bytes_per_clip"])))
    rows.append(("largest global batch that fits", str(r["max_global_batch"])))
  w = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def print_memory_plan(config, *, device_memory_gb: float | None = None,
                      topology: str | None = None, batch_size: int | None = None,
                      fit_batch: bool = True) -> dict[str, Any]:
  """``--mode plan``: print the table and one JSON line; returns the dict."""
  result = plan(config, device_memory_gb=device_memory_gb, topology=topology,
                batch_size=batch_size, fit_batch=fit_batch)
  print(format_table(result))
  print(json.dumps(result, sort_keys=True, default=_json_default))
  return result


def _json_default(o):
  if isinstance(o, (np.integer, np.floating)):
    return o.item()
  return str(o)
