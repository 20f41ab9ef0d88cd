"""Where the B/16 train step spends its time on CPU: sub-blocks timed forward and forward +
backward at the shapes of B/16 8x224 batch 1 (8 frames x 197 tokens x 768), each as a
fraction of the float32 matmul rate measured in the same run (interleaved, medians).

    python benchmarks/profile_train_step.py            # all parts (~3-6 min on 2 cores)
    python benchmarks/profile_train_step.py --batch 2 --parts block,attention

Parts: ``block`` (the model's ResidualBlock, grads w.r.t. params and input, i.e. what the
scanned backbone does per layer), ``attention`` (jax.nn.dot_product_attention, the einsum +
softmax form in an [N, L, H, D] layout, the same with heads moved first, and the model's
``attention_heads_first`` with its hand-written VJP),
``qkv`` (the head-structured ``nlc,cshd->snlhd`` projection vs one [C, 3C] matmul), ``mlp``,
``patch_embed`` (gradient w.r.t. the kernel only), ``global`` (DPE + Extractor, 4 blocks),
``optimizer`` (clip + AdamW update of all B/16 params). One JSON line per measurement.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import speed_common as sc  # noqa: E402

from uniformerv2_jax import host_memory, ops  # noqa: E402
from uniformerv2_jax import model as M  # noqa: E402


def _fb(f, args, argnums, flops):
  """fwd + bwd: the VJP of ``f`` w.r.t. ``argnums`` with a random cotangent (a ``sum`` loss
  would let XLA turn the last matmuls' gradients into reductions)."""
  out = jax.eval_shape(f, *args)
  ct = jnp.asarray(np.random.default_rng(1).standard_normal(out.shape), out.dtype)

  def g(*a):
    *xs, c = a
    _, vjp = jax.vjp(lambda *d: f(*[d[argnums.index(i)] if i in argnums else x
                                   for i, x in enumerate(xs)]),
                     *[xs[i] for i in argnums])
    return vjp(c)

  return jax.jit(g), (*args, ct), flops


def parts(cfg, batch, dtype, which):
  c, l, t, h = cfg.width, cfg.tokens, cfg.num_frames, cfg.heads
  n = batch * t
  dh = c // h
  rng = np.random.default_rng(0)

  def arr(*shape, scale=1.0):
    return jnp.asarray(rng.standard_normal(shape) * scale, dtype)

  out = {}
  x = arr(batch, t, l, c)
  model = M.create_model(cfg)  # host init: no per-shape compilations
  # One layer of the stacked backbone (the stacked module's graph with a layer's slice).
  gd_blocks, st_blocks = nnx.split(model.resblocks)
  layer0 = nnx.merge(gd_blocks, jax.tree.map(lambda a: a[0], st_blocks))
  if "block" in which:
    gd, st, rest = nnx.split(layer0, nnx.Param, ...)

    def blk(params, x, gd=gd, rest=rest):
      return nnx.merge(gd, params, rest, copy=True)(x, train=True, dtype=dtype, rate=0.0, key=None)

    macs = n * (l * 12 * c * c + 2 * l * l * c)
    out["block_fwd"] = (jax.jit(blk), (st, x), 2 * macs)
    out["block_fwd_bwd"] = _fb(blk, (st, x), (0, 1), 6 * macs)
  if "attention" in which:
    q, k, v = arr(n, l, h, dh), arr(n, l, h, dh), arr(n, l, h, dh)
    macs = 2 * n * l * l * c

    def einsum_attn(q, k, v):
      s = jnp.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(dh)
      return jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(s, -1), v)

    def heads_first(q, k, v):  # [N, H, L, D] operands: batch dims leading for every dot
      qt, kt, vt = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
      s = jnp.einsum("nhqd,nhkd->nhqk", qt, kt) / math.sqrt(dh)
      o = jnp.einsum("nhqk,nhkd->nhqd", jax.nn.softmax(s, -1), vt)
      return o.transpose(0, 2, 1, 3)

    def model_form(q, k, v):  # the model's: heads-first operands, hand-written VJP
      q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
      return ops.attention_heads_first(q, k, v).transpose(0, 2, 1, 3)

    for name, f in (("dpa", jax.nn.dot_product_attention), ("einsum", einsum_attn),
                    ("heads_first", heads_first), ("heads_first_vjp", model_form)):
      out[f"attention_{name}_fwd"] = (jax.jit(f), (q, k, v), 2 * macs)
      out[f"attention_{name}_fwd_bwd"] = _fb(f, (q, k, v), (0, 1, 2), 6 * macs)
  if "qkv" in which:
    w4 = arr(c, 3, h, dh, scale=0.02)
    x3 = x.reshape(n, l, c)
    macs = n * l * 3 * c * c

    def head_structured(x, w):
      return jnp.einsum("nlc,cshd->snlhd", x, w)

    def flat(x, w):
      return (x @ w.reshape(c, 3 * c)).reshape(n, l, 3, h, dh)

    for name, f in (("head_structured", head_structured), ("flat_matmul", flat)):
      out[f"qkv_{name}_fwd_bwd"] = _fb(f, (x3, w4), (0, 1), 6 * macs)
  if "mlp" in which:
    gd, st, rest = nnx.split(layer0.mlp, nnx.Param, ...)

    def mlpf(p, x, gd=gd, rest=rest):
      return nnx.merge(gd, p, rest, copy=True)(x, dtype)

    macs = n * l * 8 * c * c
    out["mlp_fwd"] = (jax.jit(mlpf), (st, x), 2 * macs)
    out["mlp_fwd_bwd"] = _fb(mlpf, (st, x), (0, 1), 6 * macs)
  if "patch_embed" in which:
    gd, st = nnx.split(model.conv1)
    r = cfg.input_resolution
    video = arr(batch, t, r, r, 3)

    def pef(p, v, gd=gd, rest=rest):
      return nnx.merge(gd, p)(v, dtype)

    macs = batch * t * cfg.grid**2 * 3 * cfg.patch_size**2 * c
    out["patch_embed_fwd"] = (jax.jit(pef), (st, video), 2 * macs)
    out["patch_embed_fwd_bwd"] = _fb(pef, (st, video), (0,), 4 * macs)
  if "global" in which:
    # Gradients w.r.t. the global blocks' own parameters only (all of the model's would add
    # zero-filled backbone gradients, ~1.3 s that the train step does not spend here).
    own = nnx.All(nnx.Param, nnx.Any(nnx.PathContains("dpe"), nnx.PathContains("dec")))
    gd, st, rest = nnx.split(model, own, ...)
    feats = arr(cfg.n_layers, batch, t, l, c)

    def glob(p, f, gd=gd, rest=rest):
      m = nnx.merge(gd, p, rest, copy=True)
      q, _ = m._global_branch(f, train=False, key=None)  # noqa: SLF001
      return q

    d, hid, g2 = cfg.n_dim, cfg.global_mlp_dim, cfg.grid**2
    # MACs this port does: DPE, q/k/v-folded attention over T*L tokens, MLP.
    macs = cfg.n_layers * batch * (t * g2 * 27 * d + 3 * t * l * d + 4 * d * d + 2 * d * hid)
    out["global_fwd"] = (jax.jit(glob), (st, feats), 2 * macs)
    g = cfg.grid
    dgd, dst, drest = nnx.split(model.dpe, nnx.Param, ...)
    dst0 = jax.tree.map(lambda a: a[0], dst)
    drest0 = jax.tree.map(lambda a: a[0], drest)
    patches = arr(batch, t, g, g, d)

    def dpef(p, x, gd=dgd, rest=drest0):
      return nnx.merge(gd, p, rest, copy=True)(x, dtype)

    out["dpe_fwd_bwd"] = _fb(dpef, (dst0, patches), (0, 1), 6 * batch * t * g2 * 27 * d)

    def scatter_add(f, pos):  # the DPE output added to the patch tokens (one global block)
      return f.at[:, :, 1:].add(pos.reshape(batch, t, g2, d))

    out["dpe_scatter_add_fwd_bwd"] = _fb(scatter_add, (feats[0], patches), (0, 1), 0)
    egd, est, erest = nnx.split(model.dec, nnx.Param, ...)
    est0 = jax.tree.map(lambda a: a[0], est)
    erest0 = jax.tree.map(lambda a: a[0], erest)
    q0 = arr(batch, d)
    ytok = feats[0].reshape(batch, t * l, d)

    def extf(p, q, y, gd=egd, rest=erest0):
      return nnx.merge(gd, p, rest, copy=True)(q, y, dtype=dtype, rate=0.0, mlp_dropout=0.0,
                                               key=None)

    out["extractor_fwd_bwd"] = _fb(extf, (est0, q0, ytok), (0, 1, 2),
                                   6 * batch * (3 * t * l * d + 4 * d * d + 2 * d * hid))
    out["global_fwd_bwd"] = _fb(glob, (st, feats), (0, 1), 6 * macs)
  if "optimizer" in which:
    params = nnx.state(model, nnx.Param)
    tx = sc.optimizer(params, cfg)
    opt = tx.init(params)

    def upd(p, o, g):
      u, o = tx.update(g, o, p)
      return jax.tree.map(jnp.add, p, u), o

    out["optimizer_update"] = (jax.jit(upd), (params, opt, params), 0)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--precision", default="float32")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--parts", default="block,attention,qkv,mlp,patch_embed,global,optimizer")
  a = p.parse_args(argv)
  cfg = sc.model_config("b16", dtype=a.precision)
  dtype = jnp.dtype(a.precision)
  load0 = sc.loadavg()
  peak = sc.MatmulPeak()
  peak.sample()
  todo = parts(cfg, a.batch, dtype, a.parts.split(","))
  compiled = {}
  for name, (fn, args, flops) in todo.items():
    compiled[name] = (fn.lower(*args).compile(), args, flops)
    jax.block_until_ready(compiled[name][0](*args))
  times = {k: [] for k in compiled}
  for _ in range(a.rounds):
    peak.sample()
    for name, (fn, args, _) in compiled.items():
      times[name].append(sc.time_call(lambda fn=fn, args=args: jax.block_until_ready(fn(*args)),
                                      0.3))
  ref = peak.flops
  print(f"\nB/16 sub-blocks, batch {a.batch}, {a.precision}; f32 matmul {ref / 1e9:.1f} GFLOP/s; "
        f"load average {load0} -> {sc.loadavg()}")
  print(f"{'part':<34}{'ms':>10}{'GFLOP/s':>10}{'of peak':>9}")
  recs = []
  for name, ts in times.items():
    s = sc.median(ts)
    flops = compiled[name][2]
    rec = {"name": name, "seconds": s, "flops": flops, "gflops_per_s": flops / s / 1e9,
           "fraction_of_peak": flops / s / ref, "matmul_f32_gflops_per_s": ref / 1e9,
           "batch": a.batch, "precision": a.precision}
    recs.append(rec)
    print(f"{name:<34}{s * 1e3:>10.1f}{rec['gflops_per_s']:>10.1f}{rec['fraction_of_peak']:>9.2f}")
  for r in recs:
    sc.emit(r)


if __name__ == "__main__":
  host_memory.reexec_with_malloc_tuning()  # huge-page malloc, as main.py
  main()
