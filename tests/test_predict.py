"""Prediction / feature extraction on video files (uniformerv2_jax.predict), end to end.

The tiny K400 fixture is converted to an Orbax checkpoint; a few mp4s of different sizes,
lengths and frame rates (plus a broken file) are predicted, and the results are compared with
the model run directly on views built without the data module (OpenCV decoding and the
official test-time recipe written out in this file). Compiles: one batch shape for
predict, one for extract_all, one for the reference.
"""

import json
import math

import cv2
import jax
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image

from tests.conftest import FIXTURES, sampling_fixture
from uniformerv2_jax import checkpoint, load_official, predict
from uniformerv2_jax.configs import common
from uniformerv2_jax.data.demo_dataset import write_mp4
from uniformerv2_jax.model import create_model
from uniformerv2_jax.trees import flat_state

# name: (height, width, frames, fps)
VIDEOS = {"a.mp4": (96, 128, 40, 30), "b.mp4": (150, 200, 5, 10), "c.mp4": (128, 96, 17, 10)}
NAMES = [f"class_{i}" for i in range(10)]
# Predict and the reference are two float32 runs on the same views (inputs rounded differently,
# other batch shapes); each is within 1.3e-6 of float64 in logits and fused features on this
# model (fixtures/README.md), so they differ by at most 2.6e-6, and a softmax probability moves
# by at most half the largest logit change.
PROB_ATOL = 2e-6
FEATURE_ATOL = 2.6e-6


