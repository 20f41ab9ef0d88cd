"""Spatial transforms on uint8 video clips ``[T, H, W, 3]`` (NumPy + PIL, CPU side).

Every random decision is drawn once per clip from a ``np.random.Generator`` and applied to all
frames, as in the official ``_aug_frame``. The official order is RandAugment (uint8, full frame)
-> /255 and normalise -> RandomResizedCrop + bilinear resize -> flip. Normalisation is affine, so
we crop/resize first and normalise the (smaller) output: identical up to float rounding, and it
lets ``output='uint8'`` defer normalisation to the accelerator.

Training speed (``TrainAugConfig.impl="fast"``, the default): RandAugment is evaluated only on
the pixels the RandomResizedCrop box needs (:func:`apply_rand_augment_box`; bit-identical to the
full-frame result except for rare one-level rounding ties after Rotate), Shear/Translate run as
exact NumPy re-implementations of PIL's bicubic (:func:`_axis_affine`), and the crop is resized,
flipped and normalised in one pass (:func:`resize_uint8_to`, NumPy or OpenCV).
``impl="reference"`` keeps the literal official order. ``geometry="cv2"`` is the only option
that changes the augmentation measurably (OpenCV's bicubic for the affine ops); see
``benchmarks/data_speed.py`` and ``benchmarks/RESULTS.md`` for numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# ----------------------------------------------------------------------------- RandAugment
# timm's "increasing" RandAugment pool (_RAND_INCREASING_TRANSFORMS), in timm's order.
RAND_INCREASING_OPS: tuple[str, ...] = (
  "AutoContrast",
  "Equalize",
  "Invert",
  "Rotate",
  "PosterizeIncreasing",
  "SolarizeIncreasing",
  "SolarizeAdd",
  "ColorIncreasing",
  "ContrastIncreasing",
  "BrightnessIncreasing",
  "SharpnessIncreasing",
  "ShearX",
  "ShearY",
  "TranslateXRel",
  "TranslateYRel",
)
_MAX_LEVEL = 10.0
_FILL = (128, 128, 128)
_RESAMPLE = Image.Resampling.BICUBIC
_SIGNED = {
  "Rotate",
  "ShearX",
  "ShearY",
  "TranslateXRel",
  "TranslateYRel",
  "ColorIncreasing",
  "ContrastIncreasing",
  "BrightnessIncreasing",
  "SharpnessIncreasing",
}


@dataclass(frozen=True)
class RandAugmentConfig:
  """Parsed timm RandAugment string, e.g. ``rand-m7-n4-mstd0.5-inc1``."""

  magnitude: float = 7.0
  num_layers: int = 4
  magnitude_std: float = 0.5
  magnitude_max: float = 10.0
  prob: float = 0.5
  translate_pct: float = 0.45

  @classmethod
  def parse(cls, spec: str) -> RandAugmentConfig:
    parts = spec.split("-")
    if parts[0] != "rand":
      raise ValueError(f"not a RandAugment spec: {spec!r}")
    kw: dict = {}
    for part in parts[1:]:
      m = re.fullmatch(r"([a-z]+)([0-9.]+)", part)
      if not m:
        raise ValueError(f"bad RandAugment field {part!r} in {spec!r}")
      key, val = m.groups()
      if key == "m":
        kw["magnitude"] = float(val)
      elif key == "n":
        kw["num_layers"] = int(val)
      elif key == "mstd":
        kw["magnitude_std"] = float(val)
      elif key == "mmax":
        kw["magnitude_max"] = float(val)
      elif key == "p":
        kw["prob"] = float(val)
      elif key == "inc":
        if not int(float(val)):
          # The official code tests bool(string), so inc0 still picks this pool; we
          # only implement the increasing pool and refuse the ambiguous spelling.
          raise ValueError("only the 'increasing' op pool (inc1) is implemented")
      else:
        raise ValueError(f"unsupported RandAugment field {part!r}")
    return cls(**kw)


RandAugmentOps = list[tuple[str, float]]  # (op name, argument) per applied op


_RA_CACHE: dict[str, RandAugmentConfig] = {}


def _parse_ra(spec: str) -> RandAugmentConfig:
  cfg = _RA_CACHE.get(spec)
  if cfg is None:
    cfg = _RA_CACHE[spec] = RandAugmentConfig.parse(spec)
  return cfg


def sample_rand_augment(rng: np.random.Generator, cfg: RandAugmentConfig) -> RandAugmentOps:
  """Draw one clip's ops: n ops with replacement, each kept with p, magnitude ~ N(m, std)."""
  ops: RandAugmentOps = []
  for _ in range(cfg.num_layers):
    name = RAND_INCREASING_OPS[int(rng.integers(len(RAND_INCREASING_OPS)))]
    apply = rng.random() <= cfg.prob  # timm skips when random() > prob
    mag = float(np.clip(rng.normal(cfg.magnitude, cfg.magnitude_std), 0.0, cfg.magnitude_max))
    negate = rng.random() > 0.5
    if apply:
      ops.append((name, _level_to_arg(name, mag, negate, cfg)))
  return ops


def _level_to_arg(name: str, m: float, negate: bool, cfg: RandAugmentConfig) -> float:
  level = m / _MAX_LEVEL
  if name == "Rotate":
    arg = level * 30.0
  elif name in ("ShearX", "ShearY"):
    arg = level * 0.3
  elif name in ("TranslateXRel", "TranslateYRel"):
    arg = level * cfg.translate_pct
  elif name.endswith("Increasing") and name[:-10] in (
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
  ):
    arg = level * 0.9
  elif name == "PosterizeIncreasing":
    return float(4 - int(level * 4))
  elif name == "SolarizeIncreasing":
    return float(256 - int(level * 256))
  elif name == "SolarizeAdd":
    return float(int(level * 110))
  else:  # AutoContrast, Equalize, Invert take no argument
    return 0.0
  if name in _SIGNED and negate:
    arg = -arg
  if name.endswith("Increasing") and name != "PosterizeIncreasing":
    arg = max(0.1, 1.0 + arg)  # enhance factor around 1 (timm keeps it >= 0.1)
  return arg


