"""Benchmark suite: throughput, compile time and memory over models x settings.

One command runs, for each model and setting, the real eval forward (``make_eval_step``) and
train step (``make_train_step`` + ``make_optimizer``, donated state), and reports

* clips/s of each, and the fraction of peak: on CPU against the float32 2048x2048 matmul rate
  measured in the same run (sampled between cases); on a GPU / TPU the MFU against the dense
  bf16 peak of the detected device (e.g. H100 SXM 989 TFLOP/s; ``--peak_tflops`` overrides).
  FLOPs are 2 x the MACs of ``flops.py`` (train step = 3 x forward);
* compile time of each (``lower().compile()``, timed apart);
* peak memory from ``compiled.memory_analysis()`` (arguments + outputs - aliased + temporaries)
  and, where the device reports it, ``peak_bytes_in_use``.

Models: ``tiny`` (the tiny_k400 fixture), ``b16`` (k400:b16_8x224), ``l14`` (k400 L/14 8x224;
accelerators only). Settings: batch sizes x precisions (float32, bfloat16) with scanned layers
and no remat, then scan-vs-loop and the remat policies at one batch size.

    python benchmarks/suite.py --quick          # CPU: tiny only, a few settings (~3-5 min)
    python benchmarks/suite.py                  # CPU: tiny + B/16; GPU: tiny, B/16, L/14
    python benchmarks/suite.py --models b16 --batches 8,32 --precisions bfloat16 --remats none,full

Prints a table and one JSON line per case (``name``, ``model``, ``batch``, ``precision``,
``scan``, ``remat``, ``eval_clips_per_s``, ``train_clips_per_s``, ``eval_fraction_of_peak``,
``train_fraction_of_peak``, ``*_compile_seconds``, ``*_peak_bytes``, ``error``...).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import speed_common as sc  # noqa: E402

from uniformerv2_jax import host_memory  # noqa: E402

DEFAULT_BATCHES = {"tiny": (1, 8), "b16": (1, 4), "l14": (1, 4)}
ACCEL_BATCHES = {"tiny": (8, 64), "b16": (8, 32), "l14": (4, 16)}


def cases(models, batches, precisions, remats, scans, accel: bool):
  """(model, batch, precision, scan, remat): a sweep of batch x precision (scan, no remat),
  then the other scan / remat settings at the largest batch and the last precision."""
  out = []
  for m in models:
    bs = batches or (ACCEL_BATCHES if accel else DEFAULT_BATCHES)[m]
    for b in bs:
      for p in precisions:
        out.append((m, b, p, True, "none"))
    b, p = bs[-1], precisions[-1]
    for scan in scans:
      for r in remats:
        c = (m, b, p, scan, r)
        if c not in out:
          out.append(c)
  return out


def peak_bytes_in_use():
  try:
    return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  except Exception:  # noqa: BLE001
    return None


def run_case(model, batch, precision, scan, remat, reps, peak, accel_peak):
  over = dict(scan_layers=scan, remat_policy=remat, dtype=precision)
  rec = {"name": f"{model}_b{batch}_{precision}_{'scan' if scan else 'loop'}_{remat}",
         "model": model, "batch": batch, "precision": precision, "scan": scan, "remat": remat,
         "backend": jax.default_backend(), "device": jax.devices()[0].device_kind}
  try:
    b = sc.Bench(sc.model_config(model, **over), batch)
  except Exception as e:  # noqa: BLE001 - out of memory at compile etc.: record and go on
    rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    return rec
  try:
    b.run_eval()
    b.run_train()
    if peak is not None:
      peak.sample()
    ref = accel_peak or peak.flops
    rec["peak_flops_reference"] = ref
    rec["reference"] = "bf16 dense peak" if accel_peak else "f32 matmul (measured)"
    for kind, fn, flops, compile_s, mem in (
        ("eval", b.run_eval, b.eval_flops, b.eval_compile_s, b.eval_memory),
        ("train", b.run_train, b.train_flops, b.train_compile_s, b.train_memory)):
      ts = [sc.time_call(fn, 0.5) for _ in range(reps)]
      s = sc.median(ts)
      rec[f"{kind}_seconds"] = s
      rec[f"{kind}_clips_per_s"] = batch / s
      rec[f"{kind}_gflops_per_s"] = flops / s / 1e9
      rec[f"{kind}_fraction_of_peak"] = flops / s / ref
      rec[f"{kind}_compile_seconds"] = compile_s
      rec[f"{kind}_peak_bytes"] = mem["peak_bytes"] if mem else None
      rec[f"{kind}_temp_bytes"] = mem["temp_bytes"] if mem else None
    rec["device_peak_bytes_in_use"] = peak_bytes_in_use()
  except Exception as e:  # noqa: BLE001
    rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
  finally:
    del b
    gc.collect()
    jax.clear_caches()
  return rec


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny only, few settings (CPU)")
  p.add_argument("--models", default=None)
  p.add_argument("--batches", default=None, help="comma list (default per model)")
  p.add_argument("--precisions", default="float32,bfloat16")
  p.add_argument("--remats", default="none,full,dots,dots_no_batch")
  p.add_argument("--scans", default="scan,loop")
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--peak_tflops", type=float, default=None, help="override the device peak")
  a = p.parse_args(argv)
  accel = jax.default_backend() != "cpu"
  accel_peak = a.peak_tflops * 1e12 if a.peak_tflops else sc.accelerator_peak_flops()
  if a.models:
    models = a.models.split(",")
  elif a.quick:
    models = ["tiny"]
  else:
    models = ["tiny", "b16"] + (["l14"] if accel else [])
  remats = a.remats.split(",")
  scans = [s == "scan" for s in a.scans.split(",")]
  batches = tuple(int(x) for x in a.batches.split(",")) if a.batches else None
  if a.quick and not a.batches:
    batches = (2,)
  if a.quick and a.remats == p.get_default("remats"):
    remats = ["none", "full"]
  todo = cases(models, batches, a.precisions.split(","), remats, scans, accel)
  load0 = sc.loadavg()
  peak = None if accel_peak else sc.MatmulPeak()
  if peak is not None:
    peak.sample()
  records = []
  for c in todo:
    print(f"# {c}", file=sys.stderr, flush=True)
    rec = run_case(*c, a.reps, peak, accel_peak)
    rec["loadavg"] = sc.loadavg()
    records.append(rec)
    sc.emit(rec)
  ref = accel_peak or peak.flops
  print(f"\nsuite on {jax.devices()[0].device_kind} ({jax.default_backend()}); reference "
        f"{'bf16 dense peak' if accel_peak else 'f32 matmul (measured, median)'} "
        f"{ref / 1e9:.1f} GFLOP/s; load average {load0} -> {sc.loadavg()}")
  hdr = (f"{'case':<34}{'eval clip/s':>12}{'frac':>6}{'train clip/s':>13}{'frac':>6}"
         f"{'compile e/t s':>15}{'peak mem train':>16}")
  print(hdr)
  for r in records:
    if "error" in r:
      print(f"{r['name']:<34}  {r['error'][:90]}")
      continue
    print(f"{r['name']:<34}{r['eval_clips_per_s']:>12.3f}{r['eval_fraction_of_peak']:>6.2f}"
          f"{r['train_clips_per_s']:>13.3f}{r['train_fraction_of_peak']:>6.2f}"
          f"{r['eval_compile_seconds']:>7.1f}/{r['train_compile_seconds']:<7.1f}"
          f"{(r['train_peak_bytes'] or 0) / 2**30:>12.2f} GiB")
  return records


if __name__ == "__main__":
  host_memory.reexec_with_malloc_tuning()  # huge-page malloc, as main.py
  main()
