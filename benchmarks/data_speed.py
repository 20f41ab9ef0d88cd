"""Training-input throughput per CPU core: decode vs augment stages, per storage format.

Setup (in a temp dir): ``--videos`` synthetic 320x568 H.264 videos of ``--seconds`` s at 30 fps
(textured moving content, keyframe every 60 frames; default 4 videos x 4 s = 120 frames each),
the same content as JPEG frame folders (one decode per video, frames written one by one) and
as prepared ArrayRecord shards (mp4 and jpeg). Then it times the full K400 training path
(8-frame sparse sampling, RandAugment rand-m7-n4-mstd0.5-inc1, RandomResizedCrop to 224, flip,
normalise) in this process.

Times are **CPU seconds of this process** (``time.process_time``, all threads included), so
``clips_per_s`` is clips per CPU-core second and does not depend on what else runs on the
machine; ``wall_clips_per_s`` is the wall-clock rate of the same loop for comparison.

    python benchmarks/data_speed.py            # full: all cases, 40 clips each
    python benchmarks/data_speed.py --quick    # 2 videos, 16 clips, main cases (~1-2 min)
    python benchmarks/data_speed.py --workers 2  # also: grain mp_prefetch with 2 workers

Cases: ``*_reference_aug`` is the literal official order (RandAugment with PIL on the full
frames, then crop + NumPy resize: the code before the fast path); the other cases use the
default fast path (RandAugment only where the crop box needs it, fused resize/flip/normalise),
with the NumPy resize unless named ``*_cv2resize``; ``*_cv2geom`` also runs RandAugment's affine
ops with OpenCV (not bit-exact, ``TrainAugConfig(geometry="cv2")``). The OpenCV cases appear
only when ``cv2`` can be imported (opencv-python-headless is not a dependency).

Prints a table and one JSON line per measurement: ``name``, ``clips_per_s``, ``decode_s``,
``augment_s`` (seconds per clip), plus the augment split ``randaug_s`` / ``resize_s`` and
``wall_clips_per_s``.
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

from uniformerv2_jax.data import prepare, sources, transforms  # noqa: E402
from uniformerv2_jax.data import video as video_lib  # noqa: E402
from uniformerv2_jax.data.pipeline import SamplingConfig  # noqa: E402

FPS = 30


def _make_video(
  path: str, seconds: float, rng: np.random.Generator, h: int = 320, w: int = 568
) -> np.ndarray:
  """Textured moving content (so the codec does real work), H.264 yuv420p, GOP 60.

  Returns the uint8 frames that were encoded (for the frame-folder copy).
  """
  n = int(round(seconds * FPS))
  base = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
  tex = np.asarray(Image.fromarray(base).resize((w + 16, h + 16), Image.Resampling.BICUBIC))
  frames = np.empty((n, h, w, 3), np.uint8)
  with av.open(path, "w") as c:
    s = c.add_stream("libx264", rate=FPS, options={"g": "60", "crf": "23", "preset": "veryfast"})
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    for t in range(n):
      dy, dx = int(8 + 7 * np.sin(t / 20)), int(8 + 7 * np.cos(t / 15))
      frames[t] = tex[dy : dy + h, dx : dx + w]
      for p in s.encode(av.VideoFrame.from_ndarray(frames[t], format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return frames


def _to_folder(frames: np.ndarray, folder: str) -> int:
  """Write 1-based ``img_%05d.jpg`` files, one PIL save per frame."""
  os.makedirs(folder, exist_ok=True)
  for n, frame in enumerate(frames, start=1):
    Image.fromarray(frame).save(os.path.join(folder, f"img_{n:05d}.jpg"), quality=90)
  return len(frames)


def _augment_timed(frames, rng, aug: transforms.TrainAugConfig):
  """``transforms.train_augment`` split into its two stages (same draws, same result)."""
  t0 = time.process_time()
  if aug.impl == "reference":
    out = transforms.train_augment(frames, rng, aug)
    return out, time.process_time() - t0, 0.0
  ops = (
    transforms.sample_rand_augment(rng, transforms.RandAugmentConfig.parse(aug.rand_augment))
    if aug.rand_augment
    else []
  )
  top, left, h, w = box = transforms.rrc_params(
    rng, frames.shape[1], frames.shape[2], aug.scale, aug.ratio
  )
  crop = (
    transforms.apply_rand_augment_box(frames, ops, box, aug.geometry)
    if ops
    else frames[:, top : top + h, left : left + w]
  )
  t1 = time.process_time()
  flip = bool(aug.random_flip and rng.random() < aug.flip_prob)
  out = transforms.resize_uint8_to(
    crop,
    aug.crop_size,
    flip=flip,
    output=aug.output,
    mean=aug.mean,
    std=aug.std,
    backend=aug.resize_backend,
  )
  return out, t1 - t0, time.process_time() - t1


def _time(records, clips: int, aug: transforms.TrainAugConfig, read) -> dict:
  samp = SamplingConfig(num_frames=8)
  rng = np.random.default_rng(0)
  dec = ra = rs = 0.0
  w0 = time.perf_counter()
  for i in range(clips):
    rec = records[i % len(records)]
    t0 = time.process_time()
    frames = read(rec, lambda n: samp.train_indices(n, rng))
    dec += time.process_time() - t0
    _, a, b = _augment_timed(frames, rng, aug)
    ra += a
    rs += b
  wall = time.perf_counter() - w0
  total = (dec + ra + rs) / clips
  return {
    "clips_per_s": round(1.0 / total, 2),
    "decode_s": round(dec / clips, 5),
    "augment_s": round((ra + rs) / clips, 5),
    "randaug_s": round(ra / clips, 5),
    "resize_s": round(rs / clips, 5),
    "wall_clips_per_s": round(clips / wall, 2),
  }


def _reader(seek=None, threads="AUTO", thread_count=0):
  def read(rec, fn):
    if rec["kind"] == "video" and (threads != "AUTO" or thread_count):
      return video_lib.read_video(
        rec["path"], fn, seek_threshold=seek, threads=threads, thread_count=thread_count
      ).frames
    return sources.read_clip(rec, fn, seek_threshold=seek).frames

  return read


def _multiworker(ar_dir: str, workers: int, batches: int, aug) -> dict:
  """grain mp_prefetch with ``workers`` processes on the jpeg ArrayRecord (wall clock; 0 = the
  same iterator in this process)."""
  from absl import flags

  from uniformerv2_jax.data import make_train_iterator

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  it = make_train_iterator(
    sources.ArrayRecordSource(ar_dir),
    batch_size=8,
    seed=0,
    num_workers=workers,
    read_threads=1,
    aug=aug,
    process_index=0,
    process_count=1,
  )
  for _ in range(2 + 2 * workers):  # start-up and warm-up (fill the worker buffers)
    next(it)
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  dt = time.perf_counter() - t0
  return {"clips_per_s": round(batches * 8 / dt, 2), "decode_s": None, "augment_s": None}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--videos", type=int, default=4)
  parser.add_argument("--clips", type=int, default=40)
  parser.add_argument("--seconds", type=float, default=4.0)
  parser.add_argument("--quick", action="store_true", help="2 videos, 16 clips, main cases")
  parser.add_argument("--workers", type=int, default=0, help="also time grain mp_prefetch")
  args = parser.parse_args()
  if args.quick:
    args.videos, args.clips = min(args.videos, 2), min(args.clips, 16)
  # full K400 recipe at 224; the main cases use the NumPy resize so that they do not depend on
  # whether OpenCV is installed, the *_cv2* cases show what OpenCV adds.
  fast = transforms.TrainAugConfig(resize_backend="numpy")
  ref = transforms.TrainAugConfig(impl="reference")
  u8 = transforms.TrainAugConfig(resize_backend="numpy", output="uint8")
  cv2 = transforms._cv2()
  if cv2 is not None:
    cv2.setNumThreads(1)  # per-core numbers
  rng = np.random.default_rng(0)
  t_setup = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    lines, video_recs, folder_recs = [], [], []
    for i in range(args.videos):
      path = os.path.join(tmp, f"v{i}.mp4")
      frames = _make_video(path, args.seconds, rng)
      lines.append(f"v{i}.mp4,{i}\n")
      video_recs.append({"kind": "video", "path": path, "label": i})
      n = _to_folder(frames, os.path.join(tmp, f"f{i}"))
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
    ar, ar_dirs = {}, {}
    for fmt in ("mp4", "jpeg"):
      out = ar_dirs[fmt] = os.path.join(tmp, f"ar_{fmt}")
      prepare.prepare(os.path.join(tmp, "list.csv"), tmp, out, short_side=320, fmt=fmt)
      src = sources.ArrayRecordSource(out)
      ar[fmt] = [src[i] for i in range(len(src))]
    setup_s = time.perf_counter() - t_setup
    cases = [
      ("video_reference_aug", video_recs, ref, _reader()),
      ("video", video_recs, fast, _reader()),
      ("video_uint8_out", video_recs, u8, _reader()),
      ("video_threads_none", video_recs, fast, _reader(threads="NONE")),
      ("arrayrecord_mp4", ar["mp4"], fast, _reader()),
      ("arrayrecord_jpeg_reference_aug", ar["jpeg"], ref, _reader()),
      ("arrayrecord_jpeg", ar["jpeg"], fast, _reader()),
      ("arrayrecord_jpeg_uint8_out", ar["jpeg"], u8, _reader()),
    ]
    if cv2 is not None:
      cv_resize = transforms.TrainAugConfig(resize_backend="cv2")
      cv_all = transforms.TrainAugConfig(resize_backend="cv2", geometry="cv2")
      cases += [
        ("video_cv2resize", video_recs, cv_resize, _reader()),
        ("video_cv2resize_cv2geom", video_recs, cv_all, _reader()),
        ("arrayrecord_jpeg_cv2resize", ar["jpeg"], cv_resize, _reader()),
        ("arrayrecord_jpeg_cv2resize_cv2geom", ar["jpeg"], cv_all, _reader()),
      ]
    if not args.quick:
      cases += [
        ("video_threads_1", video_recs, fast, _reader(thread_count=1)),
        ("video_threads_slice", video_recs, fast, _reader(threads="SLICE")),
        ("video_seek30", video_recs, fast, _reader(seek=30)),
        ("frame_folder_jpeg", folder_recs, fast, _reader()),
        ("arrayrecord_mp4_seek30", ar["mp4"], fast, _reader(seek=30)),
      ]
    results = []
    for name, recs, aug, read in cases:
      _time(recs, 2, aug, read)  # warm-up
      results.append({"name": name, **_time(recs, args.clips, aug, read)})
    if args.workers:
      for nw in (0, args.workers):
        results.append(
          {
            "name": f"arrayrecord_jpeg_grain_{nw}workers_wall",
            **_multiworker(ar_dirs["jpeg"], nw, max(6, args.clips // 2), fast),
          }
        )
  print(
    f"setup {setup_s:.1f} s: {args.videos} videos x {args.seconds:g} s x {FPS} fps, 320x568,"
    f" GOP 60; {args.clips} clips per case; times are CPU s per clip"
  )
  head = ("name", "clips/s", "decode ms", "augment ms", "randaug ms", "resize ms", "wall c/s")
  print(f"{head[0]:<34}" + "".join(f"{h:>11}" for h in head[1:]))
  for r in results:

    def ms(k, r=r):
      return "-" if r.get(k) is None else f"{r[k] * 1e3:.1f}"

    print(
      f"{r['name']:<34}{r['clips_per_s']:>11.1f}{ms('decode_s'):>11}{ms('augment_s'):>11}"
      f"{ms('randaug_s'):>11}{ms('resize_s'):>11}{r.get('wall_clips_per_s', '-')!s:>11}"
    )
  for r in results:
    print(json.dumps(r))


if __name__ == "__main__":
  main()