_ENHANCERS = {
  "ColorIncreasing": ImageEnhance.Color,
  "ContrastIncreasing": ImageEnhance.Contrast,
  "BrightnessIncreasing": ImageEnhance.Brightness,
  "SharpnessIncreasing": ImageEnhance.Sharpness,
}


def _apply_op(img: Image.Image, name: str, arg: float) -> Image.Image:
  if name == "AutoContrast":
    return ImageOps.autocontrast(img)
  if name == "Equalize":
    return ImageOps.equalize(img)
  if name == "Invert":
    return ImageOps.invert(img)
  if name == "Rotate":
    return img.rotate(arg, resample=_RESAMPLE, fillcolor=_FILL)
  if name == "PosterizeIncreasing":
    bits = int(arg)
    return img if bits >= 8 else ImageOps.posterize(img, bits)
  if name == "SolarizeIncreasing":
    return ImageOps.solarize(img, int(arg))
  if name == "SolarizeAdd":
    add = int(arg)
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return img.point(lut * len(img.getbands()))
  if name in _ENHANCERS:
    return _ENHANCERS[name](img).enhance(arg)
  w, h = img.size
  if name == "ShearX":
    coeffs = (1, arg, 0, 0, 1, 0)
  elif name == "ShearY":
    coeffs = (1, 0, 0, arg, 1, 0)
  elif name == "TranslateXRel":
    coeffs = (1, 0, arg * w, 0, 1, 0)
  elif name == "TranslateYRel":
    coeffs = (1, 0, 0, 0, 1, arg * h)
  else:
    raise ValueError(f"unknown RandAugment op {name!r}")
  return img.transform(
    img.size, Image.Transform.AFFINE, coeffs, resample=_RESAMPLE, fillcolor=_FILL
  )


def apply_rand_augment(frames: np.ndarray, ops: RandAugmentOps) -> np.ndarray:
  """Apply the same ops (same magnitudes and signs) to every uint8 frame (full frames)."""
  if not ops:
    return frames
  out = np.empty_like(frames)
  for t, frame in enumerate(frames):
    img = Image.fromarray(frame)
    for name, arg in ops:
      img = _apply_op(img, name, arg)
    out[t] = np.asarray(img)
  return out


# --- RandAugment evaluated only where the crop box needs it ---------------------------------
# RandomResizedCrop keeps one box of the augmented frame, so only the pixels that (through the
# chain of ops) influence that box need computing. Ops whose result depends on whole-image
# statistics (AutoContrast/Equalize: histograms, Contrast: mean grey level) need the full
# frame as their input; they and everything before them run on the full frame. The ops after
# the last such op run on a rectangle: pointwise ops (LUTs, Color, Brightness) on the same
# rectangle, Sharpness (3x3 kernel, border pixels copied) on the rectangle grown by one pixel,
# and the affine ops (Rotate/Shear/Translate) by sampling their output only on the rectangle
# that the next step needs, from an input rectangle that holds every bicubic tap. Rectangles
# that touch the frame edge keep PIL's edge handling (fill test, clamping, copied borders), so
# the result equals the full-frame result cropped. Shear/Translate compute their sample positions
# in full-frame coordinates (bit-identical, see _axis_affine). Rotate runs PIL on the rectangle
# with shifted coefficients, whose last-ulp rounding can move a value that lands exactly on an
# integer by one grey level (a later Sharpness can make it 2): about 1e-5 of the values when
# Rotate is drawn (tests/test_data_transforms.py).
_GLOBAL_OPS = frozenset({"AutoContrast", "Equalize", "ContrastIncreasing"})
_AFFINE_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"})

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 (end exclusive), full-frame coordinates


def _affine_coeffs(name: str, arg: float, w: int, h: int) -> tuple[float, ...] | None:
  """PIL's inverse affine matrix (output -> input) for an affine op; None = identity."""
  if name == "Rotate":
    angle = arg % 360.0
    if angle == 0:
      return None
    # Same arithmetic as PIL's Image.rotate (expand=False, centre (w/2, h/2)).
    cx, cy = w / 2, h / 2
    rad = -math.radians(angle)
    a, b = round(math.cos(rad), 15), round(math.sin(rad), 15)
    d, e = round(-math.sin(rad), 15), round(math.cos(rad), 15)
    c = a * (-cx) + b * (-cy) + 0.0 + cx
    f = d * (-cx) + e * (-cy) + 0.0 + cy
    return (a, b, c, d, e, f)
  if name == "ShearX":
    return (1.0, arg, 0.0, 0.0, 1.0, 0.0)
  if name == "ShearY":
    return (1.0, 0.0, 0.0, arg, 1.0, 0.0)
  if name == "TranslateXRel":
    return (1.0, 0.0, arg * w, 0.0, 1.0, 0.0)
  if name == "TranslateYRel":
    return (1.0, 0.0, 0.0, 0.0, 1.0, arg * h)
  raise ValueError(f"not an affine op: {name!r}")


def _region_safe(name: str, arg: float) -> bool:
  """False for rotations PIL turns into transposes (the recipe never draws them: |angle| <= 30)."""
  return not (name == "Rotate" and (arg % 360.0) in (90.0, 180.0, 270.0))


