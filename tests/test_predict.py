"""Prediction / feature extraction on video files (uniformerv2_jax.predict), end to end.

The tiny K400 fixture is converted to an Orbax checkpoint; a few mp4s of different sizes,
lengths and frame rates (plus a broken file) are predicted, and the results are compared with
the model run directly on views built with the data module. Compiles: one batch shape for
predict, one for extract_all, one for the reference.
"""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from configs import common
from tests.conftest import FIXTURES
from uniformerv2_jax import checkpoint, load_official, predict
from uniformerv2_jax.data import EvalConfig, SamplingConfig, read_clip
from uniformerv2_jax.data.demo_dataset import write_mp4
from uniformerv2_jax.data.transforms import eval_view

# name: (height, width, frames, fps)
VIDEOS = {"a.mp4": (96, 128, 40, 30), "b.mp4": (150, 200, 5, 10), "c.mp4": (128, 96, 17, 10)}
NAMES = [f"class_{i}" for i in range(10)]


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


def _views(path, clips, crops):
  """The test views of one video, built independently with the data module."""
  sampling = SamplingConfig(num_frames=8, mode="sparse", num_clips=clips)
  ev = EvalConfig(crop_size=64, num_spatial_crops=crops, single_crop_index=1)
  clip = read_clip({"kind": "video", "path": path, "label": 0},
                   lambda n: np.concatenate([sampling.test_indices(n, v, clips)
                                             for v in range(clips)]))
  frames = clip.frames.reshape(clips, 8, *clip.frames.shape[1:])
  return [eval_view(frames[v], s, ev) for v in range(clips) for s in range(crops)]


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
    np.testing.assert_allclose(probs, want, atol=2e-6)
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
    np.testing.assert_allclose(z["features"][row], want, atol=2e-5)
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
