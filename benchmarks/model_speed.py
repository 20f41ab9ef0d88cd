"""Model speed on this machine: eval forward and train step of B/16 8x224 and the tiny fixture.

For each model: compile time (``jax.jit(...).lower(...).compile()``, timed apart), then seconds
per eval forward (``steps.make_eval_step``) and per train step (``steps.make_train_step`` with
the official optimizer chain from ``optim.make_optimizer``: clip + AdamW, donated state), as
GFLOP/s against the model's FLOP count (2 x the MACs of ``flops.py``; train step = 3 x
forward) and as a fraction of the float32 matmul rate measured in the same run (2048 x 2048
``jnp.dot`` under ``jax.jit``, median of 5 per sample). Every model sample is bracketed by two
matmul samples and its fraction taken against their mean; the median over rounds is reported
(``fraction_of_run_median_peak``: against the run's median matmul instead), so a neighbour's
load or a drifting host hits both alike; the load average is recorded in every line.

    python benchmarks/model_speed.py                 # tiny + B/16, float32, scanned layers
    python benchmarks/model_speed.py --quick         # tiny only (~1 min)
    python benchmarks/model_speed.py --precision bfloat16 --loop --remat full --batch 2
    python benchmarks/model_speed.py --models b16 --remat none,dots,full   # same-run comparison

The train step runs with ``remat_policy=qkv_mlp`` unless ``--remat`` says otherwise: on XLA:CPU,
keeping only the q/k/v projection, the MLP hidden layer and the residual stream and recomputing
the rest in the backward pass beats stacking every residual in the scanned backbone (B/16, same
run: 4.49 s vs 4.90 s with ``dots``; one noisier run had them the other way round; ``full`` and
``none`` 0.5 s and 2 s slower than ``dots``; and the least memory after ``full``;
benchmarks/RESULTS.md, "Remat policies on CPU"). The FLOP count stays the model's
(recomputation is not counted), so the fraction of peak is MFU-like.

On a 2-core Intel Xeon host (2026-12-05) B/16 reached 0.81-0.87 of the matmul rate in the eval
forward and 0.59-0.70 in the train step, with an 8.6-12 s train-step compile
(benchmarks/RESULTS.md, "Eval forward and train step on CPU").

Prints a table and one JSON line per measurement: ``name``, ``seconds``, ``gflops_per_s``,
``fraction_of_peak``, ``compile_seconds``, ``flops``, ``samples``, ``loadavg`` ... plus
``matmul_f32`` (``gflops_per_s`` of the reference).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import speed_common as sc  # noqa: E402

from uniformerv2_jax import host_memory  # noqa: E402
from uniformerv2_jax.model import REMAT_POLICIES  # noqa: E402


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
  g = p.add_mutually_exclusive_group()
  g.add_argument("--scan", dest="scan", action="store_true", default=True)
  g.add_argument("--loop", dest="scan", action="store_false")
  p.add_argument("--remat", default="qkv_mlp",
                 help="train step's remat policy, or a comma list compared in the same run "
                 f"({', '.join(REMAT_POLICIES)}; default qkv_mlp: the fastest on XLA:CPU)")
  p.add_argument("--batch", type=int, default=1, help="clips per forward / step")
  p.add_argument("--quick", action="store_true", help="tiny fixture only")
  p.add_argument("--models", default=None, help="comma list of tiny,b16,l14 (default tiny,b16)")
  p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; 5 quick)")
  p.add_argument("--no-train", action="store_true")
  p.add_argument("--no-eval", action="store_true")
  a = p.parse_args(argv)
  names = (a.models.split(",") if a.models else ["tiny"] if a.quick else ["tiny", "b16"])
  rounds = a.rounds or (5 if a.quick else 3)
  remats = a.remat.split(",")
  for r in remats:
    if r not in REMAT_POLICIES:
      p.error(f"--remat {r!r}: expected one of {', '.join(REMAT_POLICIES)}")
  tag = f"{a.precision},{'scan' if a.scan else 'loop'},remat={a.remat},batch={a.batch}"
  load0 = sc.loadavg()

  peak = sc.MatmulPeak()
  peak.sample()
  benches = {}  # key: model name, or "model[remat]" when several policies are compared
  for n in names:
    for i, r in enumerate(remats):
      key = n if len(remats) == 1 else f"{n}[{r}]"
      over = dict(scan_layers=a.scan, remat_policy=r, dtype=a.precision)
      # The eval forward has no backward pass, so remat cannot change it: timed once.
      b = sc.Bench(sc.model_config(n, **over), a.batch, train=not a.no_train,
                   evaluate=not a.no_eval and i == 0)
      benches[key] = b
      print(f"# compiled {key}: eval {b.eval_compile_s or 0:.1f} s, train step "
            f"{b.train_compile_s or 0:.1f} s", file=sys.stderr, flush=True)
    if b.eval_compiled is not None:
      b.run_eval()  # warm-up (first-call allocations)
    if b.train_compiled is not None:
      b.run_train()

  times: dict[tuple[str, str], list[float]] = {}
  cpus: dict[tuple[str, str], list[float]] = {}
  # Every model sample sits between two matmul samples; its fraction of peak is taken against
  # their mean, so a host whose speed drifts over minutes (seen: 231-428 GFLOP/s within an
  # hour) moves both alike. Reported: the median of the per-sample fractions.
  bracket: dict[tuple[str, str], list[int]] = {}
  for _ in range(rounds):
    for n, b in benches.items():
      for kind, compiled, fn in (("eval_forward", b.eval_compiled, b.run_eval),
                                 ("train_step", b.train_compiled, b.run_train)):
        if compiled is not None:
          peak.sample()
          bracket.setdefault((n, kind), []).append(len(peak.samples) - 1)
          times.setdefault((n, kind), []).append(
            sc.time_call(fn, cpu=cpus.setdefault((n, kind), [])))
  peak.sample()
  load1 = sc.loadavg()
  ref = peak.flops

  records = [{"name": "matmul_f32_2048", "seconds": 2 * peak.N**3 / ref,
              "gflops_per_s": ref / 1e9, "fraction_of_peak": 1.0, "compile_seconds": None,
              "samples": len(peak.samples), "loadavg": [load0, load1]}]
  for (n, kind), ts in times.items():
    b = benches[n]
    flops = b.eval_flops if kind == "eval_forward" else b.train_flops
    s = sc.median(ts)
    around = [0.5 * (peak.samples[i] + peak.samples[i + 1]) for i in bracket[(n, kind)]]
    fraction = sc.median([flops / t / m for t, m in zip(ts, around, strict=True)])
    records.append({
      "name": f"{n}_{kind}", "model": n.split("[")[0], "kind": kind, "config": tag,
      "batch": a.batch, "precision": a.precision, "scan": a.scan,
      "remat": b.cfg.remat_policy if kind == "train_step" else None,
      "seconds": s, "seconds_all": [round(t, 4) for t in ts], "flops": flops,
      "gflops_per_s": flops / s / 1e9, "fraction_of_peak": fraction,
      "fraction_of_run_median_peak": flops / s / ref,
      "matmul_f32_gflops_per_s": ref / 1e9,
      "compile_seconds": b.eval_compile_s if kind == "eval_forward" else b.train_compile_s,
      "compile_cpu_seconds": (b.eval_compile_cpu_s if kind == "eval_forward"
                              else b.train_compile_cpu_s),
      # Load-robust cross-check: FLOP per CPU-second (all threads) against the matmul's.
      "cpu_seconds": sc.median(cpus[(n, kind)]),
      "fraction_of_peak_cpu_time": flops / sc.median(cpus[(n, kind)]) / peak.flops_per_cpu_s,
      "clips_per_s": a.batch / s, "samples": len(ts), "loadavg": [load0, load1],
    })

  print(f"\nmodel speed ({tag}); f32 matmul reference {ref / 1e9:.1f} GFLOP/s "
        f"(median of {len(peak.samples)} samples); load average {load0} -> {load1}")
  print(f"{'name':<28}{'seconds':>10}{'GFLOP/s':>10}{'of peak':>9}{'(cpu-time)':>11}"
        f"{'compile s':>11}{'(cpu s)':>9}")
  for r in records:
    c, cc = r["compile_seconds"], r.get("compile_cpu_seconds")
    fc = r.get("fraction_of_peak_cpu_time", 1.0)
    print(f"{r['name']:<28}{r['seconds']:>10.4f}{r['gflops_per_s']:>10.1f}"
          f"{r['fraction_of_peak']:>9.2f}{fc:>11.2f}{'' if c is None else f'{c:.1f}':>11}"
          f"{'' if cc is None else f'{cc:.1f}':>9}")
  for r in records:
    sc.emit(r)
  return records


if __name__ == "__main__":
  host_memory.reexec_with_malloc_tuning()  # huge-page malloc, as main.py
  main()
