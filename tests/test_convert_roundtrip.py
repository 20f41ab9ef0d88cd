"""Official and MMAction2 checkpoints: import -> Orbax -> export is bit-exact, for the fixtures
and for other configurations."""

from __future__ import annotations

import json
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from tests.conftest import FIXTURES
from tests.util import random_official_state_dict
from uniformerv2_jax import checkpoint_files, convert, load_checkpoint, mapping
from uniformerv2_jax.checkpoint import read_config, save_model
from uniformerv2_jax.checkpoint_files import CheckpointError
from uniformerv2_jax.model import ModelConfig
from uniformerv2_jax.trees import flat_state
from uniformerv2_jax.variants import config_from_official

VIDEO = ["tiny_k400", "tiny_ssv2"]


@nnx.jit
def run(model, x):
  return model(x, train=False)


def channels_last(x):
  return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 4, 1))


def to_orbax(path, directory, cfg=None, fmt=None, **kw):
  imp = convert.import_model(path, cfg, fmt, **kw)
  save_model(directory, imp.model, extra_config={"format": imp.converted.fmt,
                                                 "converted_from": str(path)})
  return imp


def assert_same_torch_state(a: dict, b: dict):
  assert list(a) == list(b)  # keys and order
  for k in b:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name", VIDEO)
def test_official_fixture_round_trip_bit_exact(tmp_path, name):
  d = FIXTURES / name
  to_orbax(d / "model.pth", tmp_path / "ckpt", config_from_official(d / "config.json"))
  assert read_config(tmp_path / "ckpt")["format"] == "official"
  model = load_checkpoint(tmp_path / "ckpt")
  sd = convert.export_state(model)
  convert.write_state(tmp_path / "out.pyth", sd, model.cfg, "official")
  want = torch.load(d / "model.pth", weights_only=True)
  got = torch.load(tmp_path / "out.pyth", weights_only=True)
  assert isinstance(got, OrderedDict)
  assert_same_torch_state(got, want)
  nbt = [k for k in want if k.endswith("num_batches_tracked")]
  assert all(got[k].dtype == torch.int64 and got[k].ndim == 0 for k in nbt)
  # safetensors: same tensors (safetensors has no order), and it carries the config.
  convert.write_state(tmp_path / "out.safetensors", sd, model.cfg, "official")
  src = checkpoint_files.read_source(tmp_path / "out.safetensors")
  assert set(src.tensors) == set(want)
  for k, v in want.items():
    assert src.tensors[k].dtype == v.numpy().dtype and src.tensors[k].shape == tuple(v.shape)
    np.testing.assert_array_equal(src.tensors[k], v.numpy(), err_msg=k)
  assert convert.import_model(tmp_path / "out.safetensors").cfg == model.cfg


@pytest.mark.parametrize("name", VIDEO)
def test_mmaction2_fixture_imports_and_exports_back(tmp_path, name):
  d = FIXTURES / f"{name}_mmaction2"
  imp = to_orbax(d / "model.pth", tmp_path / "ckpt")  # config read from the checkpoint's meta
  assert imp.converted.fmt == "mmaction2" and imp.converted.renamed == 4
  assert imp.cfg == config_from_official(FIXTURES / name / "config.json")
  model = load_checkpoint(tmp_path / "ckpt")
  logits = run(model, channels_last(np.load(FIXTURES / name / "input.npy")))
  np.testing.assert_allclose(logits, np.load(d / "logits.npy"), atol=1e-4, rtol=1e-4)
  convert.write_state(tmp_path / "mm.pth", convert.export_state(model, "mmaction2"), model.cfg,
                      "mmaction2")
  got = torch.load(tmp_path / "mm.pth", weights_only=True)
  want = torch.load(d / "model.pth", weights_only=True)
  assert set(got) == {"meta", "state_dict"}
  assert all(isinstance(v, (str, int)) for v in got["meta"].values())
  assert_same_torch_state(got["state_dict"], want["state_dict"])
  assert list(got["state_dict"]) == list(json.loads((d / "mapping.json").read_text())["keys"]
                                         .values())
  # The exported meta describes the model again.
  assert mapping.config_from_mmaction2(mapping.mmaction2_model_dict(got["meta"])) == model.cfg