def _input_rect(name: str, arg: float, out: Rect, w: int, h: int) -> Rect:
  """The input rectangle an op needs to produce ``out`` exactly (clipped to the frame)."""
  x0, y0, x1, y1 = out
  if name == "SharpnessIncreasing":
    return max(0, x0 - 1), max(0, y0 - 1), min(w, x1 + 1), min(h, y1 + 1)
  if name not in _AFFINE_OPS:
    return out
  coeffs = _affine_coeffs(name, arg, w, h)
  if coeffs is None:
    return out
  a, b, c, d, e, f = coeffs
  xs, ys = [], []
  for px in (x0 + 0.5, x1 - 0.5):
    for py in (y0 + 0.5, y1 - 0.5):
      xs.append(a * px + b * py + c)
      ys.append(d * px + e * py + f)
  # Bicubic taps: floor(x - 0.5) - 1 ... floor(x - 0.5) + 2; generous margins keep every tap and
  # PIL's out-of-image test inside the rectangle unless the rectangle reaches the frame edge.
  rx0 = min(max(0, math.floor(min(xs)) - 3), w)
  ry0 = min(max(0, math.floor(min(ys)) - 3), h)
  rx1 = max(min(w, math.floor(max(xs)) + 4), 0)
  ry1 = max(min(h, math.floor(max(ys)) + 4), 0)
  if rx1 <= rx0 or ry1 <= ry0:  # everything samples outside the frame: any 1-pixel input
    return 0, 0, 1, 1
  return rx0, ry0, rx1, ry1


def _apply_affine_rect(
  img: Image.Image, have: Rect, name: str, arg: float, out: Rect, w: int, h: int
) -> Image.Image:
  """The ``out`` rectangle of the affine op's full-frame result, from the ``have`` rectangle."""
  coeffs = _affine_coeffs(name, arg, w, h)
  if coeffs is None:
    return img.crop((out[0] - have[0], out[1] - have[1], out[2] - have[0], out[3] - have[1]))
  a, b, c, d, e, f = coeffs
  x0, y0 = out[0], out[1]
  local = (a, b, a * x0 + b * y0 + c - have[0], d, e, d * x0 + e * y0 + f - have[1])
  size = (out[2] - out[0], out[3] - out[1])
  return img.transform(size, Image.Transform.AFFINE, local, resample=_RESAMPLE, fillcolor=_FILL)


# RandAugment's Shear/Translate ops move pixels along one axis only. For them PIL's bicubic
# affine (Geometry.c: map (x + 0.5, y + 0.5) through the matrix, outside the frame -> fill, else
# 4x4 cubic convolution with a = -1, edge-clamped taps, Horner form in double, then clip and
# truncate) has an exact zero offset on the other axis, where its cubic returns the centre tap
# unchanged. What remains is a 1-D cubic per output pixel, which NumPy evaluates with the same
# double arithmetic in the same order: bit-identical to PIL (tests/test_data_transforms.py), and
# several times faster because PIL spends most of its time on the 12 taps that do not matter.
# Coordinates are computed in full-frame terms, so the box evaluation equals PIL on the full
# frame exactly (no re-rounding of shifted coefficients).
_AXIS_OPS = frozenset({"ShearX", "ShearY", "TranslateXRel", "TranslateYRel"})


def _axis_affine(
  src: np.ndarray, have: Rect, coeffs: tuple[float, ...], need: Rect, w: int, h: int
) -> np.ndarray:
  """The ``need`` rectangle of PIL's full-frame bicubic affine output (fill 128) for a matrix
  that moves pixels along x only (``d, e, f = 0, 1, 0``) or y only (``a, b, c = 1, 0, 0``),
  computed from ``src``, the ``have`` rectangle of the input. uint8 ``[T, h', w', 3]``."""
  a, b, c, d, e, f = coeffs
  xs = np.arange(need[0], need[2], dtype=np.float64) + 0.5
  ys = np.arange(need[1], need[3], dtype=np.float64)[:, None] + 0.5
  if (d, e, f) == (0, 1, 0):  # along x; PIL's y map is exactly y + 0.5, its dy exactly 0
    pos = a * xs + b * ys + c  # [h', w'], PIL's order: (a x + b y) + c
    rows = src[:, need[1] - have[1] : need[3] - have[1]]
    return _cubic_along(rows, pos, 2, have[0], w)
  if (a, b, c) != (1, 0, 0):
    raise ValueError(f"not a one-axis affine map: {coeffs}")
  pos = d * xs + e * ys + f  # along y; PIL's dx is exactly 0
  cols = src[:, :, need[0] - have[0] : need[2] - have[0]]
  return _cubic_along(cols, pos, 1, have[1], h)


def _clamped_range(arr: np.ndarray, start: int, count: int, axis: int) -> np.ndarray:
  """Indices ``start .. start + count - 1`` of ``arr`` along ``axis``, clamped to the valid range
  (edge replication), built from slices: a view when nothing is clamped."""
  size = arr.shape[axis]

  def along(lo: int, hi: int) -> tuple:
    return (slice(None),) * axis + (slice(lo, hi),)

  if start >= 0 and start + count <= size:
    return arr[along(start, start + count)]
  shape = list(arr.shape)
  shape[axis] = count
  out = np.empty(shape, arr.dtype)
  lead = min(count, max(0, -start))  # positions clamped to index 0
  lo, hi = max(start, 0), min(start + count, size)  # the part inside
  mid = max(0, hi - lo)
  if lead:
    out[along(0, lead)] = arr[along(0, 1)]
  if mid:
    out[along(lead, lead + mid)] = arr[along(lo, hi)]
  if lead + mid < count:
    out[along(lead + mid, count)] = arr[along(size - 1, size)]
  return out


