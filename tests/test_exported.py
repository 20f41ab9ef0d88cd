"""The eval forward exported with jax.export (``.jax``) and as ONNX (``.onnx``, run by
onnxruntime): each reproduces the official logits of the fixtures at any batch size, carries what
a consumer needs (views, labels, normalisation), and ``predict`` on it equals ``predict`` on the
checkpoint. Bad input is one line before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tests.conftest import FIXTURES, REPO
from uniformerv2_jax import checkpoint, exported, load_exported, load_official, predict
from uniformerv2_jax.data.demo_dataset import write_mp4
from uniformerv2_jax.errors import InputError

# The official float32 logits against a float32 forward traced with the portable op forms:
# measured <= 8e-7 on tiny_k400 and tiny_ssv2 (|logits| <= 2), in XLA and in onnxruntime; 1e-5.
ATOL = 1e-5
SUFFIXES = (".jax", ".onnx")


def _channels_last(x: np.ndarray) -> np.ndarray:
  return x.transpose(0, 2, 3, 4, 1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """The tiny fixtures saved as Orbax checkpoints, and their exports."""
  root = tmp_path_factory.mktemp("exported")
  out = {}
  for name in ("tiny_k400", "tiny_ssv2"):
    model = load_official(FIXTURES / name / "model.pth", FIXTURES / name / "config.json")
    checkpoint.save_model(root / name, model)
    for suffix in SUFFIXES:
      exported.export(str(root / name), str(root / f"{name}{suffix}"))
    out[name] = (root / name, root / name, model)
  return out


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("name", ["tiny_k400", "tiny_ssv2"])
def test_exported_forward_reproduces_the_official_logits(saved, name, suffix):
  _, base, model = saved[name]
  path = base.with_name(base.name + suffix)
  f = load_exported(path)
  x = _channels_last(np.load(FIXTURES / name / "input.npy"))
  want = np.load(FIXTURES / name / "logits.npy")
  got = np.asarray(f(x))
  assert np.abs(got - want).max() < ATOL, np.abs(got - want).max()
  # The batch is symbolic: one example, or several, through the same file.
  np.testing.assert_allclose(np.asarray(f(x[:1])), want[:1], atol=ATOL, rtol=0)
  triple = np.asarray(f(np.concatenate([x, x, x[:1]])))
  np.testing.assert_allclose(triple, np.concatenate([want, want, want[:1]]), atol=ATOL, rtol=0)
  logits, features = f.forward(x)
  _, ours = model(x, train=False, return_features=True)
  np.testing.assert_allclose(np.asarray(features), np.asarray(ours), atol=ATOL, rtol=0)
  meta = f.metadata
  cfg = model.cfg
  assert meta["input"]["shape"] == ["batch", cfg.num_frames, cfg.input_resolution,
                                    cfg.input_resolution, 3]
  assert meta["outputs"] == {"logits": ["batch", cfg.num_classes], "features": ["batch", cfg.n_dim]}
  assert meta["views"]["eval_cfg"]["mean"] == [0.45] * 3
  assert set(meta["platforms"]) == ({"cpu", "cuda", "tpu"} if suffix == ".jax" else {"onnx"})
  if suffix == ".onnx":  # the ONNX graph's own interface, as a consumer sees it
    inputs, outputs = f.session.get_inputs(), f.session.get_outputs()
    assert [(i.name, i.shape[1:]) for i in inputs] == [("video", meta["input"]["shape"][1:])]
    assert isinstance(inputs[0].shape[0], str)  # a dynamic batch axis
    assert [o.name for o in outputs] == ["logits", "features"]


def _frames(h: int, w: int, t: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w]
  grad = np.stack([(xx * (i + 1) + yy * 3) % 256 for i in range(t)])[..., None]
  return np.clip(grad + rng.normal(0, 10, (t, h, w, 3)), 0, 255).astype(np.uint8)


def test_command_line_export_then_predict_on_it_equals_the_checkpoint(saved, tmp_path):
  """``export`` as a user runs it, then predict on the .jax file gives the checkpoint's
  probabilities (the same views, the same labels)."""
  ckpt, _, _ = saved["tiny_k400"]
  videos = tmp_path / "videos"
  videos.mkdir()
  for i, (h, w, t) in enumerate([(72, 96, 20), (80, 64, 11)]):
    write_mp4(str(videos / f"v{i}.mp4"), _frames(h, w, t, i), fps=10)
  out = tmp_path / "m.jax"
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  r = subprocess.run([sys.executable, "-m", "uniformerv2_jax", "export", "--checkpoint",
                      str(ckpt), "--output", str(out)], capture_output=True, text=True,
                     timeout=300, env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"wrote {out}" in r.stdout and "platforms cpu, cuda, tpu" in r.stdout
  kw = dict(topk=3, progress=False, verbose=False)
  from_file = predict.predict_videos(str(out), str(videos), **kw)
  from_ckpt = predict.predict_videos(str(ckpt), str(videos), **kw)
  assert [e["video"] for e in from_file] == [e["video"] for e in from_ckpt]
  for a, b in zip(from_file, from_ckpt, strict=True):
    assert a["error"] is None and [t["label"] for t in a["topk"]] == [t["label"] for t in b["topk"]]
    np.testing.assert_allclose([t["prob"] for t in a["topk"]], [t["prob"] for t in b["topk"]],
                               atol=ATOL, rtol=0)
  onnx = predict.predict_videos(str(ckpt.with_name("tiny_k400.onnx")), str(videos), **kw)
  for a, b in zip(onnx, from_ckpt, strict=True):
    np.testing.assert_allclose([t["prob"] for t in a["topk"]], [t["prob"] for t in b["topk"]],
                               atol=ATOL, rtol=0)


def test_bad_export_input_is_one_clear_error(saved, tmp_path):
  ckpt, path, _ = saved["tiny_k400"]
  with pytest.raises(InputError, match=r"m\.pt: an export is written as a \.jax file .* \.onnx"):
    exported.export(str(ckpt), str(tmp_path / "m.pt"))
  with pytest.raises(InputError, match="no checkpoint|not found|no such"):
    exported.export(str(tmp_path / "nothing"), str(tmp_path / "m.jax"))
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(InputError, match="a_file"):
    exported.export(str(ckpt), str(tmp_path / "a_file" / "m.jax"))
  assert not (tmp_path / "m.jax").exists()
  bad = tmp_path / "bad.jax"
  bad.write_bytes(b"not a zip")
  with pytest.raises(InputError, match="not an exported UniFormerV2 model"):
    load_exported(bad)
  with zipfile.ZipFile(tmp_path / "other.jax", "w") as z:
    z.writestr("metadata.json", json.dumps({"format": "something/9"}))
    z.writestr("forward.stablehlo", b"")
  with pytest.raises(InputError, match="expected 'uniformerv2_jax.exported/1'"):
    load_exported(tmp_path / "other.jax")
  with pytest.raises(InputError, match="exported model: its test views and weights were fixed"):
    predict.prepare(str(path) + ".jax", {"sampling": {"test_clips": 4}})
  (tmp_path / "bad.onnx").write_bytes(b"not onnx")
  with pytest.raises(InputError, match="bad.onnx: not a readable ONNX model"):
    load_exported(tmp_path / "bad.onnx")
