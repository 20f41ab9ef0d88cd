"""Image towers other than CLIP (supervised / augreg ViT, DeiT, MAE, DINOv2 from timm; Hugging Face
ViTModel): converted, the video model's backbone on a clip of identical frames computes what the
tower's own library computes; the wrong family is refused or computes something else.

References: ``tests/fixtures/towers`` (made by timm itself with ``make_towers.py`` there: timm
does not import beside the test environment's torch) and transformers' ViTModel run here.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tests.conftest import FIXTURES
from uniformerv2_jax import convert, mapping, towers
from uniformerv2_jax.checkpoint_files import CheckpointError
from uniformerv2_jax.model import ModelConfig, create_model

TOWERS = FIXTURES / "towers"
# float32 against float32 in another library: the same sums in another order. Measured up to
# 1.5e-6 on tokens of magnitude <= 8 (see the assertion messages); a wrong tower option moves
# them by 1e-3 or more.
ATOL = 1e-5
FAMILIES = ("supervised", "deit", "mae", "dinov2")


def video_cfg(width=32, layers=2, heads=2, patch=16, size=32, **kw) -> ModelConfig:
  """A tiny video model around a tower: LMHRA on (its zero-initialised branches must stay exact
  identities), 3 frames, the global block on the last layer."""
  base = dict(num_classes=5, num_frames=3, input_resolution=size, patch_size=patch, width=width,
              layers=layers, heads=heads, temporal_downsample=False, no_lmhra=False,
              return_list=(layers - 1,), n_layers=1, n_dim=width, n_head=heads,
              mlp_dropout=(0.5,))
  return ModelConfig(**{**base, **kw})


def reference(family: str) -> dict[str, np.ndarray]:
  with np.load(TOWERS / family / "reference.npz") as z:
    return {k: z[k] for k in z.files}


def fixture_cfg(family: str) -> ModelConfig:
  patch, size = (14, 42) if family == "dinov2" else (16, 32)
  return video_cfg(patch=patch, size=size)


def backbone_blocks(model, image: np.ndarray, frames: int = 3) -> list[np.ndarray]:
  """Every backbone block's tokens ``[T, L, C]`` for a clip of ``frames`` copies of ``image``
  ([1, 3, S, S], channels first as the tower takes it)."""
  clip = np.repeat(image.transpose(0, 2, 3, 1)[:, None], frames, axis=1)
  _, inter = model(clip, train=False, return_intermediates=True)
  return [np.asarray(inter[f"block_{i:02d}"])[0] for i in range(model.cfg.layers)]


def assert_matches(blocks: list[np.ndarray], ref: dict[str, np.ndarray]):
  for i, got in enumerate(blocks):
    want = ref[f"block_{i}"][0]
    for t in range(got.shape[0]):
      err = np.abs(got[t] - want).max()
      assert err < ATOL, f"block {i} frame {t}: max |diff| {err:.2e} (|x| <= {abs(want).max():.1f})"


@pytest.mark.parametrize("family", FAMILIES)
def test_timm_tower_computes_what_timm_computes(family):
  """Converted from the folder timm writes (config.json + model.safetensors), every block of the
  video backbone equals the timm tower's block at the video resolution, each frame; the tower's
  options come from its family, and the positional embedding is resized as timm resizes it."""
  imp = convert.import_model(TOWERS / family, fixture_cfg(family))
  assert imp.tower.family == family and imp.converted.fmt == "timm"
  want = towers.TIMM_VIT_OPTIONS
  cfg = imp.cfg
  assert (cfg.activation, cfg.patch_bias, cfg.ln_pre, cfg.layer_norm_eps) == (
    "gelu", want["patch_bias"], want["ln_pre"], want["eps"])
  assert cfg.layer_scale == (family == "dinov2")
  if family in ("mae", "dinov2"):  # stored at 48 / 70 px, used at 32 / 42 px
    assert imp.converted.resized and "antialiased" in imp.converted.resized[0]
  assert_matches(backbone_blocks(imp.model, reference(family)["image"]), reference(family))


def test_official_mae_layout_needs_the_family_named(tmp_path):
  """The official MAE release's ``{"model": ...}`` file records no family: refused with one
  line that names the option; with ``--timm-model`` it converts to the same numbers."""
  path = TOWERS / "mae_official" / "mae_pretrain.pth"
  with pytest.raises(CheckpointError, match=r"do not tell its family.*--timm-model NAME"):
    convert.import_model(path, fixture_cfg("mae"))
  imp = convert.import_model(path, fixture_cfg("mae"), timm_model="vit_base_patch16_224.mae")
  assert imp.tower.family == "mae"
  assert_matches(backbone_blocks(imp.model, reference("mae")["image"]), reference("mae"))


def bare_copy(family: str, tmp_path) -> str:
  """The tower's weights without the config.json beside them."""
  dst = tmp_path / f"{family}.safetensors"
  shutil.copy(TOWERS / family / "model.safetensors", dst)
  return dst