def _cubic_along(src: np.ndarray, pos: np.ndarray, axis: int, off: int, size: int) -> np.ndarray:
  """PIL's bicubic along ``axis`` (1: y, 2: x) of uint8 ``src`` [T, h', w', 3] (``src`` already
  holds the output's lines; along ``axis`` its index 0 is frame coordinate ``off``) at PIL's
  mapped coordinates ``pos`` [h', w'] (before its -0.5); the frame is ``size`` long on that axis.
  """
  t, nc = src.shape[0], src.shape[3]
  out = np.full((t, *pos.shape, nc), _FILL[0], np.uint8)
  inside = (pos >= 0.0) & (pos < size)
  # Only the bounding rectangle of the pixels that sample inside the frame is computed (a large
  # translation leaves much of the output as fill).
  rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
  if len(rows) == 0:
    return out
  r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
  pos, inside = pos[r0:r1, c0:c1], inside[r0:r1, c0:c1]
  src = src[:, r0:r1] if axis == 2 else src[:, :, c0:c1]
  p = pos - 0.5
  k = np.floor(p)
  # The same double as PIL's dx (or dy), repeated over channels so that the float64 operations
  # run on equal-shaped contiguous arrays (broadcasting a size-1 last axis is 2x slower).
  frac = np.repeat((p - k)[..., None], nc, axis=-1)
  # First of the 4 taps, in ``src`` coordinates. Clamping to ``src`` is PIL's clamping to the
  # frame: ``src`` reaches the frame edge wherever a tap of an inside pixel would leave it, and
  # taps of fill pixels are never used.
  first = k.astype(np.int64) - 1 - off
  first_l = first if axis == 2 else first.T  # [lines, n]: the moving axis last
  lines, n = first_l.shape
  # Tap j of output pixel i on a line is ext[i + j] of an extended line when the first tap
  # advances by one per pixel: always, except rounding exactly at an integer (checked).
  if not np.all(first_l - first_l[:, :1] == np.arange(n)):
    part = _cubic_gather(src, first, frac, inside, axis)
  else:
    starts = first_l[:, 0].tolist()
    # Lines with the same first tap (all of them for Translate, runs of lines for Shear) share
    # one slab of ``src``: slices, no per-pixel gather.
    edges = [0, *(np.flatnonzero(np.diff(first_l[:, 0])) + 1).tolist(), lines]
    if len(edges) == 2:
      ext = _clamped_range(src, starts[0], n + 3, axis)
    else:
      shape = list(src.shape)
      shape[axis] = n + 3
      ext = np.empty(shape, np.uint8)
      line_axis = 3 - axis
      for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (slice(None),) * line_axis + (slice(lo, hi),)
        ext[sel] = _clamped_range(src[sel], starts[lo], n + 3, axis)
    part = np.empty((t, *pos.shape, nc), np.uint8)
    for s in range(t):  # one frame at a time keeps the float64 temporaries in cache
      e = ext[s]
      taps = [e[:, j : j + n] for j in range(4)] if axis == 2 else [e[j : j + n] for j in range(4)]
      part[s] = _horner(taps, frac, inside)
  out[:, r0:r1, c0:c1] = part
  return out


def _cubic_gather(
  src: np.ndarray, first: np.ndarray, frac: np.ndarray, inside: np.ndarray, axis: int
) -> np.ndarray:
  """:func:`_cubic_along` with every tap gathered on its own (for lines whose taps do not
  advance by one per pixel)."""
  last = src.shape[axis] - 1
  rows = np.arange(first.shape[0])[:, None]
  cols = np.arange(first.shape[1])[None, :]
  taps = []
  for j in range(4):
    idx = np.clip(first + j, 0, last)
    taps.append(src[:, rows, idx] if axis == 2 else src[:, idx, cols])
  out = np.empty(src.shape[:1] + first.shape + src.shape[3:], np.uint8)
  for s in range(len(src)):
    out[s] = _horner([tap[s] for tap in taps], frac, inside)
  return out


def _horner(v: list[np.ndarray], frac: np.ndarray, inside: np.ndarray) -> np.ndarray:
  """PIL's BICUBIC macro on uint8 taps v1..v4 at offset ``frac``, clipped and truncated to
  uint8 like bicubic_filter32RGB; pixels where ``inside`` (the taps' leading shape) is False
  get the fill colour."""
  v1, v2, v3, v4 = v
  i16 = np.int16
  # p2..p4 are exact integers (PIL computes them in int from the uint8 taps).
  p3 = np.subtract(v1, v2, dtype=i16)
  p3 *= 2
  p3 += v3
  p3 -= v4
  p4 = np.subtract(v2, v1, dtype=i16)
  p4 -= v3
  p4 += v4
  acc = p4.astype(np.float64)  # float64 from here on: PIL's operations in PIL's order
  acc *= frac
  acc += p3
  acc *= frac
  acc += np.subtract(v3, v1, dtype=i16)  # p2
  acc *= frac
  acc += v2  # p1
  np.clip(acc, 0.0, 255.0, out=acc)
  res = acc.astype(np.uint8)  # truncation, like PIL's (UINT8) cast
  if not inside.all():
    res[~inside] = _FILL
  return res


def optional_cv2():
  """OpenCV if it imports (a requirement, but only ever a faster path: every use has a
  NumPy/PIL fallback or names the missing package), else None."""
  try:
    import cv2  # noqa: PLC0415
  except ImportError:
    return None
  return cv2


def _require_cv2():
  cv2 = optional_cv2()
  if cv2 is None:
    raise ImportError("this option needs OpenCV: pip install opencv-python-headless")
  return cv2


