"""CLIP-like sources (OpenAI CLIP state dict / extraction / TorchScript archive, Hugging Face,
timm) initialise the backbone exactly as the official loader does.

The tiny CLIP fixture was written by OpenAI's CLIP code (QuickGELU); as a bare state dict it does
not record that, so its imports state ``clip_activation="quick_gelu"``."""

from __future__ import annotations

import json
import pickle
import zipfile
from collections import OrderedDict

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from tests.conftest import FIXTURES
from uniformerv2_jax import checkpoint_files, convert, mapping, towers
from uniformerv2_jax.checkpoint_files import CheckpointError
from uniformerv2_jax.model import ModelConfig
from uniformerv2_jax.trees import flat_state
from uniformerv2_jax.variants import config_from_official

CLIP = FIXTURES / "tiny_clip"
QUICK = dict(clip_activation="quick_gelu")  # the fixture's own activation (OpenAI CLIP code)


@nnx.jit(static_argnames=("return_intermediates",))
def run(model, x, return_intermediates=False):
  return model(x, train=False, return_intermediates=return_intermediates)


def channels_last(x):
  return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 4, 1))


@pytest.fixture(scope="module")
def clip_cfg():
  return config_from_official(CLIP / "config.json")


@pytest.fixture(scope="module")
def expected():
  return mapping.strip_prefix(checkpoint_files.read_checkpoint(CLIP / "expected_model_state.npz"))


@pytest.fixture(scope="module")
def clip_pth_import(clip_cfg):
  return convert.import_model(CLIP / "clip.pth", clip_cfg, **QUICK)


def _assert_clip_tensors_exact(state, expected):
  mapped = json.loads((CLIP / "config.json").read_text())["mapping"]
  assert sorted(state) == sorted(k[len("backbone."):] for k in mapped)
  for k, v in state.items():
    assert v.dtype == np.float32 and v.dtype == expected[k].dtype, k
    np.testing.assert_array_equal(v, expected[k], err_msg=k)


@pytest.mark.parametrize("name", ["clip.pth", "clip.npz"])
def test_clip_reproduces_official_loading_bit_exactly(name, clip_cfg, expected):
  imp = convert.import_model(CLIP / name, clip_cfg, **QUICK)
  assert imp.converted.fmt == "clip" and imp.cfg.activation == "quick_gelu"
  assert len(imp.converted.state) == 29
  _assert_clip_tensors_exact(imp.converted.state, expected)
  ignored = json.loads((CLIP / "config.json").read_text())["clip_keys_ignored"]
  assert sorted(imp.converted.ignored) == sorted(ignored)


def test_clip_forward_with_other_tensors_from_expected(clip_pth_import, expected, clip_cfg):
  full = dict(expected)
  full.update(clip_pth_import.converted.state)
  model = mapping.model_from_flax(mapping.flax_from_torch(full, clip_cfg), clip_cfg)
  logits = run(model, channels_last(np.load(CLIP / "video_input.npy")))
  np.testing.assert_allclose(logits, np.load(CLIP / "video_logits.npy"), atol=1e-4, rtol=1e-4)


def test_kernel_for_temporal_kernel_1(clip_cfg):
  cfg = clip_cfg.replace(temporal_downsample=False)
  imp = convert.import_model(CLIP / "clip.npz", cfg, **QUICK)
  want = np.load(CLIP / "extra_expected.npz")["conv1_weight_temporal_kernel_1"]
  np.testing.assert_array_equal(imp.converted.state["conv1.weight"], want)
  assert imp.converted.state["conv1.weight"].dtype == np.float32


def test_visual_extraction_form_gives_the_same(tmp_path, clip_cfg, clip_pth_import):
  sd = torch.load(CLIP / "clip.pth", weights_only=True)
  visual = OrderedDict((k[len("visual."):], v) for k, v in sd.items() if k.startswith("visual."))
  path = tmp_path / "vit_tiny.pth"
  torch.save(visual, path)
  imp = convert.import_model(path, clip_cfg, **QUICK)
  assert imp.converted.fmt == "clip"
  assert sorted(imp.converted.ignored) == ["ln_post.bias", "ln_post.weight", "proj"]
  for k, v in clip_pth_import.converted.state.items():
    np.testing.assert_array_equal(imp.converted.state[k], v, err_msg=k)


