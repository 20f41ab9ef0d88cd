"""CLIP towers trained with exact GELU (open_clip's LAION ViT-B-16, timm ``vit_*_clip_*``) convert
with ``activation="gelu"`` and then compute what their own library computes; the activation
travels in the checkpoint's config; a source that does not record it must be told."""

from __future__ import annotations

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.conftest import FIXTURES, REPO
from tests.test_convert_clip import _randomise, _video_cfg, run
from uniformerv2_jax import checkpoint as ckpt_lib
from uniformerv2_jax import convert
from uniformerv2_jax import convert_cli as cli
from uniformerv2_jax.checkpoint import config_from_json, config_to_json, load_checkpoint
from uniformerv2_jax.checkpoint_files import CheckpointError
from uniformerv2_jax.model import ModelConfig, create_model
from uniformerv2_jax.variants import config_from_official, official_from_config

GELU_DIMS = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=2, image_size=32, patch_size=8, hidden_act="gelu",
                 layer_norm_eps=1e-5)
# Two float32 implementations of the same 2 blocks differ by summation
# order only: measured 2.9e-5 on entries up to 34 (~1e-6 relative); 1e-4 leaves room for
# other BLAS builds. With the wrong activation: 0.18 (class token 0.12).
ATOL = RTOL = 1e-4


@pytest.fixture(scope="module")
def gelu_folder(tmp_path_factory):
  """A random CLIPVisionModel with exact GELU saved with save_pretrained, and its own forward."""
  from transformers import CLIPVisionConfig, CLIPVisionModel

  torch.manual_seed(0)
  model = CLIPVisionModel(CLIPVisionConfig(**GELU_DIMS)).eval()
  _randomise(model, 3)
  folder = tmp_path_factory.mktemp("hf_gelu")
  model.save_pretrained(folder)
  image = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(image), output_hidden_states=True)
  return folder, image, out.hidden_states[-1].numpy()  # last block's tokens, before ln_post


def _last_block_tokens(model, image):
  x = jnp.asarray(image.transpose(0, 2, 3, 1)[:, None])  # a 1-frame video [B, 1, H, W, 3]
  _, inter = run(model, x, return_intermediates=True)
  return np.asarray(inter[f"block_{model.cfg.layers - 1:02d}"])[:, 0]  # [B, L, C]


@pytest.fixture(scope="module")
def converted(gelu_folder, tmp_path_factory):
  """The folder through the command line (in-process), as an Orbax checkpoint."""
  folder, _, _ = gelu_folder
  out = tmp_path_factory.mktemp("ckpt") / "gelu"
  cfg = tmp_path_factory.mktemp("cfg") / "official.json"
  cfg.write_text(json.dumps(official_from_config(_video_cfg())))
  assert cli.main(["-i", str(folder), "-o", str(out), "--official-config", str(cfg)]) == 0
  return out, cfg


def test_gelu_tower_matches_transformers(gelu_folder, converted):
  _, image, want = gelu_folder
  model = load_checkpoint(converted[0])
  assert model.cfg.activation == "gelu"  # from config.json's hidden_act, carried by the ckpt
  got = _last_block_tokens(model, image)
  np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)
  # The same weights run with QuickGELU (what every conversion did before the option) are
  # measurably off: the activation is what this test checks, not only the weights.
  wrong = _last_block_tokens(load_checkpoint(converted[0], activation="quick_gelu"), image)
  assert np.abs(wrong - want).max() > 50 * ATOL


def test_contradicting_flag_is_refused(gelu_folder, tmp_path, capsys):
  folder, _, _ = gelu_folder
  cfg = tmp_path / "official.json"
  cfg.write_text(json.dumps(official_from_config(_video_cfg())))
  rc = cli.main(["-i", str(folder), "-o", str(tmp_path / "out"), "--official-config", str(cfg),
                 "--clip-activation", "quick_gelu"])
  err = capsys.readouterr().err
  assert rc == 2 and err.count("\n") == 1, err
  assert "--clip-activation quick_gelu contradicts the source" in err
  assert "hidden_act='gelu'" in err
  assert not (tmp_path / "out").exists()
  # Agreeing with the folder is accepted.
  assert convert.import_model(folder, _video_cfg(), clip_activation="gelu").cfg.activation == "gelu"