class _Cv2Affine:
  """Approximation of one PIL bicubic affine op on a rectangle with ``cv2.warpAffine``.

  Same inverse map, same taps, PIL's clamping (BORDER_REPLICATE) and PIL's fill rule (sample
  position outside the frame -> 128), but OpenCV's cubic kernel (a = -0.75, PIL: a = -1) and
  its fixed-point arithmetic (1/32-pixel positions, integer weights). The size of the
  difference is measured in tests/test_data_transforms.py and benchmarks/data_speed.py.
  """

  def __init__(self, coeffs: tuple[float, ...], have: Rect, need: Rect, w: int, h: int):
    a, b, c, d, e, f = coeffs
    x0, y0, x1, y1 = need
    # PIL samples the input at continuous position p(x + 0.5, y + 0.5) (pixel i spans
    # [i, i + 1)); OpenCV's pixel centres are integers: subtract 0.5 after the map.
    self.m = np.array(
      [
        [a, b, a * (x0 + 0.5) + b * (y0 + 0.5) + c - 0.5 - have[0]],
        [d, e, d * (x0 + 0.5) + e * (y0 + 0.5) + f - 0.5 - have[1]],
      ],
      np.float64,
    )
    xs = np.arange(x0, x1, dtype=np.float64) + 0.5
    ys = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
    xin = a * xs + b * ys + c
    yin = d * xs + e * ys + f
    outside = (xin < 0) | (xin >= w) | (yin < 0) | (yin >= h)
    self.outside = outside if outside.any() else None
    self.size = (x1 - x0, y1 - y0)

  def __call__(self, img: Image.Image) -> Image.Image:
    cv2 = _require_cv2()
    arr = cv2.warpAffine(
      np.asarray(img),
      self.m,
      self.size,
      flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
      borderMode=cv2.BORDER_REPLICATE,
    )
    if self.outside is not None:
      arr[self.outside] = _FILL
    return Image.fromarray(arr)


def apply_rand_augment_box(
  frames: np.ndarray, ops: RandAugmentOps, box: Box, geometry: str = "pil"
) -> np.ndarray:
  """``apply_rand_augment(frames, ops)[:, top:top+h, left:left+w]``, computing only what the box
  needs (see the comment above ``_GLOBAL_OPS``).

  Shear/Translate run as exact NumPy versions of PIL's bicubic affine (:func:`_axis_affine`),
  everything else with PIL, as in the official code. ``geometry="cv2"`` runs all affine ops with
  OpenCV instead (not bit-exact, see :class:`_Cv2Affine`; since the NumPy Shear/Translate it only
  speeds up Rotate).
  """
  if geometry not in ("pil", "cv2"):
    raise ValueError(f"geometry must be 'pil' or 'cv2', got {geometry!r}")
  _t, fh, fw, _c = frames.shape
  top, left, bh, bw = box
  full: Rect = (0, 0, fw, fh)
  split = 0  # ops[:split] run on full frames
  for k, (name, arg) in enumerate(ops):
    if name in _GLOBAL_OPS or not _region_safe(name, arg):
      split = k + 1
  full_ops, rect_ops = ops[:split], ops[split:]
  rects: list[Rect] = [(left, top, left + bw, top + bh)]
  for name, arg in reversed(rect_ops):
    rects.append(_input_rect(name, arg, rects[-1], fw, fh))
  rects.reverse()  # rects[k]: input of rect_ops[k]; rects[-1]: the box

  def plan(name: str, arg: float, have: Rect, need: Rect) -> tuple[bool, Callable]:
    """(whole-clip array step?, callable) for one op, set up once per clip. Array steps take and
    return uint8 ``[T, h, w, 3]``; the others take and return one PIL image."""
    if name in _AFFINE_OPS and _region_safe(name, arg):
      coeffs = _affine_coeffs(name, arg, fw, fh)
      if coeffs is not None and geometry == "cv2":
        return False, _Cv2Affine(coeffs, have, need, fw, fh)
      if coeffs is not None and name in _AXIS_OPS:
        return True, lambda x: _axis_affine(x, have, coeffs, need, fw, fh)
      return False, lambda img: _apply_affine_rect(img, have, name, arg, need, fw, fh)
    crop = (need[0] - have[0], need[1] - have[1], need[2] - have[0], need[3] - have[1])
    if need == have:
      return False, lambda img: _apply_op(img, name, arg)
    return False, lambda img: _apply_op(img, name, arg).crop(crop)

  steps = [plan(name, arg, full, full) for name, arg in full_ops]
  if full_ops and rects[0] != full:
    cx0, cy0, cx1, cy1 = rects[0]
    steps.append((True, lambda x: x[:, cy0:cy1, cx0:cx1]))
  steps += [plan(name, arg, rects[k], rects[k + 1]) for k, (name, arg) in enumerate(rect_ops)]
  x0, y0, x1, y1 = full if full_ops else rects[0]
  clip = frames[:, y0:y1, x0:x1]
  k = 0
  while k < len(steps):
    if steps[k][0]:
      clip = steps[k][1](clip)
      k += 1
      continue
    run = []  # consecutive PIL steps: one conversion per frame for all of them
    while k < len(steps) and not steps[k][0]:
      run.append(steps[k][1])
      k += 1
    outs = []
    for frame in clip:
      img = Image.fromarray(np.ascontiguousarray(frame))
      for step in run:
        img = step(img)
      outs.append(np.asarray(img))
    clip = np.stack(outs)
  return np.ascontiguousarray(clip)


