"""Training-input throughput per worker process: decode vs augment, per storage format.

Generates 320p H.264 test videos (10 s, 30 fps, keyframe every 60 frames) in a temp dir, plus
the same content as JPEG frame folders and as prepared ArrayRecord shards (mp4 and jpeg), then
times the full K400 training path (8-frame sparse sampling, RandAugment rand-m7-n4-mstd0.5-inc1,
RandomResizedCrop to 224, flip, normalise) in one process on one core.

    python benchmarks/data_speed.py [--videos 4] [--clips 40] [--seconds 10]

Prints a table and one JSON line per measurement (name, clips_per_s, decode_s, augment_s; the
times are seconds per clip).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import av
import numpy as np
from PIL import Image

# Runnable as a plain script from a checkout (the package need not be installed).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uniformerv2_jax.data import prepare, sources, transforms
from uniformerv2_jax.data.pipeline import SamplingConfig


def _make_video(path: str, seconds: int, rng: np.random.Generator, h: int = 320, w: int = 568):
  """Textured moving content (so the codec does real work), H.264 yuv420p, GOP 60."""
  n = seconds * 30
  base = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
  tex = np.asarray(Image.fromarray(base).resize((w + 16, h + 16), Image.Resampling.BICUBIC))
  with av.open(path, "w") as c:
    s = c.add_stream("libx264", rate=30, options={"g": "60", "crf": "23", "preset": "veryfast"})
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    for t in range(n):
      dy, dx = int(8 + 7 * np.sin(t / 20)), int(8 + 7 * np.cos(t / 15))
      frame = tex[dy : dy + h, dx : dx + w]
      for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return n


def _to_folder(video: str, folder: str) -> int:
  os.makedirs(folder, exist_ok=True)
  n = 0
  with av.open(video) as c:
    for n, f in enumerate(c.decode(video=0), start=1):
      f.to_image().save(os.path.join(folder, f"img_{n:05d}.jpg"), quality=90)
  return n


def _time(records, clips: int, seek: int | None, aug: transforms.TrainAugConfig):
  samp = SamplingConfig(num_frames=8)
  rng = np.random.default_rng(0)
  dec = augt = 0.0
  for i in range(clips):
    rec = records[i % len(records)]
    t0 = time.perf_counter()
    clip = sources.read_clip(rec, lambda n: samp.train_indices(n, rng), seek_threshold=seek)
    t1 = time.perf_counter()
    transforms.train_augment(clip.frames, rng, aug)
    t2 = time.perf_counter()
    dec += t1 - t0
    augt += t2 - t1
  return dec / clips, augt / clips


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--videos", type=int, default=4)
  parser.add_argument("--clips", type=int, default=40)
  parser.add_argument("--seconds", type=int, default=10)
  args = parser.parse_args()
  aug = transforms.TrainAugConfig()  # full K400 recipe at 224
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as tmp:
    lines, video_recs, folder_recs = [], [], []
    for i in range(args.videos):
      path = os.path.join(tmp, f"v{i}.mp4")
      _make_video(path, args.seconds, rng)
      lines.append(f"v{i}.mp4,{i}\n")
      video_recs.append({"kind": "video", "path": path, "label": i})
      n = _to_folder(path, os.path.join(tmp, f"f{i}"))
      folder_recs.append(
        {
          "kind": "frames",
          "path": os.path.join(tmp, f"f{i}"),
          "num_frames": n,
          "label": i,
          "template": "img_{:05d}.jpg",
          "bgr": False,
          "index_base": 1,
        }
      )
    with open(os.path.join(tmp, "list.csv"), "w") as f:
      f.writelines(lines)
    ar = {}
    for fmt in ("mp4", "jpeg"):
      out = os.path.join(tmp, f"ar_{fmt}")
      prepare.prepare(os.path.join(tmp, "list.csv"), tmp, out, short_side=320, fmt=fmt)
      src = sources.ArrayRecordSource(out)
      ar[fmt] = [src[i] for i in range(len(src))]
    cases = [
      ("video_sequential", video_recs, None),
      ("video_seek30", video_recs, 30),
      ("video_seek60", video_recs, 60),
      ("frame_folder_jpeg", folder_recs, None),
      ("arrayrecord_mp4", ar["mp4"], None),
      ("arrayrecord_mp4_seek30", ar["mp4"], 30),
      ("arrayrecord_jpeg", ar["jpeg"], None),
    ]
    results = []
    for name, recs, seek in cases:
      _time(recs, 2, seek, aug)  # warm-up
      dec, augt = _time(recs, args.clips, seek, aug)
      results.append(
        {
          "name": name,
          "clips_per_s": round(1.0 / (dec + augt), 2),
          "decode_s": round(dec, 5),
          "augment_s": round(augt, 5),
        }
      )
  print(f"{'name':<26}{'clips/s':>10}{'decode ms':>12}{'augment ms':>12}")
  for r in results:
    print(
      f"{r['name']:<26}{r['clips_per_s']:>10.1f}{r['decode_s'] * 1e3:>12.1f}"
      f"{r['augment_s'] * 1e3:>12.1f}"
    )
  for r in results:
    print(json.dumps(r))


if __name__ == "__main__":
  main()