def test_the_wrong_family_is_refused(tmp_path):
  cfg = fixture_cfg("dinov2")
  # Contradicting the config.json that timm wrote.
  with pytest.raises(CheckpointError, match="contradicts the timm config.json"):
    convert.import_model(TOWERS / "dinov2", cfg, timm_model="vit_base_patch16_224")
  # Named wrongly for bare weights: what the keys show disagrees with the family.
  with pytest.raises(CheckpointError, match="not a supervised tower.*layer_scale"):
    convert.import_model(bare_copy("dinov2", tmp_path), cfg, timm_model="vit_base_patch16_224")
  with pytest.raises(CheckpointError, match="not a dinov2 tower.*layer_scale"):
    convert.import_model(bare_copy("deit", tmp_path), fixture_cfg("deit"),
                         timm_model="vit_base_patch14_dinov2")
  with pytest.raises(CheckpointError, match="not a clip tower.*ln_pre"):
    convert.import_model(bare_copy("deit", tmp_path), fixture_cfg("deit"),
                         timm_model="vit_base_patch16_clip_224.laion2b")
  # DINOv2 bare weights are told by their layer scale; CLIP's activation flag does not apply.
  imp = convert.import_model(bare_copy("dinov2", tmp_path), cfg)
  assert imp.tower.family == "dinov2"
  with pytest.raises(CheckpointError, match="--clip-activation applies to CLIP towers"):
    convert.import_model(bare_copy("dinov2", tmp_path), cfg, clip_activation="gelu")


@pytest.mark.parametrize("family,option,value", [
  ("supervised", "layer_norm_eps", 1e-5),  # measured 8.0e-5 (CLIP's eps instead of timm's)
  ("supervised", "activation", "quick_gelu"),  # 7.7e-4
  ("dinov2", "layer_scale", False),  # 0.63 (the stored gains dropped)
])
def test_a_wrong_tower_option_computes_something_else(family, option, value):
  """The options matter: the same weights run with one option changed miss the reference by
  several times the tolerance, even in these tiny towers (at full size: benchmarks/RESULTS.md)."""
  imp = convert.import_model(TOWERS / family, fixture_cfg(family))
  flat = {p: v for p, v in imp.flat.items() if not (value is False and p[-1].startswith("ls_"))}
  wrong = create_model(imp.cfg.replace(**{option: value}), values=flat)
  ref = reference(family)
  got = backbone_blocks(wrong, ref["image"])
  err = max(np.abs(g[0] - ref[f"block_{i}"][0]).max() for i, g in enumerate(got))
  assert err > 5 * ATOL, f"{option}={value}: max |diff| only {err:.2e}"


@pytest.mark.parametrize("token,name", [("dist_token", "deit_base_distilled_patch16_224"),
                                        ("reg_token", "vit_base_patch14_reg4_dinov2")])