# ----------------------------------------------------------------------------- resizing
def _axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """torch bilinear, align_corners=False, no antialias: source index pairs and weights.

  src = (dst + 0.5) * in/out - 0.5 clamped below at 0 (float32 like torch's CPU kernel);
  i1 = i0 + 1 except at the last source pixel.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  dst = np.arange(out_size, dtype=np.float32)
  src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
  i0 = np.minimum(src.astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w1 = (src - i0.astype(np.float32)).astype(np.float32)
  return i0, i1, w1


def resize_bilinear(
  frames: np.ndarray,
  out_h: int,
  out_w: int,
  rows: slice = slice(None),
  cols: slice = slice(None),
) -> np.ndarray:
  """Bilinear resize of ``[T, H, W, C]`` to ``[T, out_h, out_w, C]`` float32 (torch semantics).

  ``rows``/``cols`` select a window of the output; only that window is computed, which is how
  eval crops avoid resizing pixels they drop. Same-size axes are passed through untouched.
  """
  _t, h, w, _c = frames.shape
  x = frames
  if out_h != h or x.dtype != np.float32:
    if out_h == h:
      x = x[:, rows].astype(np.float32)
    else:
      r0, r1, rw = (a[rows] for a in _axis_weights(h, out_h))
      a = x[:, r0].astype(np.float32)
      b = x[:, r1].astype(np.float32)
      x = a + (b - a) * rw[None, :, None, None]
  else:
    x = x[:, rows]
  if out_w != w:
    c0, c1, cw = (a[cols] for a in _axis_weights(w, out_w))
    a = x[:, :, c0]
    b = x[:, :, c1]
    x = a + (b - a) * cw[None, None, :, None]
  else:
    x = x[:, :, cols]
  return np.ascontiguousarray(x, dtype=np.float32)


# ----------------------------------------------------------------------------- RandomResizedCrop
Box = tuple[int, int, int, int]  # (top, left, height, width)


def rrc_fallback(height: int, width: int, ratio: tuple[float, float] = (0.75, 1.3333)) -> Box:
  """The centred box used after all attempts fail, clamped to the aspect range."""
  in_ratio = width / height
  if in_ratio < min(ratio):
    w = width
    h = round(w / min(ratio))
  elif in_ratio > max(ratio):
    h = height
    w = round(h * max(ratio))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def rrc_params(
  rng: np.random.Generator,
  height: int,
  width: int,
  scale: tuple[float, float] = (0.08, 1.0),
  ratio: tuple[float, float] = (0.75, 1.3333),
  attempts: int = 10,
) -> Box:
  """One RandomResizedCrop box (official ``_get_param_spatial_crop`` with log-uniform ratio)."""
  area = height * width
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(attempts):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = round(math.sqrt(target * aspect))
    h = round(math.sqrt(target / aspect))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h, endpoint=True))
      left = int(rng.integers(0, width - w, endpoint=True))
      return top, left, h, w
  return rrc_fallback(height, width, ratio)


def crop_resize(frames: np.ndarray, box: Box, size: int) -> np.ndarray:
  top, left, h, w = box
  return resize_bilinear(frames[:, top : top + h, left : left + w], size, size)


def _lerp_(a: np.ndarray, b: np.ndarray, wgt: np.ndarray) -> np.ndarray:
  """a + (b - a) * wgt for float32 arrays, computed in place in ``b``."""
  b -= a
  b *= wgt
  b += a
  return b


def resize_uint8_to(
  crop: np.ndarray,
  size: int,
  *,
  flip: bool = False,
  output: str = "float32",
  mean: Sequence[float] = (0.45,) * 3,
  std: Sequence[float] = (0.225,) * 3,
  backend: str = "numpy",
) -> np.ndarray:
  """Training resize of a uint8 crop ``[T, h, w, 3]`` to ``[T, size, size, 3]`` (torch bilinear,
  no antialias), optional horizontal flip, then :func:`finalize`.

  Same values as ``finalize(crop_resize(...)[:, :, ::-1])`` up to float32 rounding (< 1e-5
  after normalisation). Speed: rows are gathered first (whole contiguous rows of uint8), the
  column pass runs on a channels-first copy so the gathers are along the contiguous axis, the
  flip is folded into the column weights and normalisation into the final transposing copy.
  The official order normalises before resizing; both are affine, so only rounding differs.

  ``backend="cv2"``: ``cv2.resize`` (INTER_LINEAR on float32 is the same half-pixel, clamped,
  non-antialiased bilinear) -- about 5x faster; differs by < 0.01 grey levels (< 2e-4 after
  normalisation) from the NumPy path. ``"auto"``: cv2 when installed, else NumPy.
  """
  if backend == "auto":
    backend = "cv2" if optional_cv2() is not None else "numpy"
  if backend == "cv2":
    return _resize_cv2(crop, size, flip=flip, output=output, mean=mean, std=std)
  if backend != "numpy":
    raise ValueError(f"backend must be 'numpy', 'cv2' or 'auto', got {backend!r}")
  t, h, w, nc = crop.shape
  r0, r1, rw = _axis_weights(h, size)
  c0, c1, cw = _axis_weights(w, size)
  if flip:
    c0, c1, cw = c0[::-1], c1[::-1], cw[::-1]

  def planar(rows: np.ndarray | slice) -> np.ndarray:
    """crop[:, rows] as float32 channels-first [T, R, C, w] (per-channel copies are fastest)."""
    src = crop[:, rows]
    dst = np.empty((t, src.shape[1], nc, w), np.float32)
    for ch in range(nc):
      dst[:, :, ch] = src[..., ch]
    return dst

  if h == size:
    xt = planar(slice(None))
  else:
    xt = _lerp_(planar(r0), planar(r1), rw[:, None, None])
  if w == size and not flip:
    y = xt
  else:
    y = _lerp_(np.take(xt, c0, axis=3), np.take(xt, c1, axis=3), cw)
  # Normalise (or round) while channels-first, then per-channel copies to [T, size, size, C].
  if output == "float32":
    y -= (np.asarray(mean, np.float32) * np.float32(255.0))[:, None]
    y *= (np.float32(1.0) / (np.asarray(std, np.float32) * np.float32(255.0)))[:, None]
    out = np.empty((t, size, size, nc), np.float32)
  elif output == "uint8":
    np.clip(np.rint(y, out=y), 0, 255, out=y)
    out = np.empty((t, size, size, nc), np.uint8)
  else:
    raise ValueError(f"output must be 'float32' or 'uint8', got {output!r}")
  for ch in range(nc):
    out[..., ch] = y[:, :, ch]
  return out


def _resize_cv2(
  crop: np.ndarray,
  size: int,
  *,
  flip: bool,
  output: str,
  mean: Sequence[float],
  std: Sequence[float],
) -> np.ndarray:
  cv2 = _require_cv2()
  t, _h, _w, nc = crop.shape
  out = np.empty((t, size, size, nc), np.float32)
  for i in range(t):
    src = crop[i].astype(np.float32)
    if flip:
      cv2.flip(cv2.resize(src, (size, size), interpolation=cv2.INTER_LINEAR), 1, dst=out[i])
    else:
      cv2.resize(src, (size, size), dst=out[i], interpolation=cv2.INTER_LINEAR)
  if output == "float32":
    m = np.asarray(mean, np.float32) * np.float32(255.0)
    inv = np.float32(1.0) / (np.asarray(std, np.float32) * np.float32(255.0))
    if np.all(m == m[0]) and np.all(inv == inv[0]):
      out -= m[0]  # scalar ops: broadcasting over a length-3 axis is slow in NumPy
      out *= inv[0]
    else:
      for ch in range(nc):
        out[..., ch] -= m[ch]
        out[..., ch] *= inv[ch]
    return out
  return finalize(out, output, mean, std)


# ----------------------------------------------------------------------------- eval geometry
def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
  """Official test resize: short side -> size, long side floor((long / short) * size) in float.

  The float evaluation order matters: (210, 915) -> 975, one less than the exact 976.
  """
  if min(height, width) == size:
    return height, width
  if width < height:
    return math.floor((float(height) / width) * size), size
  return size, math.floor((float(width) / height) * size)


def uniform_crop_box(height: int, width: int, size: int, spatial_index: int) -> tuple[int, int]:
  """(y0, x0) of crop ``spatial_index`` (0 left/top, 1 centre, 2 right/bottom), centre rounds up."""
  if spatial_index not in (0, 1, 2):
    raise ValueError(f"spatial_index must be 0, 1 or 2, got {spatial_index}")
  y0 = math.ceil((height - size) / 2)
  x0 = math.ceil((width - size) / 2)
  if height > width:
    y0 = 0 if spatial_index == 0 else (height - size if spatial_index == 2 else y0)
  else:
    x0 = 0 if spatial_index == 0 else (width - size if spatial_index == 2 else x0)
  return y0, x0


def eval_resize(frames: np.ndarray, size: int) -> np.ndarray:
  """Short-side resize to ``size`` as float32 (no interpolation when already ``size``)."""
  h, w = short_side_size(frames.shape[1], frames.shape[2], size)
  return resize_bilinear(frames, h, w)


def eval_crop(frames: np.ndarray, size: int, spatial_index: int) -> np.ndarray:
  """Resize + crop ``spatial_index`` as float32 ``[T, size, size, C]``; computes only the crop."""
  h, w = short_side_size(frames.shape[1], frames.shape[2], size)
  y0, x0 = uniform_crop_box(h, w, size, spatial_index)
  return resize_bilinear(frames, h, w, rows=slice(y0, y0 + size), cols=slice(x0, x0 + size))


# ----------------------------------------------------------------------------- normalisation
def finalize(
  frames: np.ndarray, output: str, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
  """float32 normalised ``(x/255 - mean)/std`` or uint8 (rounded) for on-device normalisation."""
  if output == "float32":
    m = np.asarray(mean, np.float32) * np.float32(255.0)
    inv = np.float32(1.0) / (np.asarray(std, np.float32) * np.float32(255.0))
    return ((frames.astype(np.float32, copy=False) - m) * inv).astype(np.float32, copy=False)
  if output == "uint8":
    if frames.dtype == np.uint8:
      return frames
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)
  raise ValueError(f"output must be 'float32' or 'uint8', got {output!r}")


# ----------------------------------------------------------------------------- full recipes
FLIP_PROB = 0.5  # the official RandomHorizontalFlip's
@dataclass(frozen=True)
class TrainAugConfig:
  """The official training augmentation (defaults: K400 recipe)."""

  crop_size: int = 224
  rand_augment: str | None = "rand-m7-n4-mstd0.5-inc1"
  scale: tuple[float, float] = (0.08, 1.0)
  ratio: tuple[float, float] = (
    0.75,
    1.3333,
  )  # the literal 1.3333 from the official config
  random_flip: bool = True  # SSv1/SSv2 recipes: False (else a flip with probability FLIP_PROB)
  mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
  std: tuple[float, float, float] = (0.225, 0.225, 0.225)
  output: str = "float32"  # or "uint8" (normalised later: (x / 255 - mean) / std)
  # "fast": RandAugment computed only where the crop box needs it + fused resize/flip/normalise
  # (same result as "reference" up to float rounding, see apply_rand_augment_box);
  # "reference": the literal order (RandAugment on full frames, then crop/resize, flip).
  impl: str = "fast"
  # fast impl only. Resize of the crop: "numpy", "cv2" or "auto" (cv2 if installed); the
  # backends agree to < 2e-4 after normalisation (float rounding level).
  resize_backend: str = "auto"
  # fast impl only. RandAugment's affine ops (Rotate/Shear/Translate): "pil" (exact, official;
  # Shear/Translate in exact NumPy) or "cv2" (approximate, needs OpenCV; cubic kernel a=-0.75
  # instead of PIL's a=-1: a small, measured deviation from the official augmentation -- see
  # apply_rand_augment_box; it now only makes Rotate faster).
  geometry: str = "pil"


@dataclass(frozen=True)
class EvalConfig:
  """Test views: short-side resize to crop_size, S spatial crops."""

  crop_size: int = 224
  num_spatial_crops: int = 3
  single_crop_index: int = 1  # crop used when S == 1: Kinetics 1 (centre), SSv2 0 (left/top)
  mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
  std: tuple[float, float, float] = (0.225, 0.225, 0.225)
  output: str = "float32"

  def spatial_index(self, s: int) -> int:
    return s if self.num_spatial_crops > 1 else self.single_crop_index


def train_augment(frames: np.ndarray, rng: np.random.Generator, cfg: TrainAugConfig) -> np.ndarray:
  """One augmented clip ``[T, crop, crop, 3]`` from uint8 frames (all frames alike).

  Random draws, in this order: RandAugment ops, crop box, flip (both implementations).
  """
  if cfg.impl == "fast":
    ops = sample_rand_augment(rng, _parse_ra(cfg.rand_augment)) if cfg.rand_augment else []
    top, left, h, w = box = rrc_params(rng, frames.shape[1], frames.shape[2], cfg.scale, cfg.ratio)
    if ops:
      crop = apply_rand_augment_box(frames, ops, box, cfg.geometry)
    else:
      crop = frames[:, top : top + h, left : left + w]
    flip = bool(cfg.random_flip and rng.random() < FLIP_PROB)
    return resize_uint8_to(
      crop,
      cfg.crop_size,
      flip=flip,
      output=cfg.output,
      mean=cfg.mean,
      std=cfg.std,
      backend=cfg.resize_backend,
    )
  if cfg.impl != "reference":
    raise ValueError(f"TrainAugConfig.impl must be 'fast' or 'reference', got {cfg.impl!r}")
  if cfg.rand_augment:
    ops = sample_rand_augment(rng, RandAugmentConfig.parse(cfg.rand_augment))
    frames = apply_rand_augment(frames, ops)
  box = rrc_params(rng, frames.shape[1], frames.shape[2], cfg.scale, cfg.ratio)
  out = crop_resize(frames, box, cfg.crop_size)
  if cfg.random_flip and rng.random() < FLIP_PROB:
    out = out[:, :, ::-1]
  return finalize(np.ascontiguousarray(out), cfg.output, cfg.mean, cfg.std)


def eval_view(frames: np.ndarray, s: int, cfg: EvalConfig) -> np.ndarray:
  """Spatial view ``s`` (0..S-1) of a decoded temporal clip."""
  out = eval_crop(frames, cfg.crop_size, cfg.spatial_index(s))
  return finalize(out, cfg.output, cfg.mean, cfg.std)


# ----------------------------------------------------------------------------- batch-level mixing
def one_hot_smooth(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
  """Soft targets: 1 - smoothing + smoothing/K on the label, smoothing/K elsewhere (timm)."""
  off = smoothing / num_classes
  out = np.full((len(labels), num_classes), off, np.float32)
  out[np.arange(len(labels)), labels] = 1.0 - smoothing + off
  return out


@dataclass(frozen=True)
class MixupConfig:
  """timm-style batch Mixup/CutMix (disabled in the official recipes)."""

  num_classes: int
  mixup_alpha: float = 0.8
  cutmix_alpha: float = 1.0
  prob: float = 1.0
  switch_prob: float = 0.5
  label_smoothing: float = 0.1


def mixup_cutmix(
  videos: np.ndarray, labels: np.ndarray, rng: np.random.Generator, cfg: MixupConfig
) -> tuple[np.ndarray, np.ndarray]:
  """Mix a batch with its reverse (timm 'batch' mode); returns (videos, soft labels [B, K]).

  CutMix pastes one box (same for every frame) and corrects lambda to the true box area.
  """
  y1 = one_hot_smooth(labels, cfg.num_classes, cfg.label_smoothing)
  y2 = y1[::-1]
  if rng.random() >= cfg.prob or (cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0):
    return videos, y1
  use_cutmix = cfg.cutmix_alpha > 0 and (cfg.mixup_alpha <= 0 or rng.random() < cfg.switch_prob)
  out = videos.copy()
  if use_cutmix:
    lam = float(rng.beta(cfg.cutmix_alpha, cfg.cutmix_alpha))
    h, w = videos.shape[-3], videos.shape[-2]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1b = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch // 2, 0, h)
    x0, x1b = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw // 2, 0, w)
    out[..., y0:y1b, x0:x1b, :] = videos[::-1][..., y0:y1b, x0:x1b, :]
    lam = 1.0 - (y1b - y0) * (x1b - x0) / float(h * w)
  else:
    lam = float(rng.beta(cfg.mixup_alpha, cfg.mixup_alpha))
    mixed = videos.astype(np.float32) * lam + videos[::-1].astype(np.float32) * (1.0 - lam)
    out = (
      mixed.astype(videos.dtype)
      if videos.dtype == np.float32
      else np.rint(mixed).astype(videos.dtype)
    )
  return out, (y1 * lam + y2 * (1.0 - lam)).astype(np.float32)