def test_clip_initialised_model_keeps_identities_and_is_clip_on_frames(clip_pth_import):
  """Spec section 4: at step 0 the model outputs head(0.5 * mean of last-block class tokens);
  and the backbone is CLIP on frames (LMHRA identities): on a clip of one repeated image the
  last block's class token, through CLIP's ln_post and proj, gives CLIP's image features."""
  model, cfg = clip_pth_import.model, clip_pth_import.cfg
  image = np.load(CLIP / "image.npy")  # [B, 3, H, W]
  x = np.repeat(image[:, :, None], cfg.num_frames, axis=2)
  logits, inter = run(model, channels_last(x), return_intermediates=True)
  last = np.asarray(inter[f"block_{cfg.layers - 1:02d}"])[:, :, 0]  # [B, T', C]
  fused = 0.5 * last.mean(axis=1)
  np.testing.assert_allclose(inter["fused"], fused, atol=1e-5, rtol=1e-5)
  flat = flat_state(model)
  mu, var = fused.mean(-1, keepdims=True), fused.var(-1, keepdims=True)
  h = (fused - mu) / np.sqrt(var + 1e-5) * flat[("head_norm", "scale")] + flat[
    ("head_norm", "bias")]
  want = h @ np.asarray(flat[("head", "kernel")]) + np.asarray(flat[("head", "bias")])
  np.testing.assert_allclose(logits, want, atol=1e-4, rtol=1e-4)
  clip = np.load(CLIP / "clip.npz")
  tok = last[:, 0].astype(np.float64)
  tok = (tok - tok.mean(-1, keepdims=True)) / np.sqrt(tok.var(-1, keepdims=True) + 1e-5)
  tok = tok * clip["visual.ln_post.weight"] + clip["visual.ln_post.bias"]
  feats = tok @ clip["visual.proj"].astype(np.float64)
  np.testing.assert_allclose(feats, np.load(CLIP / "clip_image_features.npy"), atol=1e-4)


# ----------------------------------------------------------------------------- TorchScript
class QuickGELU(torch.nn.Module):
  """Named and computed as OpenAI's ``clip.model.QuickGELU``, which its archives script."""

  def forward(self, x):
    return x * torch.sigmoid(1.702 * x)


ACTS = {"quick_gelu": QuickGELU, "gelu": torch.nn.GELU,
        "tanh": lambda: torch.nn.GELU(approximate="tanh")}


