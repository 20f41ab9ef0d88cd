"""Which model-zoo settings fit one device of ``--memory_gb`` (default 80 GB), with which
precision / remat / FSDP choices: ``uniformerv2_jax.plan`` on each case, as a markdown table
(for the README) and one JSON line per case.

Each case compiles the zoo recipe's train step at 1 and 2 clips per device (abstract inputs,
nothing allocated) and fits the total bytes per device linearly in the batch, giving the
largest clips per device. On a CPU-only machine this is XLA:CPU's buffer assignment standing
in for the accelerator's (label it so); with ``--topology`` and libtpu it is the TPU compiler.
For FSDP over N devices run with N simulated CPU devices:

    python benchmarks/zoo_fit.py                                  # default cases, 1 device
    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
      python benchmarks/zoo_fit.py --fsdp 8 --cases k400:l14_64x336_k710:bfloat16:full
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uniformerv2_jax import plan as plan_lib  # noqa: E402
from uniformerv2_jax.configs import common  # noqa: E402

DEFAULT_CASES = (
  "k400:b16_8x224:float32:none",
  "k400:b16_8x224:bfloat16:none",
  "k400:l14_8x224_k710:float32:none",
  "k400:l14_32x336_k710:bfloat16:full",
  "k400:l14_64x336_k710:float32:full",
  "k400:l14_64x336_k710:bfloat16:full",
  "k400:l14_64x336_k710:bfloat16:none",
)


def run_case(case: str, memory_gb: float, fsdp: int, topology: str | None):
  dataset, arg, precision, remat = case.split(":")
  c = common.from_zoo(dataset, arg)
  c.precision = precision
  c.remat_policy = remat
  c.mesh.data, c.mesh.fsdp = -1, fsdp
  t0 = time.perf_counter()
  devices = plan_lib._target(topology)[0]  # noqa: SLF001
  n = len(devices)
  divisor = n  # the batch splits over data x fsdp = all devices (tensor = 1)
  r = plan_lib.plan(c, device_memory_gb=memory_gb, topology=topology, batch_size=divisor)
  r["case"] = case
  r["wall_seconds"] = round(time.perf_counter() - t0, 1)
  r["max_clips_per_device"] = (None if r["max_global_batch"] is None
                               else r["max_global_batch"] // divisor)
  return r


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--cases", default=",".join(DEFAULT_CASES),
                 help="comma list of dataset:arg:precision:remat")
  p.add_argument("--memory_gb", type=float, default=80.0)
  p.add_argument("--fsdp", type=int, default=1)
  p.add_argument("--topology", default=None)
  a = p.parse_args(argv)
  rows = []
  for case in a.cases.split(","):
    print(f"# {case}", file=sys.stderr, flush=True)
    try:
      r = run_case(case, a.memory_gb, a.fsdp, a.topology)
    except Exception as e:  # noqa: BLE001
      r = {"case": case, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    rows.append(r)
    print(json.dumps(r, sort_keys=True, default=str), flush=True)
  gib = 1024**3
  print(f"\n| setting | precision | remat | devices (fsdp) | params+opt / dev | temporaries at "
        f"1 clip/dev | total at 1 clip/dev | + per clip | fits {a.memory_gb:g} GB at 1 clip | "
        f"max clips / dev | compile s |")
  print("|" + "---|" * 11)
  for r in rows:
    if "error" in r:
      print(f"| {r['case']} | error: {r['error']} |")
      continue
    ds, arg, prec, remat = r["case"].split(":")

    def g(key, r=r):
      v = r.get(key)
      return "-" if v is None else f"{v / gib:.1f} GiB"

    print(f"| {ds}:{arg} | {prec} | {remat} | {r['devices']} ({r['mesh']['fsdp']}) | "
          f"{(r['params_bytes'] + r['optimizer_bytes']) / gib:.2f} GiB | {g('temp_bytes')} | "
          f"{g('total_bytes_per_device')} | {g('bytes_per_clip')} | "
          f"{'yes' if r['fits'] else 'no'} | {r['max_clips_per_device']} | "
          f"{r['compile_seconds']:.0f} |")
  print(f"\nbackend: {rows[0].get('backend', '?') if rows else '?'} "
        "(CPU = XLA:CPU buffer assignment as a stand-in for the GPU's)")


if __name__ == "__main__":
  main()