def test_extra_tokens_are_refused(token, name, tmp_path):
  from safetensors.numpy import load_file, save_file

  sd = load_file(TOWERS / "deit" / "model.safetensors")
  sd[token] = np.zeros((1, 1, 32), np.float32)
  path = tmp_path / "extra.safetensors"
  save_file(sd, path)
  with pytest.raises(CheckpointError, match=f"has a {token}"):
    convert.import_model(path, fixture_cfg("deit"), timm_model="deit_base_patch16_224")
  with pytest.raises(CheckpointError, match=f"timm model {name}: .*instead"):
    towers.timm_family(name)


def test_unsupported_timm_model_names_the_supported_ones():
  with pytest.raises(CheckpointError, match="not a supported image tower.*deit_base_patch16_224"):
    towers.timm_family("vit_base_patch16_siglip_224")
  assert towers.timm_family("vit_large_patch16_224.augreg_in21k") == "supervised"
  assert towers.timm_family("vit_base_patch16_224.mae") == "mae"
  assert towers.timm_family("vit_base_patch16_clip_224.openai") == "clip"


def test_geometry_mismatch_names_the_field():
  with pytest.raises(CheckpointError, match=r"width: tower 32, config 64.*--config\.model"):
    convert.import_model(TOWERS / "deit", video_cfg(width=64))
  with pytest.raises(CheckpointError, match=r"patch_size: tower 14, config 16"):
    convert.import_model(TOWERS / "dinov2", video_cfg(size=48))
  with pytest.raises(CheckpointError, match=r"heads: tower 2, config 4"):
    convert.import_model(TOWERS / "deit", video_cfg(heads=4))


@pytest.mark.parametrize("n_in,n_out", [(37, 16), (5, 3), (3, 2), (4, 7), (6, 6)])
def test_antialiased_resize_is_torchs(n_in, n_out):
  """The resize timm applies (torch interpolate, bicubic, antialias=True), in float64."""
  x = np.random.default_rng(n_in * 10 + n_out).standard_normal((n_in, n_in, 3))
  want = torch.nn.functional.interpolate(torch.tensor(x).permute(2, 0, 1)[None], (n_out, n_out),
                                         mode="bicubic", antialias=True, align_corners=False)
  m = mapping.antialiased_bicubic_matrix(n_in, n_out)
  got = np.einsum("ij,jkc,lk->ilc", m, x, m)
  np.testing.assert_allclose(got, want[0].permute(1, 2, 0).numpy(), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- Hugging Face ViT
@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
  """A random transformers ViTModel (in21k layout: eps 1e-12, exact GELU, pooler) saved with
  save_pretrained, and its hidden states for one image."""
  from transformers import ViTConfig, ViTModel

  torch.manual_seed(0)
  model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=128, image_size=32, patch_size=16)).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  folder = tmp_path_factory.mktemp("hf_vit")
  model.save_pretrained(folder)
  image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    hidden = model(image, output_hidden_states=True).hidden_states
  ref = {"image": image.numpy(), **{f"block_{i}": h.numpy() for i, h in enumerate(hidden[1:])}}
  return folder, ref


def test_hf_vit_computes_what_transformers_computes(hf_vit):
  folder, ref = hf_vit
  imp = convert.import_model(folder, video_cfg())
  assert imp.converted.fmt == "hf_vit" and imp.tower.family == "hf_vit"
  assert (imp.cfg.layer_norm_eps, imp.cfg.activation, imp.cfg.ln_pre) == (1e-12, "gelu", False)
  assert any(k.startswith("pooler.") for k in imp.converted.ignored)
  assert_matches(backbone_blocks(imp.model, ref["image"]), ref)


def test_hf_vit_weights_without_their_config_are_refused(hf_vit, tmp_path):
  folder, _ = hf_vit
  shutil.copy(folder / "model.safetensors", tmp_path / "vit.safetensors")
  with pytest.raises(CheckpointError, match="without their config.json"):
    convert.import_model(tmp_path / "vit.safetensors", video_cfg())