class _Block(torch.nn.Module):
  def __init__(self, c, act):
    super().__init__()
    self.attn = torch.nn.MultiheadAttention(c, c // 64)
    self.ln_1 = torch.nn.LayerNorm(c)
    self.mlp = torch.nn.Sequential(OrderedDict(
      c_fc=torch.nn.Linear(c, 4 * c), gelu=ACTS[act](), c_proj=torch.nn.Linear(4 * c, c)))
    self.ln_2 = torch.nn.LayerNorm(c)
    self.attn_mask = None

  def forward(self, x):
    return x


class _Transformer(torch.nn.Module):
  def __init__(self, c, layers, act):
    super().__init__()
    self.resblocks = torch.nn.Sequential(*[_Block(c, act) for _ in range(layers)])

  def forward(self, x):
    return self.resblocks(x)


class _Visual(torch.nn.Module):
  def __init__(self, act, c=128, p=8, res=32, layers=2, out=32):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(3, c, p, p, bias=False)
    self.class_embedding = torch.nn.Parameter(torch.zeros(c))
    self.positional_embedding = torch.nn.Parameter(torch.zeros((res // p) ** 2 + 1, c))
    self.ln_pre = torch.nn.LayerNorm(c)
    self.transformer = _Transformer(c, layers, act)
    self.ln_post = torch.nn.LayerNorm(c)
    self.proj = torch.nn.Parameter(torch.zeros(c, out))

  def forward(self, x):
    return self.transformer(x)


class _TinyClip(torch.nn.Module):
  """The tiny CLIP's image tower (+ a text-side tensor and integer buffers), fp16 like the
  released archives; only to write a TorchScript archive."""

  def __init__(self, act="quick_gelu"):
    super().__init__()
    self.visual = _Visual(act)
    self.token_embedding = torch.nn.Embedding(64, 32)
    self.register_buffer("input_resolution", torch.tensor(32))

  def forward(self, x):
    return self.visual(x)


def _tiny_torchscript(path, act="quick_gelu"):
  sd = torch.load(CLIP / "clip.pth", weights_only=True)
  m = _TinyClip(act)
  own = m.state_dict()
  m.load_state_dict({k: sd[k] if k in sd else own[k] for k in own})
  for name, p in m.visual.named_parameters():  # fp16 where the release files are fp16
    p.data = p.data.to(sd["visual." + name].dtype)
  scripted = torch.jit.script(m)
  torch.jit.save(scripted, path)
  return scripted


def test_torchscript_archive_is_read_without_running_code(tmp_path, clip_cfg, expected):
  path = tmp_path / "ViT-tiny.pt"
  scripted = _tiny_torchscript(path)
  with pytest.raises(CheckpointError, match="TorchScript"):
    checkpoint_files.read_checkpoint(path)  # the generic reader still refuses and says where to go
  tensors = checkpoint_files.read_torchscript_tensors(path)
  want = scripted.state_dict()
  assert set(tensors) == set(want)
  for k, v in want.items():
    np.testing.assert_array_equal(tensors[k], v.numpy(), err_msg=k)
  # The archive's scripted activation modules say QuickGELU: no clip_activation needed.
  imp = convert.import_model(path, clip_cfg)
  assert imp.source.container == "torchscript" and imp.converted.fmt == "clip"
  assert imp.cfg.activation == "quick_gelu"
  assert any("modules are QuickGELU" in n for n in imp.converted.notes)
  _assert_clip_tensors_exact(imp.converted.state, expected)


def test_torchscript_activation_read_from_its_modules(tmp_path, clip_cfg):
  """An archive scripted with torch.nn.GELU() (open_clip's default) converts as exact GELU; a
  contradicting clip_activation and a tanh-approximate GELU are refused."""
  path = tmp_path / "gelu.pt"
  _tiny_torchscript(path, "gelu")
  imp = convert.import_model(path, clip_cfg)
  assert imp.cfg.activation == "gelu"
  with pytest.raises(CheckpointError, match="clip-activation quick_gelu contradicts"):
    convert.import_model(path, clip_cfg, clip_activation="quick_gelu")
  _tiny_torchscript(path, "tanh")
  with pytest.raises(CheckpointError, match=r"approximate=tanh.*QuickGELU and exact GELU only"):
    convert.import_model(path, clip_cfg)


def test_torchscript_with_foreign_global_is_refused(tmp_path):
  marker = tmp_path / "pwned"

  class Payload:
    def __reduce__(self):
      return (open, (str(marker), "w"))

  path = tmp_path / "evil.pt"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("evil/data.pkl", pickle.dumps({"x": Payload()}, protocol=2))
    z.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
    z.writestr("evil/code/__torch__.py", "")
  with pytest.raises(CheckpointError,
                     match=r"refused.*needs (io|builtins)\.open.*nothing was executed"):
    checkpoint_files.read_source(path)
  assert not marker.exists()


# ----------------------------------------------------------------------------- resize
def _naive_bicubic(grid: np.ndarray, n_out: int, a: float = -0.75) -> np.ndarray:
  """Independent per-pixel reference: half-pixel centres, taps clamped at the border."""

  def w(x):
    x = abs(x)
    if x <= 1:
      return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
      return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0

  n_in = grid.shape[0]
  out = np.zeros((n_out, n_out) + grid.shape[2:])
  for i in range(n_out):
    for j in range(n_out):
      si = (i + 0.5) * n_in / n_out - 0.5
      sj = (j + 0.5) * n_in / n_out - 0.5
      for di in range(int(np.floor(si)) - 1, int(np.floor(si)) + 3):
        for dj in range(int(np.floor(sj)) - 1, int(np.floor(sj)) + 3):
          ci, cj = min(max(di, 0), n_in - 1), min(max(dj, 0), n_in - 1)
          out[i, j] += w(si - di) * w(sj - dj) * grid[ci, cj]
  return out


def test_positional_embedding_resize_32_to_48(clip_cfg):
  cfg = clip_cfg.replace(input_resolution=48)
  imp = convert.import_model(CLIP / "clip.npz", cfg, **QUICK)
  src = np.load(CLIP / "clip.npz")["visual.positional_embedding"].astype(np.float64)
  pe = imp.converted.state["positional_embedding"]
  assert pe.shape == (37, 128) and pe.dtype == np.float32
  assert imp.converted.resized and "4x4 -> 6x6" in imp.converted.resized[0]
  np.testing.assert_array_equal(pe[0], src[0].astype(np.float32))  # class-token row kept
  grid = src[1:].reshape(4, 4, 128)
  ref = _naive_bicubic(grid, 6).reshape(36, 128)
  np.testing.assert_allclose(pe[1:], ref, atol=1e-6, rtol=1e-6)
  # Same convention as torch's F.interpolate(bicubic, align_corners=False) (timm / MMCV).
  t = torch.from_numpy(grid).permute(2, 0, 1)[None]
  ref_torch = torch.nn.functional.interpolate(t, size=(6, 6), mode="bicubic",
                                              align_corners=False)[0].permute(1, 2, 0).numpy()
  np.testing.assert_allclose(pe[1:], ref_torch.reshape(36, 128), atol=1e-6, rtol=1e-6)
  # The model with the resized embedding runs at 48 px.
  x = np.zeros((1, cfg.num_frames, 48, 48, 3), np.float32)
  assert run(imp.model, jnp.asarray(x)).shape == (1, cfg.num_classes)


def test_resize_is_identity_at_same_size_and_down_matches_naive():
  rng = np.random.default_rng(0)
  pe = rng.standard_normal((1 + 25, 3)).astype(np.float32)
  assert mapping.resize_positional_embedding(pe, 5) is pe
  down = mapping.resize_positional_embedding(pe, 3)
  ref = _naive_bicubic(pe[1:].astype(np.float64).reshape(5, 5, 3), 3).reshape(9, 3)
  np.testing.assert_allclose(down[1:], ref, atol=1e-6)


# ----------------------------------------------------------------------------- HF and timm
HF_DIMS = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
               image_size=32, patch_size=8, hidden_act="quick_gelu")


def _video_cfg(**kw) -> ModelConfig:
  base = dict(num_classes=5, num_frames=1, input_resolution=32, patch_size=8, width=64,
              layers=2, heads=2, temporal_downsample=False, no_lmhra=True, return_list=(1,),
              n_layers=1, n_dim=64, n_head=2, mlp_dropout=(0.5,))
  return ModelConfig(**{**base, **kw})


def _randomise(module: torch.nn.Module, seed: int):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      scale = 1.0 if ("norm" in name or "class_embedding" in name) and p.ndim == 1 else 0.2
      base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
      p.copy_(base + scale * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def hf_model():
  from transformers import CLIPVisionConfig, CLIPVisionModel

  torch.manual_seed(0)
  model = CLIPVisionModel(CLIPVisionConfig(**HF_DIMS)).eval()
  _randomise(model, 1)
  return model


@pytest.fixture(scope="module")
def hf_reference(hf_model):
  image = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    out = hf_model(pixel_values=torch.from_numpy(image), output_hidden_states=True)
  return image, out.hidden_states[-1][:, 0].numpy()


def _class_token_after_last_block(model, image):
  x = jnp.asarray(image.transpose(0, 2, 3, 1)[:, None])  # [B, T=1, H, W, 3]
  _, inter = run(model, x, return_intermediates=True)
  return np.asarray(inter[f"block_{model.cfg.layers - 1:02d}"])[:, 0, 0]


@pytest.mark.parametrize("serialization", ["safetensors", "bin"])
def test_hugging_face_clip_vision_model(tmp_path, hf_model, hf_reference, serialization):
  if serialization == "safetensors":
    hf_model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
  else:  # transformers 5 writes only safetensors; a .bin is torch.save of the state dict
    hf_model.config.save_pretrained(tmp_path)
    weights = tmp_path / "pytorch_model.bin"
    torch.save(hf_model.state_dict(), weights)
  assert weights.is_file()
  imp = convert.import_model(weights, _video_cfg())
  assert imp.converted.fmt == "hf" and imp.cfg.activation == "quick_gelu"
  assert any("hidden_act quick_gelu" in n for n in imp.converted.notes)
  # transformers 5 saves CLIPVisionModel without the ``vision_model.`` prefix older
  # releases (and CLIPModel) use; both are read.
  assert sorted(k.removeprefix("vision_model.") for k in imp.converted.ignored) == [
    "post_layernorm.bias", "post_layernorm.weight"]
  image, want = hf_reference
  np.testing.assert_allclose(_class_token_after_last_block(imp.model, image), want, atol=1e-4,
                             rtol=1e-4)
  # The model directory works as well.
  assert convert.import_model(tmp_path, _video_cfg()).converted.state.keys() == \
      imp.converted.state.keys()


def test_hugging_face_clip_model_text_tower_dropped(tmp_path):
  from transformers import CLIPConfig, CLIPModel

  config = CLIPConfig(vision_config=HF_DIMS, text_config=dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    vocab_size=50, max_position_embeddings=8), projection_dim=16)
  CLIPModel(config).save_pretrained(tmp_path)
  imp = convert.import_model(tmp_path / "model.safetensors", _video_cfg())
  assert imp.converted.fmt == "hf" and len(imp.converted.state) == 5 + 2 * 12
  assert "visual_projection.weight" in imp.converted.ignored
  assert "logit_scale" in imp.converted.ignored
  assert any(k.startswith("text_model.") for k in imp.converted.ignored)


def test_hugging_face_unsupported_activation_is_refused(tmp_path, hf_model):
  hf_model.save_pretrained(tmp_path)
  cfg = json.loads((tmp_path / "config.json").read_text())
  cfg["hidden_act"] = "gelu_new"  # the tanh approximation: neither of the model's two
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match="hidden_act='gelu_new'.*exact GELU or QuickGELU"):
    convert.import_model(tmp_path / "model.safetensors", _video_cfg())


def test_hugging_face_weights_without_config_need_the_activation(tmp_path, hf_model):
  hf_model.save_pretrained(tmp_path)
  (tmp_path / "config.json").unlink()
  with pytest.raises(CheckpointError, match="do not record hidden_act.*--clip-activation"):
    convert.import_model(tmp_path / "model.safetensors", _video_cfg())
  imp = convert.import_model(tmp_path / "model.safetensors", _video_cfg(), clip_activation="gelu")
  assert imp.cfg.activation == "gelu"


def timm_state_from_hf(hf: dict[str, torch.Tensor], layers: int) -> OrderedDict:
  """A timm ``vit_*_clip_*`` state dict built from HF tensors, with the names and layout of
  timm's VisionTransformer (derived from timm/models/vision_transformer.py, whose OpenAI-CLIP
  converter renames conv1 -> patch_embed.proj, positional_embedding -> pos_embed [1, L, C],
  class_embedding -> cls_token [1, 1, C], ln_pre -> norm_pre, ln_1/ln_2 -> norm1/norm2,
  attn.in_proj_* -> attn.qkv.* (packed q|k|v rows, like torch MHA), attn.out_proj ->
  attn.proj, mlp.c_fc/c_proj -> mlp.fc1/fc2, ln_post -> norm, proj -> head.weight (transposed)
  with a zero head.bias)."""
  p = "vision_model."
  hf = {k if k.startswith(p) else p + k: v for k, v in hf.items()}
  sd = OrderedDict()
  sd["cls_token"] = hf[p + "embeddings.class_embedding"].reshape(1, 1, -1)
  sd["pos_embed"] = hf[p + "embeddings.position_embedding.weight"][None]
  sd["patch_embed.proj.weight"] = hf[p + "embeddings.patch_embedding.weight"]
  for s in ("weight", "bias"):
    sd[f"norm_pre.{s}"] = hf[p + f"pre_layrnorm.{s}"]
  for i in range(layers):
    h, t = f"{p}encoder.layers.{i}.", f"blocks.{i}."
    for s in ("weight", "bias"):
      sd[t + f"norm1.{s}"] = hf[h + f"layer_norm1.{s}"]
      sd[t + f"attn.qkv.{s}"] = torch.cat([hf[h + f"self_attn.{n}_proj.{s}"] for n in "qkv"])
      sd[t + f"attn.proj.{s}"] = hf[h + f"self_attn.out_proj.{s}"]
      sd[t + f"norm2.{s}"] = hf[h + f"layer_norm2.{s}"]
      sd[t + f"mlp.fc1.{s}"] = hf[h + f"mlp.fc1.{s}"]
      sd[t + f"mlp.fc2.{s}"] = hf[h + f"mlp.fc2.{s}"]
  for s in ("weight", "bias"):
    sd[f"norm.{s}"] = hf[p + f"post_layernorm.{s}"]
  sd["head.weight"] = torch.randn(16, hf[p + "pre_layrnorm.weight"].shape[0])
  sd["head.bias"] = torch.zeros(16)
  return sd


def test_timm_clip_vit(tmp_path, hf_model, hf_reference):
  sd = timm_state_from_hf(hf_model.state_dict(), HF_DIMS["num_hidden_layers"])
  path = tmp_path / "timm.pth"
  torch.save(sd, path)
  with pytest.raises(CheckpointError, match="does not record its model name.*--clip-activation"):
    convert.import_model(path, _video_cfg())
  imp = convert.import_model(path, _video_cfg(), clip_activation="quick_gelu")
  assert imp.converted.fmt == "timm"
  assert sorted(imp.converted.ignored) == ["head.bias", "head.weight", "norm.bias",
                                           "norm.weight"]
  image, want = hf_reference
  np.testing.assert_allclose(_class_token_after_last_block(imp.model, image), want, atol=1e-4,
                             rtol=1e-4)
  # A zero patch-embedding bias is dropped; a non-zero one is an error (the model has none).
  sd["patch_embed.proj.bias"] = torch.zeros(64)
  torch.save(sd, path)
  assert "patch_embed.proj.bias" in convert.import_model(path, _video_cfg(),
                                                   **QUICK).converted.ignored
  sd["patch_embed.proj.bias"][3] = 0.5
  torch.save(sd, path)
  with pytest.raises(CheckpointError, match="patch_embed.proj.bias is non-zero"):
    convert.import_model(path, _video_cfg(), **QUICK)


@pytest.mark.parametrize("name, want", [
  ("vit_base_patch16_clip_quickgelu_224.openai", "quick_gelu"),
  ("vit_base_patch16_clip_224.laion2b", "gelu"),
  ("vit_large_patch14_clip_336", "gelu"),
  ("vit_base_patch16_clip_224.openai", None),  # OpenAI weights in timm's GELU model: ask
  ("vit_base_patch16_224", None),  # not a CLIP ViT
])
def test_timm_model_names(name, want):
  assert towers.timm_name_activation(name)[0] == want


def test_timm_hub_config_names_the_activation(tmp_path, hf_model):
  """A timm hub folder's config.json (architecture + pretrained tag) decides."""
  sd = timm_state_from_hf(hf_model.state_dict(), HF_DIMS["num_hidden_layers"])
  torch.save(sd, tmp_path / "pytorch_model.bin")
  hub = {"architecture": "vit_base_patch16_clip_224", "pretrained_cfg": {"tag": "laion2b"}}
  (tmp_path / "config.json").write_text(json.dumps(hub))
  imp = convert.import_model(tmp_path / "pytorch_model.bin", _video_cfg())
  assert imp.converted.fmt == "timm" and imp.cfg.activation == "gelu"
  hub["pretrained_cfg"]["tag"] = "openai"
  (tmp_path / "config.json").write_text(json.dumps(hub))
  with pytest.raises(CheckpointError, match="OpenAI's weights.*--clip-activation"):
    convert.import_model(tmp_path / "pytorch_model.bin", _video_cfg())


def test_open_clip_config_names_the_activation(tmp_path):
  sd = torch.load(CLIP / "clip.pth", weights_only=True)
  torch.save(sd, tmp_path / "open_clip_pytorch_model.bin")
  cfg = config_from_official(CLIP / "config.json")
  for quick, want in ((True, "quick_gelu"), (None, "gelu")):
    model_cfg = {"embed_dim": 32} | ({"quick_gelu": quick} if quick is not None else {})
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    imp = convert.import_model(tmp_path / "open_clip_pytorch_model.bin", cfg)
    assert imp.cfg.activation == want


def test_ambiguous_clip_state_dict_needs_the_activation(clip_cfg):
  with pytest.raises(CheckpointError,
                     match=r"clip\.npz: a state dict in OpenAI CLIP layout does not record its "
                           r"activation.*pass --clip-activation quick_gelu"):
    convert.import_model(CLIP / "clip.npz", clip_cfg)
  # The converted tower sets the model's activation, whatever the config said.
  imp = convert.import_model(CLIP / "clip.npz", clip_cfg.replace(activation="gelu"), **QUICK)
  assert imp.cfg.activation == "quick_gelu"
  assert any("activation gelu -> quick_gelu" in n for n in imp.converted.notes)


def test_clip_layer_count_mismatch_is_named(hf_model, tmp_path):
  sd = timm_state_from_hf(hf_model.state_dict(), 2)
  path = tmp_path / "timm.pth"
  torch.save(sd, path)
  with pytest.raises(CheckpointError, match=r"layers: tower 2, config 3"):
    convert.import_model(path, _video_cfg(layers=3, return_list=(2,)), **QUICK)
  with pytest.raises(CheckpointError, match=r"layers: tower 2, config 1"):
    convert.import_model(path, _video_cfg(layers=1, return_list=(0,)), **QUICK)
  # A deliberate partial load (--allow-missing) keeps the third block at init; without it the
  # missing keys are listed.
  imp = convert.import_model(path, _video_cfg(layers=3, return_list=(2,)), allow_missing=True,
                             **QUICK)
  assert "transformer.resblocks.2.attn.in_proj_weight" in imp.kept_at_init
