"""Spatial transforms: official test crops, RandomResizedCrop, RandAugment, flip, mixup."""

import math

import numpy as np
import pytest

from tests.conftest import sampling_fixture
from uniformerv2_jax.data import transforms as T

_load = sampling_fixture
EPS = float(np.finfo(np.float32).eps)


def _coord_video(h, w):
  """Fixture dummy video in our layout [T=2, H, W, C=3] float32."""
  y = np.arange(h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
  x = np.ones((h, 1), np.float32) * np.arange(w, dtype=np.float32)[None, :]
  f0 = np.stack([y, x, np.zeros_like(y)], -1)
  yi, xi = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  f1 = np.stack(
    [((37 * yi) % 101) / 100.0, ((53 * xi) % 103) / 102.0, np.zeros((h, w))], -1
  ).astype(np.float32)
  return np.stack([f0, f1])


def test_eval_resize_and_crops_match_official():
  for case in _load("test_crops.json")["cases"]:
    h, w = case["frame_hw"]
    s = case["crop"]
    vid = _coord_video(h, w)
    assert T.short_side_size(h, w, s) == tuple(case["resized_hw"]), case["frame_hw"]
    resized = T.eval_resize(vid, s)
    assert resized.shape[1:3] == tuple(case["resized_hw"])
    prof = case["resized_profiles"]
    for axis, coord, pattern in (("rows", resized[0, :, 0, 0], resized[1, :, 0, 0]),
                                 ("cols", resized[0, 0, :, 1], resized[1, 0, :, 1])):
      ref_coord = np.asarray(prof[f"coord_{axis}"], np.float32)
      ref_pattern = np.asarray(prof[f"pattern_{axis}"], np.float32)
      # The coordinate ramp resizes to the source coordinate itself: both sides compute it in
      # float32 (scale, product, offset), so they agree to 2 eps relative.
      d_coord = np.abs(coord - ref_coord)
      np.testing.assert_allclose(coord, ref_coord, rtol=2 * EPS, atol=0)
      assert (d_coord <= 2e-4).all()
      # The pattern (steps <= 1 between neighbours) moves by the source-coordinate difference
      # (the coordinate gap plus its own rounding, one ulp) plus the rounding of the blends.
      bound = d_coord + np.spacing(np.abs(ref_coord)) + 4 * EPS
      assert (np.abs(pattern - ref_pattern) <= bound).all(), (case["frame_hw"], axis)
    for k, (y0, x0, y1, x1) in case["boxes_y0_x0_y1_x1"].items():
      assert T.uniform_crop_box(*resized.shape[1:3], s, int(k)) == (y0, x0)
      crop = T.eval_crop(vid, s, int(k))
      np.testing.assert_array_equal(crop, resized[:, y0:y1, x0:x1])


def test_eval_views_left_centre_right_and_single_crop_index():
  vid = _coord_video(240, 320)
  cfg3 = T.EvalConfig(
    crop_size=224, num_spatial_crops=3, output="float32", mean=(0, 0, 0), std=(1 / 255,) * 3
  )
  x0s = [float(T.eval_view(vid, s, cfg3)[0, 0, 0, 1]) for s in range(3)]
  assert x0s[0] < x0s[1] < x0s[2]
  k400 = T.EvalConfig(num_spatial_crops=1, single_crop_index=1)
  ssv2 = T.EvalConfig(num_spatial_crops=1, single_crop_index=0)
  assert k400.spatial_index(0) == 1 and ssv2.spatial_index(0) == 0


def test_rrc_fallback_exact():
  for e in _load("train_crop.json")["fallback_boxes_recipe_ratio"]["entries"]:
    h, w = e["frame_hw"]
    assert T.rrc_fallback(h, w, (0.75, 1.3333)) == tuple(e["i_j_h_w"]), e
    # 0 attempts also gives the fallback.
    assert T.rrc_params(np.random.default_rng(0), h, w, attempts=0) == tuple(e["i_j_h_w"])


def test_rrc_statistics_match_official_quantiles():
  rng = np.random.default_rng(0)
  for e in _load("train_crop.json")["sampler_statistics_recipe"]["entries"]:
    h, w = e["frame_hw"]
    boxes = np.array([T.rrc_params(rng, h, w) for _ in range(20000)], np.float64)
    top, left, bh, bw = boxes.T
    q = e["quantiles"]
    stats = {
      "area_fraction": bh * bw / (h * w),
      "log_aspect_w_over_h": np.log(bw / bh),
      "centre_y_over_H": (top + bh / 2) / h,
      "centre_x_over_W": (left + bw / 2) / w,
    }
    # A quantile of n draws has standard error sqrt(q (1 - q) / n) / density: at most 0.0035
    # for these statistics at n = 20,000 (0.0016 for the official 100,000), so 0.02 is ~5 of them.
    for key, values in stats.items():
      np.testing.assert_allclose(np.quantile(values, q), e[key], atol=0.02, err_msg=key)


def test_bilinear_matches_half_pixel_formula():
  rng = np.random.default_rng(0)
  img = rng.random((1, 7, 9, 1)).astype(np.float32)
  out = T.resize_bilinear(img, 4, 13)

  # Reference in float64: separable, half-pixel centres, clamp below at 0.
  def axis(n_in, n_out):
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), i0] += 1 - (src - i0)
    m[np.arange(n_out), i1] += src - i0
    return m

  ref = axis(7, 4) @ img[0, :, :, 0] @ axis(9, 13).T
  # float32 source coordinates are off by <= 2 eps * 9 pixels (values step <= 1 per pixel),
  # plus the rounding of two 2-tap blends of values in [0, 1).
  np.testing.assert_allclose(out[0, :, :, 0], ref, atol=(2 * 9 + 4) * EPS, rtol=0)


