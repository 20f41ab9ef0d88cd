"""Clips/s of reading videos from ``gs://`` (a local fake-gcs-server emulator on 127.0.0.1)
against the same videos on a local disk, through the data pipeline's reader (``read_clip``,
8 frames spread over each video, one process).

    python benchmarks/gcs_read_speed.py [--videos 40] [--rounds 2]

The emulator is reached over loopback HTTP, so the figure is the cost of the object-store path
itself (a whole-file GET through gcsfs per video, then decoding from memory), not of a network:
on Cloud TPU add the bucket's latency and bandwidth. Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import gcs_emulator  # noqa: E402
from uniformerv2_jax.data import demo_dataset  # noqa: E402
from uniformerv2_jax.data.sources import VideoListSource, read_clip  # noqa: E402


def clips_per_s(source: VideoListSource) -> float:
  def indices(length: int) -> np.ndarray:
    return np.linspace(0, length - 1, 8).round().astype(np.int64)

  start = time.perf_counter()
  for i in range(len(source)):
    read_clip(source[i], indices)
  return len(source) / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--videos", type=int, default=40, help="videos (a multiple of 10)")
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  tmp = Path(tempfile.mkdtemp())
  local = tmp / "demo"
  demo_dataset.generate(str(local), seed=0, train_per_class=args.videos // 10, val_per_class=1)
  (tmp / "cloudsdk").mkdir()
  with gcs_emulator.running(tmp) as url:
    gcs_emulator.apply_env(gcs_emulator.client_env(url, str(tmp / "cloudsdk")))
    from etils import epath

    for f in sorted(local.rglob("*")):
      if f.is_file():
        (epath.Path("gs://bucket/demo") / f.relative_to(local).as_posix()).write_bytes(
          f.read_bytes())
    sources = {"local": VideoListSource(str(local / "train.csv"), prefix=str(local)),
               "gcs": VideoListSource("gs://bucket/demo/train.csv", prefix="gs://bucket/demo")}
    rates: dict[str, list[float]] = {"local": [], "gcs": []}
    for _ in range(args.rounds):  # alternate, so drift on a shared host hits both
      for name, source in sources.items():
        rates[name].append(clips_per_s(source))
  best = {k: max(v) for k, v in rates.items()}
  size = np.mean([f.stat().st_size for f in (local / "train").iterdir()])
  print(f"{len(sources['local'])} videos of {size / 1024:.0f} KiB, 8 frames each, best of "
        f"{args.rounds} rounds")
  for name, rate in best.items():
    print(f"  {name:6s} {rate:8.1f} clips/s")
  print(f"  gcs / local = {best['gcs'] / best['local']:.2f}")
  print(json.dumps({"benchmark": "gcs_read_speed", "videos": len(sources["local"]),
                    "mean_video_bytes": int(size), "local_clips_per_s": round(best["local"], 1),
                    "gcs_clips_per_s": round(best["gcs"], 1),
                    "ratio": round(best["gcs"] / best["local"], 3),
                    "host": platform.processor() or platform.machine()}))


if __name__ == "__main__":
  main()