def test_mmaction2_backbone_only_needs_allow_missing(tmp_path):
  d = FIXTURES / "tiny_k400_mmaction2"
  sd = torch.load(d / "model.pth", weights_only=True)["state_dict"]
  backbone = OrderedDict((k[len("backbone."):], v) for k, v in sd.items()
                         if k.startswith("backbone."))
  path = tmp_path / "backbone.pth"
  torch.save(backbone, path)
  cfg = config_from_official(FIXTURES / "tiny_k400" / "config.json")
  with pytest.raises(CheckpointError, match=r"2 missing key.*\n.*proj\.2\.weight"):
    convert.import_model(path, cfg, "mmaction2")
  imp = convert.import_model(path, cfg, "mmaction2", allow_missing=True)
  assert imp.kept_at_init == ["transformer.proj.2.weight", "transformer.proj.2.bias"]


OTHER = {
  "frozen_single_lmhra": dict(
    num_classes=7, num_frames=6, input_resolution=40, patch_size=8, width=32, layers=3, heads=2,
    temporal_downsample=True, no_lmhra=False, double_lmhra=False, dw_reduction=2.5,
    return_list=(0, 2), n_layers=2, n_dim=32, n_head=4, mlp_factor=1.5,
    mlp_dropout=(0.5, 0.5), frozen=True),
  "double_lmhra_all_returned": dict(
    num_classes=4, num_frames=4, input_resolution=24, patch_size=4, width=40, layers=4, heads=4,
    temporal_downsample=True, no_lmhra=False, double_lmhra=True, dw_reduction=1.5,
    return_list=(3, 0, 1, 2), n_layers=4, n_dim=40, n_head=5, mlp_factor=4.0,
    mlp_dropout=(0.5,) * 4),
}


@pytest.mark.parametrize("which", sorted(OTHER))
def test_any_config_round_trips_through_both_layouts(tmp_path, which):
  cfg = ModelConfig(**OTHER[which])
  sd = OrderedDict(("backbone." + k, torch.from_numpy(v)) for k, v in
                   random_official_state_dict(cfg, seed=3).items())
  torch.save(sd, tmp_path / "src.pth")
  to_orbax(tmp_path / "src.pth", tmp_path / "ckpt", cfg)
  model = load_checkpoint(tmp_path / "ckpt")
  convert.write_state(tmp_path / "out.pth", convert.export_state(model), cfg, "official")
  assert_same_torch_state(torch.load(tmp_path / "out.pth", weights_only=True), sd)
  # -> MMAction2 layout -> import -> official again: bit-exact.
  convert.write_state(tmp_path / "mm.pth", convert.export_state(model, "mmaction2"), cfg,
                      "mmaction2")
  mm = torch.load(tmp_path / "mm.pth", weights_only=True)["state_dict"]
  assert ("backbone.transformer.balance" in mm) and "cls_head.fc_cls.weight" in mm
  if cfg.frozen:
    assert torch.all(mm["backbone.transformer.balance"] == -1e4)
  back = convert.import_model(tmp_path / "mm.pth")  # config from the exported meta
  assert back.cfg == cfg
  again = convert.export_state(back.model)
  assert list(again) == list(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(again[k], v.numpy(), err_msg=k)
    assert again[k].dtype == v.numpy().dtype, k


def test_frozen_emulation_exact_and_real_balance_refused(tmp_path):
  cfg = ModelConfig(**OTHER["frozen_single_lmhra"])
  sd = random_official_state_dict(cfg, seed=4)
  model = mapping.model_from_flax(mapping.flax_from_torch(sd, cfg), cfg)
  mm = mapping.mmaction2_from_official(mapping.torch_from_flax(flat_state(model), cfg), cfg)
  # The -1e4 balance makes the non-frozen model compute the frozen one (sigmoid is exactly 0;
  # the two compiled programs may still round the rest differently, ~1e-7).
  open_cfg = cfg.replace(frozen=False)
  unfrozen = mapping.model_from_flax(mapping.flax_from_torch(
    mapping.strip_prefix(mapping.official_from_mmaction2(mm, open_cfg)[0]), open_cfg), open_cfg)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 40, 40, 3)), jnp.float32)
  w = jax.nn.sigmoid(flat_state(unfrozen)[("balance",)])
  assert np.all(np.asarray(w) == 0)
  np.testing.assert_allclose(run(unfrozen, x), run(model, x), atol=1e-5, rtol=1e-5)
  mm["backbone.transformer.balance"] = mm["backbone.transformer.balance"].copy()
  mm["backbone.transformer.balance"][0] = -3.0
  with pytest.raises(CheckpointError, match="FROZEN .* balance"):
    mapping.official_from_mmaction2(mm, cfg)
