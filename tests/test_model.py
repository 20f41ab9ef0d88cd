"""Parity of the Flax model with the official PyTorch model (fixtures) and with an independent
NumPy float64 forward on configurations the fixtures do not cover."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import uniformerv2_jax as u
from tests import reference_numpy
from tests.conftest import FIXTURES, REPO
from tests.util import FAST_COMPILE_OPTIONS, random_official_state_dict
from uniformerv2_jax.checkpoint_files import read_checkpoint
from uniformerv2_jax.mapping import flax_from_torch, model_from_flax, strip_prefix
from uniformerv2_jax.model import ModelConfig
from uniformerv2_jax.trees import flat_state

VIDEO_FIXTURES = ["tiny_k400", "tiny_ssv2"]


def channels_last(x: np.ndarray) -> jnp.ndarray:
  """Official [B, 3, T, H, W] -> ours [B, T, H, W, 3]."""
  return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 4, 1))


def load_fixture(name: str, fmt: str = "pth", **overrides):
  d = FIXTURES / name
  return u.load_official(d / f"model.{fmt}", d / "config.json", **overrides)


@nnx.jit(static_argnames=("train", "return_intermediates"))
def run(model, x, key=None, train=False, return_intermediates=False):
  return model(x, train=train, key=key, return_intermediates=return_intermediates)


@pytest.mark.parametrize("name", VIDEO_FIXTURES)
def test_logits_features_and_intermediates_match_official(name):
  d = FIXTURES / name
  model = load_fixture(name)
  logits, inter = run(model, channels_last(np.load(d / "input.npy")), return_intermediates=True)
  np.testing.assert_allclose(logits, np.load(d / "logits.npy"), atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(inter["fused"], np.load(d / "features.npy"), atol=1e-4, rtol=1e-4)
  ref = np.load(d / "intermediates.npz")
  assert set(ref.files) <= set(inter), sorted(set(ref.files) - set(inter))
  for k in ref.files:
    got, want = np.asarray(inter[k]), ref[k]
    assert got.shape == want.shape, (k, got.shape, want.shape)
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < 1e-4, f"{name} {k}: max error {rel:.2e} of the max magnitude"


@pytest.mark.parametrize("name", VIDEO_FIXTURES)
def test_pth_and_npz_give_identical_params(name):
  a = flat_state(load_fixture(name, "pth"))
  b = flat_state(load_fixture(name, "npz"))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=str(k))


def test_numpy_reference_reproduces_official_float64():
  """The independent reference used below must itself be right (to 1e-12 on both fixtures)."""
  for name in VIDEO_FIXTURES:
    d = FIXTURES / name
    cfg = u.config_from_official(d / "config.json")
    sd = strip_prefix(read_checkpoint(d / "model.npz"))
    np.testing.assert_allclose(reference_numpy.forward(sd, cfg, np.load(d / "input.npy")),
                               np.load(d / "logits_f64.npy"), atol=1e-12, rtol=0)


# Configurations the fixtures do not cover: odd grids, non-contiguous RETURN_LIST, a single local
# MHRA with a flooring DW_REDUCTION, frozen, MLP_FACTOR giving a rounded width, batch 1 and 3.
OTHER_CONFIGS = {
  "odd_grid_single_lmhra_noncontiguous": dict(
    num_classes=7, num_frames=6, input_resolution=40, patch_size=8, width=32, layers=3, heads=2,
    temporal_downsample=True, no_lmhra=False, double_lmhra=False, dw_reduction=2.5,
    return_list=(0, 2), n_layers=2, n_dim=32, n_head=4, mlp_factor=1.5,
    mlp_dropout=(0.5, 0.5), cls_dropout=0.5),
  "frozen_no_lmhra_t3": dict(
    num_classes=5, num_frames=3, input_resolution=24, patch_size=8, width=24, layers=2,
    heads=3, temporal_downsample=False, no_lmhra=True, return_list=(1,), n_layers=1, n_dim=24,
    n_head=2, mlp_factor=0.5, mlp_dropout=(0.5,), frozen=True),
  "double_lmhra_every_layer_returned": dict(
    num_classes=4, num_frames=4, input_resolution=24, patch_size=4, width=40, layers=4, heads=4,
    temporal_downsample=True, no_lmhra=False, double_lmhra=True, dw_reduction=1.5,
    return_list=(3, 0, 1, 2), n_layers=4, n_dim=40, n_head=5, mlp_factor=4.0,
    mlp_dropout=(0.5,) * 4),
}
BATCH = {"odd_grid_single_lmhra_noncontiguous": 3, "frozen_no_lmhra_t3": 1,
         "double_lmhra_every_layer_returned": 2}


@pytest.mark.parametrize("which", sorted(OTHER_CONFIGS))
def test_any_config_matches_numpy_reference(which):
  cfg = ModelConfig(**OTHER_CONFIGS[which])
  sd = random_official_state_dict(cfg, seed=len(which))
  model = model_from_flax(flax_from_torch(sd, cfg), cfg)
  rng = np.random.default_rng(1)
  x = rng.standard_normal((BATCH[which], 3, cfg.num_frames, cfg.input_resolution,
                           cfg.input_resolution)).astype(np.float32)
  logits, inter = run(model, channels_last(x), return_intermediates=True)
  want_logits, want_fused = reference_numpy.forward(sd, cfg, x, return_features=True)
  assert logits.shape == (BATCH[which], cfg.num_classes)
  np.testing.assert_allclose(logits, want_logits, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(inter["fused"], want_fused, atol=1e-4, rtol=1e-4)


def test_float64_matches_official_float64_references():
  """x64 changes global jax state, so it runs in a fresh interpreter."""
  script = textwrap.dedent(f"""
    import jax, numpy as np, json
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import uniformerv2_jax as u
    from tests import reference_numpy
    from tests.test_model import OTHER_CONFIGS, BATCH
    from tests.util import FAST_COMPILE_OPTIONS, random_official_state_dict
    from uniformerv2_jax.mapping import flax_from_torch, model_from_flax
    from uniformerv2_jax.model import ModelConfig
    out = {{}}
    for name in {VIDEO_FIXTURES!r}:
      d = "{FIXTURES}/" + name
      m = u.load_official(d + "/model.npz", d + "/config.json", dtype="float64",
                          param_dtype="float64")
      x = jnp.asarray(np.load(d + "/input.npy").transpose(0, 2, 3, 4, 1), jnp.float64)
      y = np.asarray(m(x))
      assert y.dtype == np.float64
      out[name] = float(np.abs(y - np.load(d + "/logits_f64.npy")).max())
    for which, kw in OTHER_CONFIGS.items():
      cfg = ModelConfig(**kw, dtype="float64", param_dtype="float64")
      sd = random_official_state_dict(cfg, seed=len(which))
      m = model_from_flax(flax_from_torch(sd, cfg), cfg)
      x = np.random.default_rng(1).standard_normal(
        (BATCH[which], 3, cfg.num_frames, cfg.input_resolution, cfg.input_resolution))
      y = np.asarray(m(jnp.asarray(x.transpose(0, 2, 3, 4, 1))))
      out[which] = float(np.abs(y - reference_numpy.forward(sd, cfg, x)).max())
    print("RESULT" + json.dumps(out))
  """)
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  errors = json.loads(proc.stdout.split("RESULT")[-1])
  for name, err in errors.items():
    assert err < 1e-10, f"{name}: float64 logits differ by {err:.2e}"


@pytest.mark.parametrize("name", VIDEO_FIXTURES)
def test_scan_and_loop_are_identical(name):
  x = channels_last(np.load(FIXTURES / name / "input.npy"))
  key = jax.random.key(3)
  results = {}
  for scan in (True, False):
    model = load_fixture(name, scan_layers=scan)
    eval_logits = run(model, x)
    train_logits = run(model, x, key=key, train=True)  # BN batch stats, dropout, drop path
    stats = flat_state(model, nnx.BatchStat)
    results[scan] = (eval_logits, train_logits, stats)
  for a, b in zip(results[True][:2], results[False][:2], strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for k in results[True][2]:
    np.testing.assert_array_equal(results[True][2][k], results[False][2][k], err_msg=str(k))


def test_remat_does_not_change_results():
  """Every remat policy gives the loss and gradients of the model without remat. One test over
  the policies: the no-remat baseline (a compile as long as a policy's) is computed once. All
  five are compiled with LLVM at -O0 (FAST_COMPILE_OPTIONS): the comparison is between them."""
  name = "tiny_ssv2"
  x = channels_last(np.load(FIXTURES / name / "input.npy"))
  labels = jnp.asarray([1, 2])

  def loss_and_grad(model):
    def loss(m):
      logits = m(x, train=True, key=jax.random.key(0))
      return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean()
    step = nnx.jit(nnx.value_and_grad(loss))
    return step.lower(model).compile(compiler_options=FAST_COMPILE_OPTIONS)(model)

  base_loss, base_grads = loss_and_grad(load_fixture(name))
  failures = []
  for policy in ("full", "dots", "dots_no_batch", "qkv_mlp"):
    loss, grads = loss_and_grad(load_fixture(name, remat_policy=policy))
    try:
      np.testing.assert_allclose(loss, base_loss, rtol=1e-6, err_msg=f"{policy}: loss")
      for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads),
                              jax.tree.leaves(base_grads), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5,
                                   err_msg=f"{policy}: grad {jax.tree_util.keystr(path)}")
    except AssertionError as e:
      failures.append(str(e))
  assert not failures, "\n".join(failures)


def test_train_mode_batchnorm_updates_like_torch():
  """One training-mode forward of the tiny SSv2 model (the official train-step fixture: same
  weights, dropout 0) updates every BatchNorm like torch: momentum 0.1, unbiased running var,
  num_batches_tracked + 1. Layer 0's first BN is also checked against a NumPy computation."""
  d = FIXTURES / "train_step_ssv2"
  cfg_json = json.loads((d / "config.json").read_text())
  model = u.load_official(FIXTURES / "tiny_ssv2" / "model.npz", cfg_json)
  assert model.cfg.cls_dropout == 0 and model.cfg.backbone_drop_path_rate == 0
  x = channels_last(np.load(d / "input.npy"))
  before = flat_state(model, nnx.BatchStat)
  stem = np.asarray(model.stem(x))  # the input of block 0's first LMHRA (patch tokens)
  run(model, x, train=True)
  after = flat_state(model, nnx.BatchStat)

  patches = stem[:, :, 1:].reshape(-1, stem.shape[-1]).astype(np.float64)
  n = patches.shape[0]
  bn = ("resblocks", "lmhra1", "bn")
  want_mean = 0.9 * before[bn + ("mean",)][0] + 0.1 * patches.mean(0)
  want_var = 0.9 * before[bn + ("var",)][0] + 0.1 * patches.var(0) * n / (n - 1)
  np.testing.assert_allclose(after[bn + ("mean",)][0], want_mean, atol=1e-6, rtol=1e-5)
  np.testing.assert_allclose(after[bn + ("var",)][0], want_var, atol=1e-6, rtol=1e-5)

  # Against the official code's buffers after its train-mode forward (bn_after.npz).
  official = np.load(d / "bn_after.npz")
  sd_after = u.mapping.torch_from_flax({**flat_state(model)}, model.cfg, prefix="backbone.")
  for k in official.files:
    got = sd_after[k]
    if k.endswith("num_batches_tracked"):
      assert int(got) == int(official[k]) == 101, k
    else:
      np.testing.assert_allclose(got, official[k], atol=2e-5, rtol=1e-4, err_msg=k)


def test_dropout_and_drop_path_act_only_in_training():
  model = load_fixture("tiny_ssv2")  # drop paths 0.2 / 0.4, dropouts 0.5
  x = channels_last(np.load(FIXTURES / "tiny_ssv2" / "input.npy"))
  e1, e2 = run(model, x), run(model, x)
  np.testing.assert_array_equal(e1, e2)
  model = load_fixture("tiny_ssv2")
  t1 = run(model, x, key=jax.random.key(1), train=True)
  model = load_fixture("tiny_ssv2")
  t2 = run(model, x, key=jax.random.key(2), train=True)
  assert np.abs(np.asarray(t1) - np.asarray(t2)).max() > 1e-3
  # With every rate at zero, training differs from eval only through BatchNorm: without local
  # MHRA (tiny_k400 with rates zeroed) train mode equals eval mode.
  zero = dict(backbone_drop_path_rate=0.0, drop_path_rate=0.0, cls_dropout=0.0,
              mlp_dropout=(0.0, 0.0))
  model = load_fixture("tiny_k400", **zero)
  xk = channels_last(np.load(FIXTURES / "tiny_k400" / "input.npy"))
  np.testing.assert_array_equal(run(model, xk), run(model, xk, key=jax.random.key(0), train=True))


def test_module_train_eval_switches():
  model = load_fixture("tiny_k400")
  x = channels_last(np.load(FIXTURES / "tiny_k400" / "input.npy"))
  ref = np.asarray(model(x))  # load_official returns eval mode
  model.train()
  assert np.abs(np.asarray(model(x)) - ref).max() > 1e-3  # head dropout 0.5 now active
  model.eval()
  np.testing.assert_array_equal(np.asarray(model(x)), ref)


def test_input_shape_errors_are_clear():
  model = load_fixture("tiny_k400")
  with pytest.raises(ValueError,
                     match=r"expects input \[B, T, 64, 64, 3\].*got \(2, 8, 3, 64, 64\)"):
    model(jnp.zeros((2, 8, 3, 64, 64)))
  with pytest.raises(ValueError, match="got"):
    model(jnp.zeros((2, 8, 48, 48, 3)))
  ssv2 = load_fixture("tiny_ssv2")
  with pytest.raises(ValueError, match="T even"):
    ssv2(jnp.zeros((1, 5, 48, 48, 3)))


def test_any_frame_count_and_batch_size_run():
  model = load_fixture("tiny_k400")
  for b, t in ((1, 4), (3, 16)):
    assert model(jnp.zeros((b, t, 64, 64, 3))).shape == (b, 10)


def test_invalid_configs_are_rejected_with_reasons():
  with pytest.raises(ValueError, match="n_layers 2 != len\\(return_list\\) 1"):
    ModelConfig(return_list=(11,), n_layers=2, mlp_dropout=(0.5, 0.5))
  with pytest.raises(ValueError, match="not a multiple of patch_size"):
    ModelConfig(input_resolution=100)
  with pytest.raises(ValueError, match="must equal the backbone width"):
    ModelConfig(n_dim=512)


def _x64_vjps(fn, ref, shapes, seed=0):
  """Outputs and input gradients of ``fn`` and of its plain-autodiff reference ``ref`` in
  float64, on the same random inputs and cotangent."""
  rng = np.random.default_rng(seed)
  with jax.enable_x64(True):
    args = [jnp.asarray(rng.standard_normal(s)) for s in shapes]
    out, vjp = jax.vjp(fn, *args)
    out_ref, vjp_ref = jax.vjp(ref, *args)
    ct = jnp.asarray(rng.standard_normal(out.shape))
    return (np.asarray(out), [np.asarray(g) for g in vjp(ct)],
            np.asarray(out_ref), [np.asarray(g) for g in vjp_ref(ct)])


def test_hand_written_attention_vjp_matches_autodiff():
  """``attention_heads_first``'s custom VJP against autodiff of the textbook formula (float64,
  to round-off), and its half-precision path stays close to it."""
  from uniformerv2_jax.ops import attention_heads_first

  def ref(q, k, v):
    s = jnp.einsum("nhqd,nhkd->nhqk", q, k) / np.sqrt(q.shape[-1])
    return jnp.einsum("nhqk,nhkd->nhqd", jax.nn.softmax(s, axis=-1), v)

  shapes = [(2, 3, 7, 8)] * 3
  out, grads, out_ref, grads_ref = _x64_vjps(attention_heads_first, ref, shapes)
  np.testing.assert_allclose(out, out_ref, rtol=0, atol=1e-13)
  for g, g_ref in zip(grads, grads_ref, strict=True):
    np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-13)
  rng = np.random.default_rng(0)
  args = [jnp.asarray(rng.standard_normal(s), jnp.bfloat16) for s in shapes]
  out_bf16, vjp = jax.vjp(attention_heads_first, *args)
  ct = jnp.asarray(rng.standard_normal(out_bf16.shape), jnp.bfloat16)
  assert out_bf16.dtype == jnp.bfloat16
  f32 = [a.astype(jnp.float32) for a in args]
  out_f32, vjp_f32 = jax.vjp(ref, *f32)
  np.testing.assert_allclose(np.asarray(out_bf16, np.float32), out_f32, atol=0.03)
  for g, g_f32 in zip(vjp(ct), vjp_f32(ct.astype(jnp.float32)), strict=True):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(g, np.float32), g_f32, atol=0.05)


