"""Exporting B/16 8x224 for serving: export time, peak memory and file size of ``.jax`` and
``.onnx``, their forward time at batch 1 against the model's own compiled forward, and the logits'
agreement.

    python benchmarks/export_speed.py [--repeats 5] [--formats jax,onnx] [--no-scan]
                                      [--memory-cap-gb 14]

Random weights (the official initialisation), one 8x224 clip. The script and each export, the
real command (``main.py --mode export``) in a child process, run under an address-space cap
(``--memory-cap-gb``), so that a conversion or session that runs away fails instead of exhausting
the host; an export's peak RSS is its child's own. The forward times alternate the loaded export
and the jitted JAX forward (``compiled_eval_forward``) call by call, medians of ``--repeats``
calls each. Prints a table and a JSON line; exits non-zero when an export's logits differ from
the JAX forward's by more than ``--tolerance``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uniformerv2_jax import checkpoint, load_exported  # noqa: E402
from uniformerv2_jax.model import ModelConfig, compiled_eval_forward, create_model  # noqa: E402


def run_export(ckpt: Path, out: Path) -> tuple[float, float]:
  """``main.py --mode export`` in a child process (which inherits this one's memory cap):
  (seconds, the child's peak RSS in GiB)."""
  t0 = time.perf_counter()
  child = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--mode", "export",
                            "--checkpoint", str(ckpt), "--output", str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  log = child.stdout.read().decode(errors="replace")
  _, status, usage = os.wait4(child.pid, 0)
  seconds = time.perf_counter() - t0
  if os.waitstatus_to_exitcode(status) != 0:
    sys.exit(f"export to {out} failed:\n{log[-3000:]}")
  return seconds, usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def alternating_medians(fns: dict, x: np.ndarray, repeats: int) -> dict[str, float]:
  """Median seconds per call of each function, the functions taking turns call by call (after
  one warm-up call each), so that drifts of the host's speed hit all of them alike."""
  for fn in fns.values():
    jax.block_until_ready(fn(x))
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(x))
      times[name].append(time.perf_counter() - t0)
  return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--formats", default="jax,onnx")
  p.add_argument("--no-scan", action="store_true", help="layers as a Python loop, not lax.scan")
  p.add_argument("--memory-cap-gb", type=float, default=14.0,
                 help="address-space limit of this process and each export process")
  p.add_argument("--tolerance", type=float, default=1e-4,
                 help="largest accepted |export - JAX| logit difference (float32 round-off)")
  a = p.parse_args()
  # A runaway conversion or onnxruntime session fails with an allocation error instead of
  # exhausting the host's memory; the export children inherit the limit.
  cap = int(a.memory_cap_gb * 2**30)
  resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
  model = create_model(ModelConfig(scan_layers=not a.no_scan))  # B/16 8x224, K400 head
  graphdef, state = nnx.split(model)

  def jax_forward(v):
    return compiled_eval_forward(graphdef, state, v)

  x = np.random.default_rng(0).standard_normal((1, 8, 224, 224, 3)).astype(np.float32)
  want = np.asarray(jax_forward(x))
  row: dict = {"model": "b16_8x224", "batch": 1, "load_average": os.getloadavg()[0]}
  failed = []
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = Path(tmp) / "ckpt"
    checkpoint.save_model(ckpt, model)
    for key in a.formats.split(","):
      out = Path(tmp) / f"b16.{key}"
      row[f"{key}_export_s"], row[f"{key}_export_peak_rss_gib"] = run_export(ckpt, out)
      row[f"{key}_mib"] = out.stat().st_size / 2**20
      f = load_exported(out)
      diff = float(np.abs(np.asarray(f(x)) - want).max())
      row[f"{key}_max_abs_logit_diff"] = diff
      if diff > a.tolerance:
        failed.append(f"{key}: max |logits - JAX| {diff:.3g} > {a.tolerance:g}")
      medians = alternating_medians({"model": jax_forward, "export": f}, x, a.repeats)
      row[f"{key}_forward_s"] = medians["export"]
      row[f"{key}_jax_forward_s"] = medians["model"]  # the jitted JAX forward timed alongside
      row[f"{key}_forward_vs_jax"] = medians["export"] / medians["model"]
      del f  # its weights (and an onnxruntime session's buffers) before the next export
      print({k: v for k, v in row.items() if k.startswith(key)}, flush=True)
  for k, v in row.items():
    print(f"{k:30s} {v if isinstance(v, str) else f'{v:.4g}'}")
  print(json.dumps({"benchmark": "export_speed", **row}))
  if failed:
    sys.exit("; ".join(failed))


if __name__ == "__main__":
  main()
