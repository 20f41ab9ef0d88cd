"""Videos/s of ``prepare`` in this process (``--runner local``) against Beam's DirectRunner
(``mp2``: multi_processing mode with 2 workers, ``mt2``: multi_threading with 2, ...), on the same
list of generated H.264 videos (``--distinct`` different ones, copied to make ``--videos``).

    python benchmarks/prepare_speed.py [--videos 48] [--distinct 4] [--frames 60]
        [--size 320x240] [--records-per-shard 4] [--runs local,mp1,mp2] [--format jpeg]

Each run writes a fresh output folder; its time is the whole ``prepare`` call (planning, Beam
start-up and shutdown included). The outputs are checked to be byte-identical. Prints a table
and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from uniformerv2_jax.data import demo_dataset, prepare  # noqa: E402


def make_videos(root: str, n: int, distinct: int, frames: int, width: int, height: int) -> str:
  """``n`` videos of a moving gradient with noise (real work for the decoder), and their list;
  video i is a copy of video i % distinct (generating them costs more than preparing them)."""
  rng = np.random.default_rng(0)
  y, x = np.mgrid[:height, :width]
  lines = []
  for i in range(n):
    path = os.path.join(root, f"v{i}.mp4")
    if i >= distinct:
      shutil.copyfile(os.path.join(root, f"v{i % distinct}.mp4"), path)
    else:
      t = np.arange(frames)[:, None, None]
      base = (x[None] * 0.8 + y[None] * 0.4 + 3 * t * (i % 5 + 1)) % 256
      clip = np.stack([base, np.roll(base, i, axis=2), 255 - base], axis=-1)
      clip = clip + rng.integers(0, 24, clip.shape)
      demo_dataset.write_mp4(path, np.clip(clip, 0, 255).astype(np.uint8))
    lines.append(f"v{i}.mp4,{i % 10}\n")
  list_file = os.path.join(root, "list.csv")
  with open(list_file, "w") as f:
    f.writelines(lines)
  return list_file


def _run_spec(spec: str) -> tuple[str, list[str]]:
  if spec == "local":
    return "local", []
  mode = {"mp": "multi_processing", "mt": "multi_threading"}[spec[:2]]
  return "DirectRunner", [f"--direct_num_workers={int(spec[2:])}", f"--direct_running_mode={mode}"]


def files(out: str) -> dict[str, bytes]:
  return {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out))
          if os.path.isfile(os.path.join(out, n))}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--videos", type=int, default=48)
  p.add_argument("--frames", type=int, default=60)
  p.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the generated videos")
  p.add_argument("--records-per-shard", type=int, default=4)
  p.add_argument("--distinct", type=int, default=4)
  p.add_argument("--runs", default="local,mp1,mp2",
                 help="local, mpN (DirectRunner multi_processing, N workers), mtN (threads)")
  p.add_argument("--format", default="jpeg", choices=("jpeg", "mp4"))
  p.add_argument("--short-side", type=int, default=160)
  a = p.parse_args()
  width, height = (int(v) for v in a.size.split("x"))
  with tempfile.TemporaryDirectory() as tmp:
    list_file = make_videos(tmp, a.videos, a.distinct, a.frames, width, height)
    runs = [_run_spec(r) for r in a.runs.split(",")]
    rows, outputs = [], []
    for runner, beam_args in runs:
      out = os.path.join(tmp, f"out{len(rows)}")
      start = time.perf_counter()
      prepare.prepare(list_file, tmp, out, short_side=a.short_side, fmt=a.format,
                      records_per_shard=a.records_per_shard, runner=runner, beam_args=beam_args)
      seconds = time.perf_counter() - start
      outputs.append(files(out))
      name = " ".join([runner, *beam_args])
      rows.append({"runner": name, "seconds": round(seconds, 2),
                   "videos_per_s": round(a.videos / seconds, 2)})
  identical = all(o == outputs[0] for o in outputs)
  local = next((r["videos_per_s"] for r in rows if r["runner"] == "local"), rows[0]["videos_per_s"])
  print(f"{a.videos} videos, {a.frames} frames {a.size} -> {a.format} short side "
        f"{a.short_side}, {a.records_per_shard} per shard; {os.cpu_count()} CPUs")
  for r in rows:
    r["vs_local"] = round(r["videos_per_s"] / local, 2)
    print(f"  {r['runner']:<72} {r['seconds']:8.2f} s {r['videos_per_s']:8.2f} videos/s "
          f"{r['vs_local']:5.2f}x")
  print(f"  outputs byte-identical: {identical}")
  print(json.dumps({"benchmark": "prepare_speed", "videos": a.videos, "frames": a.frames,
                    "size": a.size, "format": a.format, "cpus": os.cpu_count(),
                    "identical": identical, "runs": rows}))


if __name__ == "__main__":
  main()