def _frames(h, w, t, seed):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w]
  out = np.empty((t, h, w, 3), np.uint8)
  for i in range(t):
    base = rng.integers(0, 256, 3)
    grad = (xx * (i + 1) + yy * 2) % 256
    out[i] = np.clip(base[None, None] * 0.5 + grad[..., None] * 0.5
                     + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
  return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("predict")
  fixture = FIXTURES / "tiny_k400"
  model = load_official(fixture / "model.pth", fixture / "config.json")
  ckpt = root / "ckpt"
  checkpoint.save_model(ckpt, model)
  vids = root / "videos"
  vids.mkdir()
  for seed, (name, (h, w, t, fps)) in enumerate(VIDEOS.items()):
    write_mp4(str(vids / name), _frames(h, w, t, seed), fps=fps)
  (vids / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 20)
  labels = root / "labels.txt"
  labels.write_text("\n".join(NAMES) + "\n")
  return {"root": root, "ckpt": str(ckpt), "videos": vids, "model": model, "labels": str(labels)}


def _multi_view_config(model):
  c = common.base_config()
  c.model = common.model_config_dict(model.cfg)
  c.aug.crop_size = 64
  c.sampling.test_clips = 2
  c.sampling.test_crops = 3
  return c


# ----------------------------------------------------------------------------- reference views
# The reference views are built without the data module: OpenCV decodes (predict uses PyAV),
# and the official test-time recipe is written out below (kinetics_sparse test sampling,
# SlowFast's tensor_normalize, random_short_side_scale_jitter at min = max = crop, uniform_crop,
# torch bilinear resize).
MEAN, STD = (0.45,) * 3, (0.225,) * 3  # SlowFast DATA.MEAN / DATA.STD, kept by the K400 recipes


def _decode_opencv(path):
  cap = cv2.VideoCapture(str(path))
  frames = []
  while True:
    ok, bgr = cap.read()
    if not ok:
      break
    frames.append(bgr[..., ::-1])
  cap.release()
  return np.stack(frames)


def _official_test_indices(length, num_frames, v, num_views):
  """kinetics_sparse test clip v of V: start round(s i) (half-even), shifted int(s/(V+1)(v+1))."""
  s = max(length - 1, 0) / num_frames
  return [int(np.round(s * i)) + int(s / (num_views + 1) * (v + 1)) for i in range(num_frames)]


def _official_resized_hw(h, w, size):
  if (w <= h and w == size) or (h <= w and h == size):
    return h, w
  if w < h:
    return int(math.floor((float(h) / w) * size)), size
  return size, int(math.floor((float(w) / h) * size))


def _official_crop_y0_x0(h, w, size, spatial_idx):
  y0, x0 = int(math.ceil((h - size) / 2)), int(math.ceil((w - size) / 2))
  if h > w:
    y0 = {0: 0, 1: y0, 2: h - size}[spatial_idx]
  else:
    x0 = {0: 0, 1: x0, 2: w - size}[spatial_idx]
  return y0, x0


def _official_view(frames, size, spatial_idx):
  """[T, H, W, 3] uint8 -> normalised [T, size, size, 3] float32, in the official order."""
  x = torch.from_numpy(np.ascontiguousarray(frames)).float() / 255.0
  x = (x - torch.tensor(MEAN)) / torch.tensor(STD)
  x = x.permute(0, 3, 1, 2)  # T C H W: interpolate treats T as the batch
  h, w = _official_resized_hw(x.shape[2], x.shape[3], size)
  if (h, w) != tuple(x.shape[2:]):
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
  y0, x0 = _official_crop_y0_x0(h, w, size, spatial_idx)
  return x[:, :, y0:y0 + size, x0:x0 + size].permute(0, 2, 3, 1).numpy()


def _views(path, clips, crops):
  """The official test views of one video file."""
  return _official_views(_decode_opencv(path), clips, crops)


def _official_views(frames, clips, crops):
  """Test views of decoded frames: clip-major, crops 0, 1, 2 (or the centre alone)."""
  spatial = [1] if crops == 1 else list(range(crops))
  return [_official_view(frames[_official_test_indices(len(frames), 8, v, clips)], 64, s)
          for v in range(clips) for s in spatial]


def test_reference_recipe_matches_official_crops():
  """The written-out resize and crop rules reproduce the official boxes (fixture)."""
  for case in sampling_fixture("test_crops.json")["cases"]:
    h, w = case["frame_hw"]
    size = case["crop"]
    assert _official_resized_hw(h, w, size) == tuple(case["resized_hw"])
    for k, (y0, x0, _, _) in case["boxes_y0_x0_y1_x1"].items():
      assert _official_crop_y0_x0(*case["resized_hw"], size, int(k)) == (y0, x0)
  for e in sampling_fixture("kinetics_sparse.json")["test"]["entries"]:
    for v, expected in enumerate(e["indices"]):
      assert _official_test_indices(e["video_length"], e["num_frames"], v,
                                    e["num_clips"]) == expected


@pytest.fixture(scope="module")
def reference(setup):
  """Per video: (mean softmax, mean fused features) for 2x3 views and for the 1x1 default."""
  names = sorted(VIDEOS)
  multi = [_views(str(setup["videos"] / n), 2, 3) for n in names]
  single = [_views(str(setup["videos"] / n), 1, 1) for n in names]
  x = np.stack([v for vs in multi + single for v in vs])
  logits, fused = nnx.jit(lambda m, x: m(x, return_features=True))(setup["model"], x)
  probs = np.asarray(jax.nn.softmax(logits, axis=-1), np.float64)
  fused = np.asarray(fused, np.float64)
  out, i = {}, 0
  for kind, views in (("multi", multi), ("single", single)):
    for n, vs in zip(names, views, strict=True):
      out[kind, n] = (probs[i:i + len(vs)].sum(0) / len(vs), fused[i:i + len(vs)].mean(0))
      i += len(vs)
  return out


def test_predict_folder(setup, reference, tmp_path, capsys):
  model = setup["model"]
  out_file = tmp_path / "preds.json"
  entries = predict.predict_videos(setup["ckpt"], str(setup["videos"]),
                                   config=_multi_view_config(model), topk=10,
                                   output=str(out_file), labels=setup["labels"], batch_size=8,
                                   progress=False)
  written = json.loads(out_file.read_text())
  assert written == json.loads(json.dumps(entries))
  assert [e["video"].rsplit("/", 1)[-1] for e in written] == ["a.mp4", "b.mp4", "broken.mp4",
                                                               "c.mp4"]
  for e in written:
    assert set(e) == {"video", "topk", "error"}
    name = e["video"].rsplit("/", 1)[-1]
    if name == "broken.mp4":
      assert e["topk"] == [] and e["error"].startswith("cannot read video")
      continue
    assert e["error"] is None
    assert len(e["topk"]) == 10
    assert [set(t) for t in e["topk"]] == [{"label", "index", "prob"}] * 10
    probs = np.zeros(10)
    for t in e["topk"]:
      assert t["label"] == NAMES[t["index"]]
      probs[t["index"]] = t["prob"]
    assert abs(probs.sum() - 1.0) < 1e-5
    ranked = [t["prob"] for t in e["topk"]]
    assert ranked == sorted(ranked, reverse=True)
    want, _ = reference["multi", name]
    np.testing.assert_allclose(probs, want, atol=PROB_ATOL)
  printed = capsys.readouterr()
  assert "class_" in printed.out and "ERROR" in printed.out and "3 of 4 videos" in printed.out


def test_extract_list_file_defaults(setup, reference, tmp_path, capsys):
  """No config: the converter checkpoint's default 1 clip x 1 centre crop; a list file input
  (official ``path,label`` lines and bare paths); per-block and global tokens."""
  lst = setup["videos"] / "test.csv"
  lst.write_text("a.mp4,3\nbroken.mp4,1\n\nb.mp4 2\nc.mp4\n")
  out_file = tmp_path / "feats.npz"
  out = predict.extract_features(setup["ckpt"], str(lst), output=str(out_file),
                                 extract_all=True, batch_size=8, progress=False)
  assert "no --config" in capsys.readouterr().err
  z = np.load(out_file)
  names = [p.rsplit("/", 1)[-1] for p in z["videos"]]
  assert names == ["a.mp4", "broken.mp4", "b.mp4", "c.mp4"]
  assert z["features"].shape == (4, 64) and int(z["num_views"]) == 1
  assert z["block_cls"].shape == (4, 4, 64) and z["global_tokens"].shape == (4, 2, 64)
  assert z["errors"][1] and not any(z["errors"][[0, 2, 3]])
  assert np.isnan(z["features"][1]).all() and out["errors"][1] is not None
  for row, name in ((0, "a.mp4"), (2, "b.mp4"), (3, "c.mp4")):
    _, want = reference["single", name]
    np.testing.assert_allclose(z["features"][row], want, atol=FEATURE_ATOL)
  # fused = (1 - w) * last global token + w * frame-mean class token of the last block
  w = jax.nn.sigmoid(np.asarray(setup["model"].balance[...]))
  ok = [0, 2, 3]
  np.testing.assert_allclose(
    z["features"][ok], (1 - w) * z["global_tokens"][ok, -1] + w * z["block_cls"][ok, -1],
    atol=2e-5)


def test_adaptation_and_mismatch(setup, capsys):
  model = setup["model"]
  c = _multi_view_config(model)
  c.aug.crop_size = 96
  c.model.num_frames = 6
  p = predict.prepare(setup["ckpt"], c)
  err = capsys.readouterr().err
  assert "crop size 96 != model resolution 64" in err and "6 frames" in err
  assert p.views.eval_cfg.crop_size == 64 and p.views.sampling.num_frames == 6
  p = predict.prepare(setup["ckpt"], c, adapt="pos_embed")
  assert p.model.cfg.input_resolution == 96 and p.views.eval_cfg.crop_size == 96
  assert p.model.positional_embedding[...].shape == (1 + 6 * 6, 64)
  bad = _multi_view_config(model)
  bad.model.num_classes = 400
  with pytest.raises(predict.CheckpointMismatchError, match="num_classes"):
    predict.prepare(setup["ckpt"], bad)


def test_find_videos(tmp_path):
  (tmp_path / "sub").mkdir()
  for n in ("x.mp4", "sub/y.avi", "notes.md"):
    (tmp_path / n).write_bytes(b"1")
  assert predict.find_videos(str(tmp_path)) == [str(tmp_path / "sub/y.avi"),
                                                str(tmp_path / "x.mp4")]
  lst = tmp_path / "l.txt"
  lst.write_text("x.mp4 5\nsub/y.avi,0\nmissing.mp4\n")
  assert predict.find_videos(str(lst)) == [str(tmp_path / "x.mp4"), str(tmp_path / "sub/y.avi"),
                                           str(tmp_path / "missing.mp4")]
  with pytest.raises(FileNotFoundError):
    predict.find_videos(str(tmp_path / "nope"))


# ----------------------------------------------------------------------------- frame folders
def _write_frames(folder, frames, names):
  folder.mkdir(parents=True)
  for f, name in zip(frames, names, strict=True):
    Image.fromarray(f).save(folder / name)


@pytest.fixture(scope="module")
def frame_folders(setup):
  """Two frame-folder videos: SSv2-style ``img_00001.jpg ...`` (20 frames) and PNGs whose
  unpadded numbers only sort right naturally (``f_2`` before ``f_10``; 12 frames)."""
  root = setup["root"] / "frames"
  _write_frames(root / "clip1", _frames(72, 96, 20, 11), [f"img_{i:05d}.jpg" for i in range(1, 21)])
  _write_frames(root / "clip2", _frames(64, 80, 12, 12), [f"f_{i}.png" for i in range(1, 13)])
  (root / "clip1" / "notes.txt").write_text("not a frame")
  return root


def _frame_views(folder, template, length, clips, crops):
  """The official test views of a frame folder, its images decoded by OpenCV."""
  frames = np.stack([cv2.imread(str(folder / template.format(i)))[..., ::-1]
                     for i in range(1, length + 1)])
  return _official_views(frames, clips, crops)


def test_predict_frame_folders(setup, frame_folders, tmp_path):
  model = setup["model"]
  views = {"clip1": _frame_views(frame_folders / "clip1", "img_{:05d}.jpg", 20, 2, 3),
           "clip2": _frame_views(frame_folders / "clip2", "f_{}.png", 12, 2, 3)}
  x = np.stack([v for name in sorted(views) for v in views[name]])
  logits = nnx.jit(lambda m, x: m(x))(model, x)
  probs = np.asarray(jax.nn.softmax(logits, axis=-1), np.float64).reshape(2, 6, 10).mean(1)
  config = _multi_view_config(model)
  # A folder of frame folders: one video each, sorted.
  entries = predict.predict_videos(setup["ckpt"], str(frame_folders), config=config, topk=10,
                                   batch_size=8, progress=False, verbose=False)
  assert [e["video"] for e in entries] == [str(frame_folders / "clip1"),
                                           str(frame_folders / "clip2")]
  for e, want in zip(entries, probs, strict=True):
    assert e["error"] is None
    got = np.zeros(10)
    for t in e["topk"]:
      got[t["index"]] = t["prob"]
    np.testing.assert_allclose(got, want, atol=PROB_ATOL)
  # One frame folder given directly is one video; an SSv2 list line 'folder num_frames label'.
  one = predict.predict_videos(setup["ckpt"], str(frame_folders / "clip2"), config=config,
                               topk=10, batch_size=8, progress=False, verbose=False)
  assert one == entries[1:]
  lst = tmp_path / "val.txt"
  lst.write_text(f"clip1 20 4\n{frame_folders / 'clip2'} 12 1\nmissing 9 2\n")
  videos = predict.find_videos(str(lst), root=str(frame_folders))
  assert videos == [str(frame_folders / "clip1"), str(frame_folders / "clip2"),
                    str(frame_folders / "missing")]


def test_frame_folder_errors(setup, tmp_path):
  """A folder whose image cannot be decoded is reported per video, like a broken video."""
  bad = tmp_path / "bad"
  _write_frames(bad, _frames(40, 40, 3, 1), [f"img_{i:05d}.jpg" for i in range(1, 4)])
  (bad / "img_00002.jpg").write_bytes(b"not a jpeg")
  entries = predict.predict_videos(setup["ckpt"], str(bad), topk=3, progress=False,
                                   verbose=False)
  assert entries[0]["topk"] == []
  assert entries[0]["error"].startswith("cannot read video: unreadable")
  assert "img_00002.jpg" in entries[0]["error"]


# ----------------------------------------------------------------------------- EMA weights
@pytest.fixture(scope="module")
def ema_checkpoint(setup):
  """A checkpoint laid out as training writes it with ``optim.ema_decay > 0``: ``params`` and
  an ``ema`` item of the same structure (here the params perturbed, so the two differ)."""
  import orbax.checkpoint as ocp

  model = setup["model"]
  rng = np.random.default_rng(7)
  values = {k: np.asarray(v) + 0.05 * rng.standard_normal(np.shape(v)).astype(np.float32)
            for k, v in flat_state(model).items()}
  ema_model = create_model(model.cfg, values=values)
  path = setup["root"] / "ema_ckpt"
  pure = lambda m: nnx.to_pure_dict(nnx.state(m, nnx.Param))  # noqa: E731
  with ocp.CheckpointManager(path) as mngr:
    mngr.save(5, args=ocp.args.Composite(
      params=ocp.args.StandardSave(pure(model)), ema=ocp.args.StandardSave(pure(ema_model)),
      config=ocp.args.JsonSave(checkpoint.read_config(setup["ckpt"]))))
    mngr.wait_until_finished()
  return {"path": str(path), "ema_model": ema_model}


def test_use_ema(setup, ema_checkpoint):
  video = str(setup["videos"] / "a.mp4")
  x = np.stack(_views(video, 1, 1))
  run = nnx.jit(lambda m, x: m(x))
  for use_ema, model in ((False, setup["model"]), (True, ema_checkpoint["ema_model"])):
    want = np.asarray(jax.nn.softmax(run(model, x), axis=-1))[0]
    e = predict.predict_videos(ema_checkpoint["path"], video, topk=10, progress=False,
                               verbose=False, use_ema=use_ema)[0]
    got = np.zeros(10)
    for t in e["topk"]:
      got[t["index"]] = t["prob"]
    np.testing.assert_allclose(got, want, atol=PROB_ATOL, err_msg=f"use_ema={use_ema}")
  with pytest.raises(checkpoint.NoEmaError, match="no EMA weights.*--use_ema"):
    predict.extract_features(setup["ckpt"], video, use_ema=True, progress=False,
                             verbose=False)


def test_eval_restores_ema(setup, ema_checkpoint):
  """``--mode eval --use_ema`` path: the run's params become the EMA weights."""
  from uniformerv2_jax import train

  config = _multi_view_config(setup["model"])
  config.batch_size = 2
  run = train.setup(config, train_size=2)
  assert train.restore_params(run, ema_checkpoint["path"], use_ema=True) == 5
  got = {tuple(str(k) for k in p): np.asarray(v)
         for p, v in nnx.to_flat_state(run.state.params)}
  want = flat_state(ema_checkpoint["ema_model"], nnx.Param)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], np.asarray(want[k]), err_msg=str(k))