def _clip(rng, t=4, h=48, w=64):
  base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  return np.stack([base] * t)


def test_same_transform_on_every_frame():
  rng = np.random.default_rng(1)
  frames = _clip(rng)
  cfg = T.TrainAugConfig(crop_size=32)
  for seed in range(20):
    out = T.train_augment(frames, np.random.default_rng(seed), cfg)
    assert out.shape == (4, 32, 32, 3) and out.dtype == np.float32
    for t in range(1, 4):
      np.testing.assert_array_equal(out[t], out[0])


def test_rand_augment_parse_and_ops():
  cfg = T.RandAugmentConfig.parse("rand-m7-n4-mstd0.5-inc1")
  assert (cfg.magnitude, cfg.num_layers, cfg.magnitude_std, cfg.prob) == (7, 4, 0.5, 0.5)
  assert len(T.RAND_INCREASING_OPS) == 15
  rng = np.random.default_rng(0)
  counts = [len(T.sample_rand_augment(rng, cfg)) for _ in range(2000)]
  assert abs(np.mean(counts) - 2.0) < 0.1  # 4 ops each applied with p 0.5
  frames = _clip(rng, t=2)
  for name in T.RAND_INCREASING_OPS:
    arg = T._level_to_arg(name, 7.0, False, cfg)
    out = T.apply_rand_augment(frames, [(name, arg)])
    assert out.shape == frames.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], out[1])
  assert T._level_to_arg("Rotate", 10.0, True, cfg) == -30.0
  assert T._level_to_arg("PosterizeIncreasing", 7.0, False, cfg) == 2.0
  assert T._level_to_arg("SolarizeIncreasing", 7.0, False, cfg) == 256 - 179
  assert T._level_to_arg("SolarizeAdd", 7.0, False, cfg) == 77
  assert math.isclose(T._level_to_arg("ContrastIncreasing", 7.0, True, cfg), 1 - 0.63)


def test_flip_rate_and_disable():
  # Asymmetric frame: flipping changes the output.
  frames = np.zeros((2, 32, 32, 3), np.uint8)
  frames[:, :, :8] = 255
  base = dict(crop_size=32, rand_augment=None, scale=(1.0, 1.0), ratio=(1.0, 1.0), output="uint8")
  on, off = T.TrainAugConfig(**base), T.TrainAugConfig(**base, random_flip=False)
  flips = [
    T.train_augment(frames, np.random.default_rng(s), on)[0, 0, 0, 0] == 0 for s in range(400)
  ]
  assert 0.4 < np.mean(flips) < 0.6
  assert not any(
    T.train_augment(frames, np.random.default_rng(s), off)[0, 0, 0, 0] == 0 for s in range(50)
  )