def test_attention_projection_forms_agree(monkeypatch):
  """The CPU form of the attention projections (flat matmuls) and the accelerators' form
  (head-structured einsums) compute the same function: outputs and gradients w.r.t. the input
  and every parameter agree to float64 round-off."""
  from uniformerv2_jax import model as m
  from uniformerv2_jax import ops

  with jax.enable_x64(True):
    attn = m.MultiHeadAttention(8, 2, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    rng = np.random.default_rng(0)
    attn.in_proj_bias[...] = jnp.asarray(rng.standard_normal(24))
    attn.out_proj_bias[...] = jnp.asarray(rng.standard_normal(8))
    graphdef, params = nnx.split(attn)
    x = jnp.asarray(rng.standard_normal((3, 5, 8)))
    ct = jnp.asarray(rng.standard_normal((3, 5, 8)))

    def run(flat):
      monkeypatch.setattr(ops, "use_flat_projections", lambda: flat)

      def f(p, x):
        return nnx.merge(graphdef, p).self_attention(x, jnp.float64)

      out, vjp = jax.vjp(f, params, x)
      return out, vjp(ct)

    (out_flat, grads_flat), (out_heads, grads_heads) = run(True), run(False)
  np.testing.assert_allclose(out_flat, out_heads, rtol=0, atol=1e-12)
  for a, b in zip(jax.tree.leaves(grads_flat), jax.tree.leaves(grads_heads), strict=True):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_target_platform_selects_the_backend_forms():
  """AOT compilation for another platform (the TPU memory plan on a CPU host) traces that
  platform's forms; outside the context the local backend decides."""
  from uniformerv2_jax import ops as m

  assert m.use_flat_projections() == (jax.default_backend() == "cpu")
  with m.target_platform("tpu"):
    assert not m.use_flat_projections()
    assert not m.use_cudnn_attention(jnp.bfloat16)
  with m.target_platform("gpu"):
    assert m.use_cudnn_attention(jnp.bfloat16) and not m.use_cudnn_attention(jnp.float32)
  with m.target_platform("cpu"):
    assert m.use_flat_projections()


@pytest.mark.parametrize("custom_vjp", [True, False], ids=["cpu_vjp", "autodiff"])
def test_dpe_shifted_sums_match_grouped_convolution(monkeypatch, custom_vjp):
  """The DPE's 27 shifted multiply-adds against XLA's grouped convolution (float64): same
  output, same input and kernel gradients, with the hand-written VJP (CPU) and with autodiff
  (accelerators)."""
  from uniformerv2_jax import model as m
  from uniformerv2_jax import ops

  monkeypatch.setattr(ops, "use_dpe_vjp", lambda: custom_vjp)

  def dpe(x, k):
    module = m.DepthwiseConv3d(3, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    module.kernel[...] = k[:, :, :, None, :]
    return module(x, jnp.float64)

  def ref(x, k):
    return jax.lax.conv_general_dilated(
        x, k[:, :, :, None, :], (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        feature_group_count=x.shape[-1])

  out, grads, out_ref, grads_ref = _x64_vjps(dpe, ref, [(2, 4, 5, 6, 3), (3, 3, 3, 3)])
  np.testing.assert_allclose(out, out_ref, rtol=0, atol=1e-12)
  for g, g_ref in zip(grads, grads_ref, strict=True):
    np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-12)
  # bfloat16 inputs: gradients keep the dtype and stay close to the float32 convolution.
  rng = np.random.default_rng(1)
  x, k, ct = (jnp.asarray(rng.standard_normal(s), jnp.bfloat16)
              for s in [(1, 3, 4, 4, 8), (3, 3, 3, 8), (1, 3, 4, 4, 8)])
  grads_bf16 = jax.vjp(ops.depthwise_conv3x3x3, x, k)[1](ct)
  f32 = [a.astype(jnp.float32) for a in (x, k, ct)]
  grads_f32 = jax.vjp(ref, f32[0], f32[1])[1](f32[2])
  for g, g_f32 in zip(grads_bf16, grads_f32, strict=True):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(g, np.float32), g_f32, rtol=0.02, atol=0.1)


def test_dpe_vjp_follows_the_platform():
  from uniformerv2_jax import ops as m

  assert m.use_dpe_vjp() == (jax.default_backend() == "cpu")
  with m.target_platform("tpu"):
    assert not m.use_dpe_vjp()
  with m.target_platform("cpu"):
    assert m.use_dpe_vjp()
