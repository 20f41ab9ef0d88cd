"""A small synthetic video dataset whose classes need temporal reasoning.

Each clip shows one coloured, non-symmetric shape (arrow, L, T, kite) on a random gradient
background, optionally with a static distractor shape. The class is what the shape *does*:

    0 move_left   1 move_right   2 move_up     3 move_down   4 rotate_cw
    5 rotate_ccw  6 grow         7 shrink      8 appear      9 disappear

A single frame shows a shape somewhere, at some angle and size (or no shape), so the class is not
readable from one frame; the motion between frames gives it away. Everything is drawn from
``np.random.default_rng([seed, split, index])``, so generation is deterministic.

Note for training configs: horizontal flips swap move_left/move_right and rotate_cw/ccw, so the
demo recipe must set ``random_flip=False`` (as the official SSv2 recipe does).

CLI: ``python -m uniformerv2_jax.data.demo_dataset --out DIR [--seed N]``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile

import av
import numpy as np
from PIL import Image, ImageDraw

from uniformerv2_jax import storage
from uniformerv2_jax.arg_types import nonnegative_int, positive_int
from uniformerv2_jax.errors import InputError, run_main

CLASSES: tuple[str, ...] = (
  "move_left",
  "move_right",
  "move_up",
  "move_down",
  "rotate_cw",
  "rotate_ccw",
  "grow",
  "shrink",
  "appear",
  "disappear",
)

# Unit-size polygons (x, y), none of them symmetric under the rotations used (< 60 deg / step).
_SHAPES: tuple[np.ndarray, ...] = (
  np.array(
    [
      (-1, -0.35),
      (0.2, -0.35),
      (0.2, -0.8),
      (1, 0),
      (0.2, 0.8),
      (0.2, 0.35),
      (-1, 0.35),
    ]
  ),
  np.array([(-0.8, -1), (-0.2, -1), (-0.2, 0.4), (0.8, 0.4), (0.8, 1), (-0.8, 1)]),
  np.array(
    [
      (-1, -1),
      (1, -1),
      (1, -0.4),
      (0.3, -0.4),
      (0.3, 1),
      (-0.3, 1),
      (-0.3, -0.4),
      (-1, -0.4),
    ]
  ),
  np.array([(0, -1), (0.7, -0.1), (0, 1), (-0.4, -0.1)]),
)

SIZE = 64
NUM_FRAMES = 16
FPS = 8
TRAIN_PER_CLASS = 80  # 800 training clips: enough variety to learn the motions from scratch
VAL_PER_CLASS = 10


def _colour(rng: np.random.Generator) -> np.ndarray:
  return rng.integers(0, 256, 3).astype(np.float32)


def _contrasting(rng: np.random.Generator, bg_mean: np.ndarray) -> tuple[int, int, int]:
  """A colour clearly different from the background (distance in RGB >= 150)."""
  for _ in range(100):
    c = _colour(rng)
    if np.linalg.norm(c - bg_mean) >= 150:
      break
  return tuple(int(x) for x in c)


def _background(rng: np.random.Generator) -> np.ndarray:
  c0, c1 = _colour(rng) * 0.6, _colour(rng) * 0.6
  angle = rng.uniform(0, 2 * math.pi)
  yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
  t = np.cos(angle) * xx + np.sin(angle) * yy
  t = (t - t.min()) / max(1e-6, t.max() - t.min())
  img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
  img += rng.normal(0, 4, img.shape)  # mild texture so the codec sees a realistic signal
  return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(shape: np.ndarray, cx: float, cy: float, scale: float, angle_deg: float) -> list:
  a = math.radians(angle_deg)
  rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
  pts = shape @ rot.T * scale + np.array([cx, cy])
  return [tuple(p) for p in pts.tolist()]


def render_clip(label: int, rng: np.random.Generator) -> np.ndarray:
  """uint8 ``[NUM_FRAMES, SIZE, SIZE, 3]`` frames of one clip of class ``label``."""
  name = CLASSES[label]
  bg = _background(rng)
  colour = _contrasting(rng, bg.reshape(-1, 3).mean(0))
  shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
  scale = rng.uniform(9.0, 14.0)  # large: the shape stays clearly visible at 32x32 input
  angle0 = rng.uniform(0, 360)
  n = NUM_FRAMES
  t = np.arange(n, dtype=np.float64)
  margin = 1.1 * scale
  cx = np.full(n, rng.uniform(margin, SIZE - margin))
  cy = np.full(n, rng.uniform(margin, SIZE - margin))
  ang = np.full(n, angle0)
  sc = np.full(n, scale)
  visible = np.ones(n, bool)
  if name.startswith("move"):
    travel = rng.uniform(24, max(24.0, SIZE - 2 * margin))  # pixels over the clip
    lo, hi = margin, SIZE - margin - travel
    start = rng.uniform(lo, max(lo, hi))
    path = start + travel * t / (n - 1)
    if name == "move_left":
      cx = SIZE - path
    elif name == "move_right":
      cx = path
    elif name == "move_up":
      cy = SIZE - path
    else:
      cy = path
  elif name.startswith("rotate"):
    speed = rng.uniform(14.0, 22.0)  # degrees per frame; < 60 per sampled step
    # Image y points down, so a positive angle increment looks clockwise on screen.
    ang = angle0 + (speed if name == "rotate_cw" else -speed) * t
  elif name in ("grow", "shrink"):
    small, big = rng.uniform(4.0, 6.0), rng.uniform(14.0, 17.0)
    margin = 1.1 * big
    cx[:] = rng.uniform(margin, SIZE - margin)
    cy[:] = rng.uniform(margin, SIZE - margin)
    ramp = small * (big / small) ** (t / (n - 1))  # geometric: constant approach speed
    sc = ramp if name == "grow" else ramp[::-1]
  else:  # appear / disappear: a static shape switching on or off part-way
    k = int(rng.integers(4, n - 3))  # the switch frame
    visible = t >= k if name == "appear" else t < k
  distractor = None
  if rng.random() < 0.3:
    distractor = (
      _SHAPES[int(rng.integers(len(_SHAPES)))],
      rng.uniform(8, SIZE - 8),
      rng.uniform(8, SIZE - 8),
      rng.uniform(3.0, 5.0),
      rng.uniform(0, 360),
      _contrasting(rng, bg.reshape(-1, 3).mean(0)),
    )
  frames = np.empty((n, SIZE, SIZE, 3), np.uint8)
  for i in range(n):
    img = Image.fromarray(bg)
    draw = ImageDraw.Draw(img)
    if distractor is not None:
      d_shape, dx, dy, ds, da, dcol = distractor
      draw.polygon(_polygon(d_shape, dx, dy, ds, da), fill=dcol)
    if visible[i]:
      draw.polygon(_polygon(shape, cx[i], cy[i], sc[i], ang[i]), fill=colour)
    frames[i] = np.asarray(img)
  return frames


def _codec() -> str:
  return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def yuv420p_frame(rgb: np.ndarray) -> av.VideoFrame:
  """An encoder-ready yuv420p frame of uint8 RGB ``[H, W, 3]`` (H, W even): BT.601 limited
  range, the chroma of each 2x2 block from its mean colour, in integer arithmetic.

  Done here rather than by the encoder's swscale so that the encoder's input is a function of
  the frames alone (see :func:`write_mp4`).
  """
  h, w = rgb.shape[:2]
  if rgb.ndim != 3 or rgb.shape[2] != 3 or h % 2 or w % 2:
    raise ValueError(f"yuv420p needs uint8 [H, W, 3] frames with even H and W, got {rgb.shape}")
  x = rgb.astype(np.int32)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
  m = x.reshape(h // 2, 2, w // 2, 2, 3).sum(axis=(1, 3))  # 4x the 2x2 mean
  mr, mg, mb = m[..., 0], m[..., 1], m[..., 2]
  u = ((-38 * mr - 74 * mg + 112 * mb + 512) >> 10) + 128
  v = ((112 * mr - 94 * mg - 18 * mb + 512) >> 10) + 128
  planes = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)])
  data = np.clip(planes, 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)
  return av.VideoFrame.from_ndarray(data, format="yuv420p")


def write_mp4(path: str, frames: np.ndarray, fps: int = FPS) -> None:
  """Encode uint8 RGB frames to an mp4 (H.264 when available), byte-identical on every run.

  x264 is deterministic only in its C code path here: with its assembly (PyAV 18's FFmpeg 8
  build), a dataset generated twice in one process differed in a few clips in about a third of
  the runs, only when other allocations ran between encodes (an out-of-bounds read, by the
  look of it; tests/test_data_pipeline.py compares the bytes). ``asm=0`` costs ~6 s over the
  800-clip dataset. Single-threaded for the same reason.
  """
  codec = _codec()
  opts = (
    {"crf": "18", "g": str(NUM_FRAMES), "threads": "1", "x264-params": "asm=0"}
    if codec == "libx264"
    else {}
  )
  with av.open(path, mode="w") as container:
    stream = container.add_stream(codec, rate=fps, options=opts)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p"
    if codec != "libx264":
      stream.bit_rate = 2_000_000
    for f in frames:
      for packet in stream.encode(yuv420p_frame(f)):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def generate(out: str, seed: int = 0, train_per_class: int = TRAIN_PER_CLASS,
             val_per_class: int = VAL_PER_CLASS) -> str:
  """Write the dataset into ``out`` (created); returns ``out``."""
  os.makedirs(out, exist_ok=True)
  for split_id, (split, per_class) in enumerate(
    (("train", train_per_class), ("val", val_per_class))
  ):
    os.makedirs(os.path.join(out, split), exist_ok=True)
    lines = []
    for i in range(per_class * len(CLASSES)):
      label = i % len(CLASSES)
      rng = np.random.default_rng([seed, split_id, i])
      rel = f"{split}/{i:05d}_{CLASSES[label]}.mp4"
      write_mp4(os.path.join(out, rel), render_clip(label, rng))
      lines.append(f"{rel},{label}\n")
    with open(os.path.join(out, f"{split}.csv"), "w") as f:
      f.writelines(lines)
  with open(os.path.join(out, "labels.txt"), "w") as f:
    f.writelines(f"{c}\n" for c in CLASSES)
  return out


def _complete(root: str) -> bool:
  return all(storage.isfile(os.path.join(root, p)) for p in ("train.csv", "val.csv", "labels.txt"))


def ensure_demo_dataset(root: str, seed: int = 0) -> str:
  """Return ``root``, generating the demo dataset there first if it is not present.

  Generation writes to a temporary sibling directory and renames it into place, so a crash or
  a concurrent caller never leaves a half-written dataset at ``root``.
  """
  root = storage.absolute(root)
  if _complete(root):
    return root
  if storage.is_url(root):  # generation renames a local folder into place
    raise InputError(f"{root}: no demo dataset there (train.csv, val.csv, labels.txt); "
                     "generate it locally (python -m uniformerv2_jax.data.demo_dataset --out DIR) "
                     "and copy DIR there")
  if os.path.exists(root) and os.listdir(root):
    raise FileExistsError(f"{root} exists but is not a complete demo dataset")
  parent = os.path.dirname(root)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".demo-tmp-", dir=parent)
  try:
    generate(tmp, seed=seed)
    if os.path.isdir(root) and not os.listdir(root):
      os.rmdir(root)
    try:
      os.rename(tmp, root)
    except OSError:
      if not _complete(root):  # lost a race only if the winner finished
        raise
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return root


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--seed", type=nonnegative_int, default=0)
  parser.add_argument("--train-per-class", type=positive_int, default=TRAIN_PER_CLASS)
  parser.add_argument("--val-per-class", type=positive_int, default=VAL_PER_CLASS)
  args = parser.parse_args(argv)
  generate(args.out, args.seed, args.train_per_class, args.val_per_class)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  run_main(main)