def test_ambiguous_source_without_flag_is_one_clear_error(tmp_path):
  """A bare OpenAI-layout state dict (OpenAI's QuickGELU weights and open_clip's GELU ones
  look the same): the command line stops with one line naming the flag, and writes nothing."""
  clip = FIXTURES / "tiny_clip"
  out = subprocess.run(
    [sys.executable, str(REPO / "convert_torch_weights.py"), "--input", str(clip / "clip.pth"),
     "--output", str(tmp_path / "ckpt"), "--official-config", str(clip / "config.json")],
    capture_output=True, text=True, cwd=REPO, timeout=300)
  assert out.returncode == 2, out.stdout + out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
  assert "--clip-activation quick_gelu" in lines[0] and "--clip-activation gelu" in lines[0]
  assert "Traceback" not in out.stderr and not (tmp_path / "ckpt").exists()


# ----------------------------------------------------------------------------- the config
def test_activation_option_is_validated():
  with pytest.raises(ValueError, match=r"activation 'relu' not in \('quick_gelu', 'gelu'\)"):
    ModelConfig(activation="relu")
  assert ModelConfig().activation == "quick_gelu"


def test_activation_round_trips_and_old_configs_are_quick_gelu():
  cfg = _video_cfg(activation="gelu")
  assert config_from_json(config_to_json(cfg)) == cfg
  old = config_to_json(_video_cfg())
  del old["activation"]  # written before the option existed
  assert config_from_json(old).activation == "quick_gelu"
  assert config_from_official(official_from_config(cfg)) == cfg
  assert "activation" not in official_from_config(_video_cfg())["backbone_arch"]


def test_activation_is_a_run_config_field():
  from uniformerv2_jax import train
  from uniformerv2_jax.configs.common import from_zoo

  config = from_zoo("k400", "b16_8x224")
  assert config.model.activation == "quick_gelu"
  config.model.activation = "gelu"  # what --config.model.activation=gelu sets
  assert train.model_config(config).activation == "gelu"
  src = _video_cfg(activation="gelu")
  with pytest.raises(ValueError, match="--config.model.activation=gelu"):
    ckpt_lib.check_init_tower(src, _video_cfg(), "ckpt/laion")
  ckpt_lib.check_init_tower(src, src, "ckpt/laion")


def test_gelu_model_exports_only_where_the_activation_survives(tmp_path):
  model = create_model(_video_cfg(activation="gelu"))
  sd = convert.export_state(model)
  for name, fmt in (("m.pyth", "official"), ("m.npz", "official"), ("mm.pth", "mmaction2")):
    with pytest.raises(CheckpointError, match="activation gelu.*official-layout .safetensors"):
      convert.write_state(tmp_path / name, sd, model.cfg, fmt)
  convert.write_state(tmp_path / "m.safetensors", sd, model.cfg, "official")
  back = convert.import_model(tmp_path / "m.safetensors")
  assert back.cfg.activation == "gelu"
  # A config that disagrees with the one the file carries is refused.
  with pytest.raises(CheckpointError,
                     match="image tower differs.*activation: checkpoint gelu, config quick_gelu"):
    convert.import_model(tmp_path / "m.safetensors", _video_cfg())
  # An official checkpoint (QuickGELU by construction) with a gelu config: refused too.
  k400 = FIXTURES / "tiny_k400"
  with pytest.raises(CheckpointError, match="hard-code OpenAI CLIP"):
    convert.import_model(k400 / "model.npz",
                   config_from_official(k400 / "config.json", activation="gelu"))


def test_training_from_a_gelu_tower_needs_the_gelu_config(converted):
  """``init_from`` a converted GELU tower: a run configured with QuickGELU is refused before
  any step (it would silently compute other features); with ``gelu`` the weights load."""
  from uniformerv2_jax import train
  from uniformerv2_jax.configs.common import base_config, model_config_dict
  from uniformerv2_jax.model import count_params

  src = load_checkpoint(converted[0]).cfg
  config = base_config()
  config.model = model_config_dict(src.replace(activation="quick_gelu"))
  config.init_from = str(converted[0])
  with pytest.raises(ValueError, match="its image tower differs.*activation: checkpoint gelu.*"
                                       "--config.model.activation=gelu"):
    train.initial_model(config, train.model_config(config))
  config.model.activation = "gelu"
  model = train.initial_model(config, train.model_config(config))
  assert model.cfg.activation == "gelu" and count_params(model) > 0
