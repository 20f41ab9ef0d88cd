"""Exporting B/16 8x224 for serving: export time and file size of ``.jax`` and ``.onnx``, their
forward time at batch 1 against the model's own compiled forward, and the logits' agreement.

    python benchmarks/export_speed.py [--repeats 5] [--formats jax,onnx] [--no-scan]

Random weights (the official initialisation), one 8x224 clip. Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from uniformerv2_jax import checkpoint, exported, load_exported  # noqa: E402
from uniformerv2_jax.model import ModelConfig, create_model  # noqa: E402


def median_time(fn, x, repeats: int) -> float:
  jax.block_until_ready(fn(x))  # compile / warm up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(x))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--formats", default="jax,onnx")
  p.add_argument("--no-scan", action="store_true", help="layers as a Python loop, not lax.scan")
  a = p.parse_args()
  model = create_model(ModelConfig(scan_layers=not a.no_scan))  # B/16 8x224, K400 head
  x = np.random.default_rng(0).standard_normal((1, 8, 224, 224, 3)).astype(np.float32)
  want = np.asarray(model(x, train=False))
  row = {"model": "b16_8x224", "batch": 1, "model_forward_s": median_time(
    lambda v: model(v, train=False), x, a.repeats)}
  with tempfile.TemporaryDirectory() as tmp:
    checkpoint.save_model(Path(tmp) / "ckpt", model)
    for suffix in (f".{f}" for f in a.formats.split(",")):
      out = str(Path(tmp) / f"b16{suffix}")
      t0 = time.perf_counter()
      exported.export(str(Path(tmp) / "ckpt"), out)
      key = suffix[1:]
      row[f"{key}_export_s"] = time.perf_counter() - t0
      row[f"{key}_mib"] = os.path.getsize(out) / 2**20
      f = load_exported(out)
      row[f"{key}_max_abs_logit_diff"] = float(np.abs(np.asarray(f(x)) - want).max())
      row[f"{key}_forward_s"] = median_time(f, x, a.repeats)
      print({k: v for k, v in row.items() if k.startswith(key)}, flush=True)
  for k, v in row.items():
    print(f"{k:28s} {v if isinstance(v, str) else f'{v:.4g}'}")
  print(json.dumps({"benchmark": "export_speed", **row}))


if __name__ == "__main__":
  main()
