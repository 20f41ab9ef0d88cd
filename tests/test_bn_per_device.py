"""Per-device BatchNorm statistics (``bn_sync=False``) on 8 simulated CPU devices (a fresh
interpreter: XLA_FLAGS must be set before jax is imported), mesh data=4 x fsdp=2.

* The BatchNorm module under the sharded jit against an independent float64 NumPy BatchNorm
  over each device's block of the batch: output, running statistics, and the gradients (the
  closed-form BatchNorm backward, no autodiff) of ``sum(y * cotangent)`` w.r.t. input, scale
  and bias; ``bn_sync=True`` against the same formulas over the whole batch.
* One train step of a model with local MHRA against what DDP computes: the same model run on
  each device's sub-batch alone, on one device: loss and gradient = the mean over the
  sub-batches, running statistics = device 0's.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import ml_collections

from tests.conftest import REPO
from tests.util import fast_compile_env
from uniformerv2_jax import config_check
from uniformerv2_jax.model import ModelConfig

SCRIPT = textwrap.dedent("""
  import json
  import jax, jax.numpy as jnp, numpy as np, optax
  from flax import nnx
  from uniformerv2_jax import sharding as S
  from uniformerv2_jax.activation_sharding import activation_sharding
  from uniformerv2_jax.errors import InputError
  from uniformerv2_jax.model import BatchNorm, ModelConfig, create_model
  from uniformerv2_jax.steps import init_train_state, make_train_step
  from uniformerv2_jax.train import state_shardings
  assert jax.device_count() == 8, jax.devices()
  jax.config.update("jax_default_matmul_precision", "highest")
  rules = {"batch": ("data", "fsdp"), "embed": "fsdp", "heads": "tensor", "mlp": "tensor",
           "classes": "tensor"}
  mesh = S.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
  G = 8  # batch shards: data x fsdp
  rep = S.replicated(mesh)
  rng = np.random.default_rng(0)
  report = {}

  def maxdiff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))

  # ---- the BatchNorm module against NumPy ------------------------------------------------
  B, C, EPS, M = 16, 6, 1e-5, 0.1
  # Per-clip offsets and scales: every device's block has its own statistics.
  x = (rng.standard_normal((B, 3, 5, C)) * rng.uniform(0.5, 2, (B, 1, 1, 1))
       + 2 * rng.standard_normal((B, 1, 1, C))).astype(np.float32)
  cot = rng.standard_normal(x.shape).astype(np.float32)
  scale = (1 + 0.3 * rng.standard_normal(C)).astype(np.float32)
  bias = (0.3 * rng.standard_normal(C)).astype(np.float32)
  rm = (0.2 * rng.standard_normal(C)).astype(np.float32)
  rv = rng.uniform(0.5, 1.5, C).astype(np.float32)

  def numpy_bn(groups):
    xg = x.astype(np.float64).reshape(groups, -1, C)
    n = xg.shape[1]
    mu = xg.mean(1, keepdims=True)
    var = ((xg - mu) ** 2).mean(1, keepdims=True)
    rstd = 1 / np.sqrt(var + EPS)
    xhat = (xg - mu) * rstd
    y = xhat * scale + bias
    dy = cot.astype(np.float64).reshape(groups, -1, C)
    dxhat = dy * scale
    dx = rstd / n * (n * dxhat - dxhat.sum(1, keepdims=True)
                     - xhat * (dxhat * xhat).sum(1, keepdims=True))
    return {"y": y.reshape(x.shape), "dx": dx.reshape(x.shape),
            "dscale": (dy * xhat).sum((0, 1)), "dbias": dy.sum((0, 1)),
            "mean": (1 - M) * rm + M * mu[0, 0],
            "var": (1 - M) * rv + M * var[0, 0] * n / (n - 1)}

  def jax_bn(sync, batch=x):
    bn = BatchNorm(C, param_dtype="float32", sync=sync)
    bn.scale[...], bn.bias[...] = jnp.asarray(scale), jnp.asarray(bias)
    bn.mean[...], bn.var[...] = jnp.asarray(rm), jnp.asarray(rv)
    graphdef, params, stats = nnx.split(bn, nnx.Param, nnx.BatchStat)

    def loss(params, xs):
      m = nnx.merge(graphdef, params, stats, copy=True)
      with activation_sharding(mesh, rules):
        y = m(xs, train=True)
      return jnp.sum(y * cot[: len(xs)]), (y, nnx.state(m, nnx.BatchStat))

    # An uneven batch cannot be placed on the batch shards: it enters replicated.
    xs = jax.device_put(batch, S.batch_sharding(mesh, rules, batch.ndim) if len(batch) % G
                        == 0 else rep)
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, (y, new)), (gp, gx) = fn(params, xs)
    return {"y": y, "dx": gx, "dscale": gp["scale"][...], "dbias": gp["bias"][...],
            "mean": new["mean"][...], "var": new["var"][...],
            "count": int(new["num_batches_tracked"][...])}

  for name, sync, groups in (("module_per_device", False, G), ("module_sync", True, 1)):
    got, want = jax_bn(sync), numpy_bn(groups)
    report[name] = {k: maxdiff(got[k], want[k]) for k in want} | {"count": got["count"]}
  ref_dev, ref_glob = numpy_bn(G), numpy_bn(1)
  report["module_reference_gap"] = {k: maxdiff(ref_dev[k], ref_glob[k]) for k in ref_dev}
  try:
    jax_bn(False, x[:12])
    report["uneven"] = ""
  except InputError as e:
    report["uneven"] = str(e)

  # ---- one train step of a model with local MHRA -------------------------------------------
  def keep_grads():
    # Zero updates, the gradient kept as the optimizer state: the step's gradient read back
    # exactly (no parameter difference to cancel).
    return optax.GradientTransformation(
      init=lambda p: jax.tree.map(jnp.zeros_like, p),
      update=lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g))

  cfg = ModelConfig(num_classes=4, num_frames=2, input_resolution=16, patch_size=8, width=16,
                    layers=1, heads=2, no_lmhra=False, double_lmhra=True, dw_reduction=2.0,
                    return_list=(0,), n_layers=1, n_dim=16, n_head=2, mlp_factor=2.0,
                    mlp_dropout=(0.0,), cls_dropout=0.0)
  video = (rng.standard_normal((B, 2, 16, 16, 3))
           + 2 * rng.standard_normal((B, 1, 1, 1, 3))).astype(np.float32)
  batch = {"video": video, "label": rng.integers(0, 4, B).astype(np.int32)}
  tx = keep_grads()

  def initial(sync):
    model = create_model(cfg.replace(bn_sync=sync), seed=0)
    # Every parameter off its initial value: the zero-initialised LMHRA output conv would
    # otherwise hide the BatchNorm from the loss.
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(
      lambda a: a + 0.3 * rng.standard_normal(a.shape).astype(a.dtype), params))
    return init_train_state(model, tx, seed=0)

  def leaves(state):
    return [np.asarray(a) for a in jax.tree.leaves((state.opt_state, state.batch_stats))]

  def on_mesh(sync, state0, graphdef, other):
    sh = state_shardings(state0, mesh, rules)
    bsh = {k: S.batch_sharding(mesh, rules, np.ndim(v)) for k, v in batch.items()}
    step = jax.jit(make_train_step(graphdef, other, tx, mesh=mesh, rules=rules),
                   in_shardings=(sh, bsh), out_shardings=(sh, rep))
    state, m = step(jax.device_put(state0, sh), S.global_batch(batch, mesh, rules))
    return float(m["loss"]), jax.device_get(state)

  graphdef_dev, other_dev, state_dev = initial(False)
  state_dev = jax.device_get(state_dev)
  graphdef_sync, other_sync, _ = initial(True)
  state_sync = state_dev  # the same values: only the option differs
  loss_dev, after_dev = on_mesh(False, state_dev, graphdef_dev, other_dev)
  loss_sync, after_sync = on_mesh(True, state_sync, graphdef_sync, other_sync)

  # References: the synchronised model on one device, on the global batch and on each
  # device's sub-batch (DDP: gradients averaged, running statistics rank 0's).
  one = jax.jit(make_train_step(graphdef_sync, other_sync, tx))
  ref_state, ref_m = one(state_sync, batch)
  per = [one(state_sync, {k: v[g * (B // G):(g + 1) * (B // G)] for k, v in batch.items()})
         for g in range(G)]
  ddp_grads = jax.tree.map(lambda *g: np.mean(np.stack(g), 0), *[s.opt_state for s, _ in per])
  ddp_loss = float(np.mean([float(m["loss"]) for _, m in per]))
  ddp_leaves = [np.asarray(a) for a in jax.tree.leaves((ddp_grads, per[0][0].batch_stats))]

  # Without a mesh the whole batch is one shard: bn_sync=False computes today's numbers.
  solo_state, solo_m = jax.jit(make_train_step(graphdef_dev, other_dev, tx))(state_dev, batch)

  def gap(a, b):
    return max(maxdiff(x, y) / max(float(np.abs(y).max()), 1e-30) for x, y in zip(a, b))

  report["step_per_device"] = {"loss": abs(loss_dev - ddp_loss) / abs(ddp_loss),
                               "leaves": gap(leaves(after_dev), ddp_leaves)}
  report["step_sync"] = {"loss": abs(loss_sync - float(ref_m["loss"])) / abs(ddp_loss),
                         "leaves": gap(leaves(after_sync), leaves(ref_state))}
  report["step_no_mesh"] = {"loss": abs(float(solo_m["loss"]) - float(ref_m["loss"])),
                            "leaves": gap(leaves(solo_state), leaves(ref_state))}
  report["step_gap"] = {"loss": abs(float(ref_m["loss"]) - ddp_loss) / abs(ddp_loss),
                        "leaves": gap(ddp_leaves, leaves(ref_state))}
  print("RESULT" + json.dumps(report))
""")


def _run_script() -> dict:
  # The script compares its compiles with each other and with NumPy at float32 tolerances:
  # cheap XLA compiles.
  env = fast_compile_env("--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.split("RESULT")[-1])


def test_per_device_batchnorm_matches_ddp():
  r = _run_script()
  # float32 against float64: f32 eps (1.2e-7) times the longest sums (240 terms, dscale) of
  # O(1) values is 3e-5; the per-device vs global gap is above 0.4.
  tol = 5e-5
  for name in ("module_per_device", "module_sync"):
    for key, diff in r[name].items():
      if key != "count":
        assert diff <= tol, (name, key, r[name])
    assert r[name]["count"] == 1, r[name]
  # The two references differ in every output but dbias (the cotangent's sum either way): the
  # test tells them apart.
  gaps = {k: v for k, v in r["module_reference_gap"].items() if k != "dbias"}
  assert min(gaps.values()) > 100 * tol, r["module_reference_gap"]
  assert "batch 12" in r["uneven"] and "8 batch shards" in r["uneven"], r["uneven"]
  # One step: f32 gradients summed in mesh-dependent orders, relative to each leaf's largest
  # value: 1e-4 (the multidevice tests' scale), while per-device and global differ by > 1e-2.
  for name in ("step_per_device", "step_sync", "step_no_mesh"):
    assert r[name]["loss"] <= 1e-5 and r[name]["leaves"] <= 1e-4, (name, r[name])
  assert r["step_gap"]["leaves"] > 1e-2 and r["step_gap"]["loss"] > 1e-4, r["step_gap"]


def test_zoo_recipes_use_per_device_statistics():
  """The official recipes normalise each GPU's sub-batch (DDP + plain BatchNorm3d)."""
  from uniformerv2_jax.configs import sthv2, ucf101

  for config in (sthv2.get_config("b16_16x224"), ucf101.get_config("b16_8x224")):
    assert config.model.bn_sync is False
    assert config_check.problems(config, "plan") == []
  assert ModelConfig().bn_sync is True  # the library default: global statistics


def test_bad_bn_sync_is_named():
  model = dataclasses.asdict(ModelConfig()) | {"bn_sync": "no"}
  lines = config_check.problems(ml_collections.ConfigDict({"model": model}), "plan")
  assert lines == ["model.bn_sync = 'no': True (BatchNorm statistics over the global batch) or "
                   "False (per device)"], lines