def test_a_tower_model_round_trips_where_its_options_survive(tmp_path):
  """Exported, a DINOv2-tower model keeps its patch bias and layer scale and its options (the
  .safetensors metadata); formats that cannot record them are refused naming the options."""
  from uniformerv2_jax.trees import flat_state

  imp = convert.import_model(TOWERS / "dinov2", fixture_cfg("dinov2"))
  sd = convert.export_state(imp.model)
  assert "backbone.conv1.bias" in sd and "backbone.transformer.resblocks.1.ls_2.gamma" in sd
  with pytest.raises(CheckpointError, match=r"patch_bias True.*layer_scale True.*\.safetensors"):
    convert.write_state(tmp_path / "m.pth", sd, imp.cfg, "official")
  convert.write_state(tmp_path / "m.safetensors", sd, imp.cfg, "official")
  back = convert.import_model(tmp_path / "m.safetensors")
  assert back.cfg == imp.cfg
  a, b = flat_state(imp.model), flat_state(back.model)
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- converter and runs
def test_converter_reads_the_family_flag_and_model_overrides(tmp_path, capsys):
  """The command line: ``--timm-model`` for a bare file, ``--config.model.*`` overrides like
  main.py's, and the flags a run needs printed after the conversion."""
  from uniformerv2_jax import convert_cli
  from uniformerv2_jax.checkpoint import load_checkpoint

  args = ["--input", str(TOWERS / "mae_official" / "mae_pretrain.pth"), "--config", "demo",
          "--config.model.width=32", "--config.model.layers=2", "--config.model.patch_size=16",
          "--config.model.return_list=(1,)", "--config.model.n_layers=1",
          "--config.model.n_dim=32", "--config.model.mlp_dropout=(0.0,)"]
  assert convert_cli.main([*args, "--output", str(tmp_path / "a")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "--timm-model NAME" in err and "\n" not in err
  assert convert_cli.main([*args, "--output", str(tmp_path / "mae"),
                           "--timm-model", "vit_base_patch16_224.mae"]) == 0
  out = capsys.readouterr().out
  assert "tower: mae (activation gelu, patch_bias True, ln_pre False" in out
  assert ("--config.model.activation=gelu --config.model.patch_bias=True "
          "--config.model.ln_pre=False --config.model.layer_norm_eps=1e-06") in out
  cfg = load_checkpoint(tmp_path / "mae").cfg
  assert (cfg.width, cfg.layers, cfg.patch_size, cfg.layer_norm_eps) == (32, 2, 16, 1e-6)
  assert convert_cli.main([*args, "--output", str(tmp_path / "b"), "--config.model.depth=3"]) == 2
  assert "--config.model.depth: no such model field" in capsys.readouterr().err


def test_training_from_a_converted_timm_tower(tmp_path):
  """The demo recipe starts from a supervised tower that timm built at the demo backbone's size:
  a config that contradicts the tower is refused naming each field; with the tower's options
  the weights load and the loss falls."""
  from uniformerv2_jax import convert_cli, train
  from uniformerv2_jax.config_files import load_config_file
  from uniformerv2_jax.data import demo_dataset
  from uniformerv2_jax.errors import InputError

  tower = tmp_path / "tower"
  assert convert_cli.main(["--input", str(TOWERS / "demo_supervised"), "--output", str(tower),
                           "--config", "demo"]) == 0
  config = load_config_file("demo")
  config.dataset.root = demo_dataset.generate(str(tmp_path / "demo"), seed=0, train_per_class=4,
                                              val_per_class=1)
  config.init_from = str(tower)
  with pytest.raises(InputError, match=r"patch_bias: checkpoint True, config False.*"
                                       r"--config.model.layer_norm_eps=1e-06"):
    train.initial_model(config, train.model_config(config))
  config.model.update(dict(activation="gelu", patch_bias=True, ln_pre=False, layer_norm_eps=1e-6))
  config.total_steps = 40
  config.batch_size = config.eval_batch_size = 8
  config.optim.warmup_epochs = 0.2
  config.log_every_steps, config.eval_every_steps = 1, 40
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  import json

  losses = [json.loads(line)["loss"] for line in open(workdir / "metrics.jsonl")
            if json.loads(line)["kind"] == "train"]
  assert len(losses) == 40
  assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.1, losses