def test_normalisation_and_uint8_output():
  frames = np.full((1, 8, 8, 3), 255, np.uint8)
  out = T.finalize(frames.astype(np.float32), "float32", (0.45,) * 3, (0.225,) * 3)
  # float32 mean, std and their products: four roundings each way.
  np.testing.assert_allclose(out, (1 - 0.45) / 0.225, rtol=4 * EPS)
  # The uint8 path's normalisation, done later on the accelerator: (x / 255 - mean) / std.
  on_device = (frames.astype(np.float32) / 255.0 - np.float32(0.45)) / np.float32(0.225)
  np.testing.assert_allclose(on_device, out, rtol=8 * EPS)


def test_mixup_cutmix_soft_labels():
  rng = np.random.default_rng(0)
  videos = rng.random((4, 2, 8, 8, 3)).astype(np.float32)
  labels = np.array([0, 1, 2, 3])
  cfg = T.MixupConfig(num_classes=5, label_smoothing=0.1)
  for _ in range(10):
    out, soft = T.mixup_cutmix(videos, labels, rng, cfg)
    assert out.shape == videos.shape and soft.shape == (4, 5)
    # two float32 mixes of 5-class rows, summed: a few roundings per term
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=8 * EPS)
  smooth = T.one_hot_smooth(labels, 5, 0.1)
  # float32 representation of 0.92 and 0.02 plus one subtraction
  np.testing.assert_allclose(smooth[0], [0.92, 0.02, 0.02, 0.02, 0.02], rtol=2 * EPS)