# ----------------------------------------------------------------------------- label maps
def test_label_maps():
  """Shipped maps: class counts, unique names; each zoo dataset's config picks a map of its
  class count (or none, where no verified list exists)."""
  from uniformerv2_jax import labels, zoo

  counts = {"kinetics400": 400, "kinetics600": 600, "kinetics700": 700, "kinetics710": 710,
            "sthv2": 174, "mit": 339}
  assert set(labels.available()) == set(counts)
  for name, n in counts.items():
    names = labels.read_label_file(labels.resolve(name), n)
    assert len(set(names)) == n, name
  k400 = labels.read_label_file(labels.resolve("kinetics400"))
  k710 = labels.read_label_file(labels.resolve("kinetics710"))
  assert k710[0] == k400[0] == "abseiling" and k710[709] == "bull fighting"
  for e in zoo.ZOO:
    spec = common.DATASETS[e.dataset]["labels"]
    if e.dataset in ("sthv1", "anet", "hacs"):
      assert spec == "", e.name
      continue
    assert len(labels.read_label_file(labels.resolve(spec))) == e.num_classes, e.name
    assert predict.ZOO_LABELS[e.dataset] == spec
  assert predict.LABELS_BY_CLASS_COUNT[710] == "kinetics710"


def test_find_frame_folders(tmp_path):
  """Image files and no videos make a folder one video; folders with videos keep the videos
  (a stray image beside them is not a frame folder); nested frame folders are found."""
  for n in ("a/img_00001.jpg", "a/img_00002.jpg", "b/x.mp4", "b/cover.jpg", "c/d/1.png",
            "c/readme.txt"):
    (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / n).write_bytes(b"1")
  assert predict.find_videos(str(tmp_path)) == [str(tmp_path / "a"), str(tmp_path / "b/x.mp4"),
                                                str(tmp_path / "c/d")]
  assert predict.find_videos(str(tmp_path / "a")) == [str(tmp_path / "a")]
  assert predict.frame_files(str(tmp_path / "a")) == [str(tmp_path / "a/img_00001.jpg"),
                                                      str(tmp_path / "a/img_00002.jpg")]
