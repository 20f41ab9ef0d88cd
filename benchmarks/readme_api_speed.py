"""The README's Python API against the official PyTorch forward, in one process: ``logits =
model(x)`` on a model as ``load_official`` returns it (eval mode, B/16 8x224, batch 1, float32,
random weights) and the official model's ``model(x)`` under ``torch.no_grad()`` in eval mode,
alternating round by round so both see the same machine.

    python benchmarks/readme_api_speed.py --official UNIFORMERV2_CHECKOUT

The official model is built as in ``benchmarks/torch_speed.py`` (a checkout of
OpenGVLab/UniFormerV2, imported from there). The process keeps the environment it was started
with (what a user's script gets); ``--malloc-tuning`` re-executes it with the huge-page malloc
setting of main.py instead. ``--eager`` also times the op-by-op forward (``model.forward(x)``).

Prints a table, then one JSON line per measurement (``name``, ``seconds``: the median of all
timed calls, ``seconds_all``, ``loadavg``) and a last JSON line with ``ratio_readme_to_official``
(below 1: the README call is faster than the official forward).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import speed_common as sc  # noqa: E402
import torch_speed  # noqa: E402  (sets OMP_WAIT_POLICY before torch is imported)

from uniformerv2_jax import host_memory  # noqa: E402
from uniformerv2_jax.model import create_model  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--official", required=True, help="checkout of OpenGVLab/UniFormerV2")
  p.add_argument("--rounds", type=int, default=3, help="alternating rounds")
  p.add_argument("--repeats", type=int, default=3, help="timed calls per framework and round")
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
  p.add_argument("--eager", action="store_true", help="also time model.forward(x), op by op")
  p.add_argument("--malloc-tuning", action="store_true",
                 help="re-execute with main.py's huge-page malloc setting")
  a = p.parse_args(argv)
  import jax
  import jax.numpy as jnp
  import torch

  torch.set_num_threads(a.threads)
  cfg = sc.model_config("b16")
  official = torch_speed.official_b16(torch_speed.load_official(a.official), cfg).eval()
  model = create_model(cfg)  # eval mode, as load_official / load_checkpoint return it
  x_torch = torch.randn(1, 3, cfg.num_frames, cfg.input_resolution, cfg.input_resolution)
  x = jnp.asarray(x_torch.numpy().transpose(0, 2, 3, 4, 1))  # the README's [B, T, H, W, 3]

  def readme_call():
    return model(x).block_until_ready()

  def official_call():
    with torch.no_grad():
      return official(x_torch)

  def eager_call():
    return model.forward(x).block_until_ready()

  t0 = time.perf_counter()
  readme_call()
  first_call_s = time.perf_counter() - t0
  official_call()
  jobs = [("readme_model_call", readme_call), ("official_torch_forward", official_call)]
  if a.eager:
    eager_call()
    jobs.append(("eager_model_forward", eager_call))
  samples: dict[str, list[float]] = {name: [] for name, _ in jobs}
  for _ in range(a.rounds):
    for name, fn in jobs:
      fn()  # untimed after switching frameworks (the other one's allocator returned memory)
      samples[name] += [sc.time_call(fn, 0.0) for _ in range(a.repeats)]
  load = sc.loadavg()
  records = [{"name": name, "seconds": sc.median(s), "seconds_all": [round(t, 4) for t in s],
              "loadavg": load, "threads": a.threads, "torch_version": torch.__version__,
              "jax_version": jax.__version__} for name, s in samples.items()]
  records[0]["first_call_seconds"] = round(first_call_s, 3)  # compilation included
  by = {r["name"]: r["seconds"] for r in records}
  ratio = by["readme_model_call"] / by["official_torch_forward"]
  print(f"\nB/16 8x224 batch 1 float32 eval forward, {a.rounds} alternating rounds x "
        f"{a.repeats} calls, torch {torch.__version__} ({a.threads} threads), load {load}")
  print(f"{'name':<26}{'median s':>10}{'min s':>8}{'max s':>8}")
  for r in records:
    s = samples[r["name"]]
    print(f"{r['name']:<26}{r['seconds']:>10.3f}{min(s):>8.3f}{max(s):>8.3f}")
  print(f"first README call (compiles): {first_call_s:.1f} s")
  print(f"README call / official forward: {ratio:.3f}")
  for r in records:
    sc.emit(r)
  summary = {"name": "readme_vs_official", "ratio_readme_to_official": ratio, "loadavg": load,
             **{f"{k}_seconds": v for k, v in by.items()}}
  sc.emit(summary)
  return summary


if __name__ == "__main__":
  if "--malloc-tuning" in sys.argv:
    host_memory.reexec_with_malloc_tuning()
  main()