# ----------------------------------------------------------------------------- fast training path
def _textured(rng, t=2, h=60, w=90):
  """Smooth-ish random texture (bicubic upsampled noise) that moves between frames."""
  from PIL import Image

  base = rng.integers(0, 256, (h // 6 + 2, w // 6 + 2, 3), dtype=np.uint8)
  img = np.asarray(Image.fromarray(base).resize((w + 8, h + 8), Image.Resampling.BICUBIC))
  return np.stack([img[i : i + h, i : i + w] for i in range(t)])


def _op_arg(name, rng, cfg):
  mag = float(np.clip(rng.normal(cfg.magnitude, cfg.magnitude_std), 0, 10))
  return T._level_to_arg(name, mag, rng.random() > 0.5, cfg)


def _boxes(rng, h, w):
  # random RRC boxes plus boxes on every edge and the whole frame
  yield from (T.rrc_params(rng, h, w) for _ in range(3))
  yield (0, 0, h, w)
  yield (0, 0, h // 3, w // 4)
  yield (h - h // 2, w - w // 3, h // 2, w // 3)
  yield (1, w - 5, 7, 5)


def test_rand_augment_box_equals_full_frame_then_crop():
  """The box-only evaluation equals RandAugment on the full frame, cropped (single ops and
  random chains, boxes inside and on the frame edges)."""
  rng = np.random.default_rng(0)
  cfg = T.RandAugmentConfig.parse("rand-m7-n4-mstd0.5-inc1")
  frames = _textured(rng)
  chains = [[(name, _op_arg(name, rng, cfg))] for name in T.RAND_INCREASING_OPS]
  # hand-picked orders: affine after / before global-statistics ops, two affine ops in a row
  chains += [
    [("Rotate", 20.0), ("AutoContrast", 0.0)],
    [("Equalize", 0.0), ("ShearX", -0.2), ("SharpnessIncreasing", 1.6)],
    [("TranslateXRel", 0.3), ("Rotate", -25.0), ("ContrastIncreasing", 0.4), ("ShearY", 0.25)],
    [("SharpnessIncreasing", 0.3), ("TranslateYRel", -0.4), ("SharpnessIncreasing", 1.7)],
    [("TranslateXRel", 0.45), ("Rotate", 30.0)],  # boxes on the right sample only fill
  ]
  chains += [T.sample_rand_augment(rng, cfg) for _ in range(60)]
  worst, differing, total = 0, 0, 0
  for ops in chains:
    full = T.apply_rand_augment(frames, ops)
    for top, left, h, w in _boxes(rng, *frames.shape[1:3]):
      got = T.apply_rand_augment_box(frames, ops, (top, left, h, w))
      d = np.abs(got.astype(int) - full[:, top : top + h, left : left + w].astype(int))
      worst, differing, total = max(worst, d.max()), differing + (d > 0).sum(), total + d.size
  # Only float rounding of the shifted affine coefficients can differ: PIL's bicubic hits exact
  # x.5 ties at rational positions (e.g. shear 0.2 every 5th row), which the last-ulp change can
  # tip by one grey level; a later Sharpness can make that 2. Ties need an exact x.5 before
  # rounding, which only rational coefficient grids produce (69 of 6.1M values here), while a
  # misplaced box or a wrong op differs in most pixels: 1e-4 keeps orders of magnitude between.
  assert worst <= 2 and differing <= 1e-4 * total, (worst, differing, total)


def test_fast_train_augment_equals_reference():
  rng = np.random.default_rng(1)
  frames = _textured(rng, t=3, h=72, w=128)
  for output in ("float32", "uint8"):
    fast = T.TrainAugConfig(crop_size=40, output=output, resize_backend="numpy")
    ref = T.TrainAugConfig(crop_size=40, output=output, impl="reference")
    for seed in range(40):
      a = T.train_augment(frames, np.random.default_rng(seed), fast)
      b = T.train_augment(frames, np.random.default_rng(seed), ref)
      assert a.shape == b.shape and a.dtype == b.dtype
      if output == "float32":
        # float32 rounding of two bilinear resizes: a few ulps of |x| <= 0.55 / 0.225
        np.testing.assert_allclose(a, b, atol=8 * EPS * 0.55 / 0.225, rtol=0)
      else:  # rounding of x.5 values may differ by one level
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_resize_uint8_to_matches_crop_resize():
  rng = np.random.default_rng(2)
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  for h, w in [(50, 70), (70, 50), (32, 32), (32, 45), (45, 32), (9, 13), (100, 31)]:
    crop = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    for flip in (False, True):
      ref = T.crop_resize(crop, (0, 0, h, w), 32)
      ref = ref[:, :, ::-1] if flip else ref
      got = T.resize_uint8_to(crop, 32, flip=flip, output="float32", mean=mean, std=std)
      # float32 rounding: a few ulps of |x| <= (1 - 0.406) / 0.225
      np.testing.assert_allclose(got, T.finalize(ref, "float32", mean, std),
                                 atol=8 * EPS * (1 - 0.406) / 0.225, rtol=0)
      got8 = T.resize_uint8_to(crop, 32, flip=flip, output="uint8")
      assert np.abs(got8.astype(int) - T.finalize(ref, "uint8", mean, std)).max() <= 1
  with pytest.raises(ValueError):
    T.resize_uint8_to(crop, 32, backend="nope")
  with pytest.raises(ValueError):
    T.train_augment(crop, np.random.default_rng(0), T.TrainAugConfig(impl="nope"))


def test_cv2_backends_are_close():
  rng = np.random.default_rng(3)
  crop = rng.integers(0, 256, (2, 57, 81, 3), dtype=np.uint8)
  for flip in (False, True):
    a = T.resize_uint8_to(crop, 32, flip=flip, backend="numpy")
    b = T.resize_uint8_to(crop, 32, flip=flip, backend="cv2")
    # both resize in float32: a few ulps of the largest value
    np.testing.assert_allclose(a, b, atol=8 * EPS * float(np.abs(a).max()), rtol=0)
  # Affine ops with OpenCV: a different cubic kernel, so close but not equal to PIL.
  frames = _textured(rng, h=80, w=120)
  cfg = T.RandAugmentConfig.parse("rand-m7-n4-mstd0.5-inc1")
  for name in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
    ops = [(name, _op_arg(name, rng, cfg))]
    for box in _boxes(rng, 80, 120):
      a = T.apply_rand_augment_box(frames, ops, box).astype(int)
      b = T.apply_rand_augment_box(frames, ops, box, geometry="cv2").astype(int)
      d = np.abs(a - b)
      # The cubic kernels differ (OpenCV a = -0.75, PIL a = -0.5): on this smooth texture a
      # fraction of a level on average and a few at edges; a misplaced transform differs by tens.
      assert d.mean() < 1.5 and np.percentile(d, 99) <= 6, (name, box, d.mean(), d.max())


# ----------------------------------------------------------------------------- exact NumPy ops
def _pil_affine(frames, coeffs):
  from PIL import Image

  h, w = frames.shape[1:3]
  return np.stack(
    [
      np.asarray(
        Image.fromarray(f).transform(
          (w, h), Image.Transform.AFFINE, coeffs, resample=T._RESAMPLE, fillcolor=T._FILL
        )
      )
      for f in frames
    ]
  )


def _noisy_texture(rng, h, w):
  """Smooth texture with rows of noise: flat areas, hard edges and every grey level."""
  frames = _textured(rng, t=2, h=h, w=w)
  frames[:, ::5] = rng.integers(0, 256, frames[:, ::5].shape, dtype=np.uint8)
  return frames


def test_axis_ops_bit_identical_to_pil():
  """Shear/Translate in NumPy equal PIL's bicubic affine exactly: full frames (direct call) and
  crop boxes (against PIL on the full frame, cropped), random and extreme arguments."""
  rng = np.random.default_rng(0)
  cfg = T.RandAugmentConfig.parse("rand-m7-n4-mstd0.5-inc1")
  for h, w in ((48, 70), (67, 41)):
    frames = _noisy_texture(rng, h, w)
    full = (0, 0, w, h)
    for name in ("ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
      args = [T._level_to_arg(name, float(rng.uniform(0, 10)), s, cfg) for s in (0, 1) * 6]
      args += [0.0, 0.3, -0.3] if name.startswith("Shear") else [0.45, -0.45, 3 / w, 0.0]
      for arg in args:
        coeffs = T._affine_coeffs(name, arg, w, h)
        ref = _pil_affine(frames, coeffs)
        np.testing.assert_array_equal(T._axis_affine(frames, full, coeffs, full, w, h), ref)
        for top, left, bh, bw in _boxes(rng, h, w):
          got = T.apply_rand_augment_box(frames, [(name, arg)], (top, left, bh, bw))
          np.testing.assert_array_equal(got, ref[:, top : top + bh, left : left + bw])


def test_rand_augment_box_exact_without_rotate():
  """Random chains without Rotate (the one affine op still run by PIL on a rectangle) are
  bit-identical to the full-frame official order, cropped."""
  rng = np.random.default_rng(1)
  cfg = T.RandAugmentConfig.parse("rand-m7-n4-mstd0.5-inc1")
  frames = _noisy_texture(rng, 56, 96)
  tested = 0
  while tested < 60:
    ops = T.sample_rand_augment(rng, cfg)
    if any(name == "Rotate" for name, _ in ops):
      continue
    tested += 1
    full = T.apply_rand_augment(frames, ops)
    for top, left, h, w in list(_boxes(rng, 56, 96))[:4]:
      got = T.apply_rand_augment_box(frames, ops, (top, left, h, w))
      np.testing.assert_array_equal(got, full[:, top : top + h, left : left + w], str(ops))


def test_cubic_gather_equals_slab_path():
  """The per-tap gather (used when taps do not advance one per pixel) computes the same."""
  rng = np.random.default_rng(2)
  frames = _noisy_texture(rng, 30, 40)
  for axis, size in ((2, 40), (1, 30)):
    for shift in (-13.37, 0.25, 17.5):
      ys, xs = np.mgrid[0:30, 0:40].astype(np.float64) + 0.5
      pos = (xs if axis == 2 else ys) + shift + 0.1 * (ys if axis == 2 else xs)
      ref = T._cubic_along(frames, pos, axis, 0, size)
      inside = (pos >= 0) & (pos < size)
      p = pos - 0.5
      k = np.floor(p)
      frac = np.repeat((p - k)[..., None], 3, axis=-1)
      got = T._cubic_gather(frames, k.astype(np.int64) - 1, frac, inside, axis)
      got[:, ~inside] = T._FILL
      np.testing.assert_array_equal(got, ref)
