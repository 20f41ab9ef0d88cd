"""Backend-specific kernels of the model, and which one runs where.

The model (``uniformerv2_jax/model.py``) states the math once and calls the functions here; each
of them picks one of several forms that compute the same function (the parity tests check every
form against the others or against a plain reference). Timings behind the choices are in
benchmarks/RESULTS.md.

===================  ========================  ===============================================
op                   form                      where, and why
===================  ========================  ===============================================
:func:`attention`    cuDNN fused attention     GPU, bfloat16/float16 (cuDNN's flash kernel
                     (tokens before heads)     exists only for half precision).
:func:`attention`    flat projections +        CPU: plain ``[N*L, C] x [C, 3C]`` / ``[C, C]``
                     :func:`attention_heads_   matmuls; head-structured einsums made XLA:CPU
                     first`                    transpose weights and gradients around the
                                               backward's dots.
:func:`attention`    head-structured einsums   TPU, and GPU in float32: the heads axis stays
                     + :func:`attention_heads_ in the weights' einsums, so a tensor-parallel
                     first`                    mesh keeps them split by head (flattening
                                               ``[C, 3, H, Dh]`` would merge the split axis
                                               into a replicated one).
:func:`depthwise_    27 shifted multiply-adds  CPU: autodiff of the shifted products keeps a
conv3d`              with a hand-written VJP   shifted copy of the input per tap for the
                     (:func:`depthwise_conv3x  kernel gradient (27 copies of every global
                     3x3`)                     block's input); the VJP keeps only the input.
:func:`depthwise_    27 shifted multiply-adds, TPU and GPU: the TPU compiler's memory plans
conv3d`              plain autodiff            were equal or smaller with autodiff (GPU not
                                               measured).
===================  ========================  ===============================================

Every form uses shifted multiply-adds for the depthwise convolution rather than a grouped
``conv_general_dilated``, whose backward pass is much slower on CPU; and every attention form
computes the softmax and its gradient in at least float32.

The platform is the default backend's, or the one set by :func:`target_platform` while tracing
for another device (ahead-of-time compilation of a TPU memory plan on a CPU host).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

# ----------------------------------------------------------------------------- selection
_TARGET_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar(
  "uniformerv2_target_platform", default=None)


@contextlib.contextmanager
def target_platform(platform: str) -> Iterator[None]:
  """Trace the backend-specific forms for ``platform`` ("cpu", "gpu", "tpu") instead of the
  default backend's: for ahead-of-time compilation for other devices."""
  token = _TARGET_PLATFORM.set(platform)
  try:
    yield
  finally:
    _TARGET_PLATFORM.reset(token)


def platform() -> str:
  """The platform the forms are chosen for."""
  return _TARGET_PLATFORM.get() or jax.default_backend()


def use_cudnn_attention(dtype) -> bool:
  """cuDNN's fused attention: GPU only, half precision only."""
  return platform() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)


def use_flat_projections() -> bool:
  """Attention projections as flat matmuls (CPU)."""
  return platform() == "cpu"


def use_dpe_vjp() -> bool:
  """The depthwise convolution with its hand-written VJP (CPU)."""
  return platform() == "cpu"


# ----------------------------------------------------------------------------- attention
def _scores(q: jax.Array, k: jax.Array) -> jax.Array:
  """Scaled ``Q K^T`` per frame and head in >= float32: ``[N, H, Lq, D] x [N, H, Lk, D]``."""
  acc = jnp.promote_types(q.dtype, jnp.float32)
  scale = 1.0 / math.sqrt(q.shape[-1])
  return jnp.einsum("nhqd,nhkd->nhqk", q, k, preferred_element_type=acc) * scale


def _attention_fwd_core(q, k, v):
  p = jax.nn.softmax(_scores(q, k), axis=-1).astype(q.dtype)
  return jnp.einsum("nhqk,nhkd->nhqd", p, v), p


@jax.custom_vjp
def attention_heads_first(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Softmax attention over ``[N, H, L, Dh]`` (heads before tokens), with a hand-written VJP.

  Every product is a dot with leading batch dims, and the backward keeps only the
  probabilities (in the compute dtype; softmax and its gradient run in >= float32) and the
  output: ``dS = P * (dP - rowsum(dO * O))``.
  """
  return _attention_fwd_core(q, k, v)[0]


def _attention_fwd(q, k, v):
  o, p = _attention_fwd_core(q, k, v)
  return o, (q, k, v, o, p)


def _attention_bwd(res, do):
  q, k, v, o, p = res
  acc = jnp.promote_types(q.dtype, jnp.float32)
  dv = jnp.einsum("nhqk,nhqd->nhkd", p, do)
  dp = jnp.einsum("nhqd,nhkd->nhqk", do, v, preferred_element_type=acc)
  delta = jnp.sum(do.astype(acc) * o.astype(acc), axis=-1, keepdims=True)
  ds = (p.astype(acc) * (dp - delta) * (1.0 / math.sqrt(q.shape[-1]))).astype(q.dtype)
  dq = jnp.einsum("nhqk,nhkd->nhqd", ds, k)
  dk = jnp.einsum("nhqk,nhqd->nhkd", ds, q)
  return dq, dk, dv


attention_heads_first.defvjp(_attention_fwd, _attention_bwd)


def _attention_cudnn(x, w_qkv, b_qkv, w_out):
  qkv = checkpoint_name(jnp.einsum("nlc,cshd->snlhd", x, w_qkv) + b_qkv[:, None, None], "qkv")
  out = jax.nn.dot_product_attention(qkv[0], qkv[1], qkv[2], implementation="cudnn")
  return jnp.einsum("nlhd,hdc->nlc", out, w_out)


def _attention_flat(x, w_qkv, b_qkv, w_out):
  n, l, c = x.shape
  _, _, h, dh = w_qkv.shape
  qkv = x.reshape(n * l, c) @ w_qkv.reshape(c, 3 * c) + b_qkv.reshape(3 * c)
  qkv = checkpoint_name(qkv, "qkv").reshape(n, l, 3, h, dh).transpose(2, 0, 3, 1, 4)
  out = attention_heads_first(qkv[0], qkv[1], qkv[2])  # [N, H, L, Dh]
  return (out.transpose(0, 2, 1, 3).reshape(n * l, c) @ w_out.reshape(c, c)).reshape(n, l, c)


def _attention_heads(x, w_qkv, b_qkv, w_out):
  qkv = checkpoint_name(jnp.einsum("nlc,cshd->snhld", x, w_qkv) + b_qkv[:, None, :, None], "qkv")
  out = attention_heads_first(qkv[0], qkv[1], qkv[2])
  return jnp.einsum("nhld,hdc->nlc", out, w_out)


def attention(x: jax.Array, w_qkv: jax.Array, b_qkv: jax.Array, w_out: jax.Array) -> jax.Array:
  """Multi-head self-attention over the tokens of each row, without the output bias.

  ``x [N, L, C]``, ``w_qkv [C, 3, H, Dh]`` (q|k|v), ``b_qkv [3, H, Dh]``, ``w_out [H, Dh, C]``,
  all in the compute dtype; returns ``[N, L, C]``. The q/k/v projection is named ``"qkv"`` for
  the rematerialisation policies. The form is chosen by the module table.
  """
  if use_cudnn_attention(x.dtype):
    return _attention_cudnn(x, w_qkv, b_qkv, w_out)
  if use_flat_projections():
    return _attention_flat(x, w_qkv, b_qkv, w_out)
  return _attention_heads(x, w_qkv, b_qkv, w_out)


# ----------------------------------------------------------------------------- depthwise conv
def shifted_sums(x: jax.Array, k: jax.Array) -> jax.Array:
  """``sum_{a,b,c} pad(x)[:, t+a, h+b, w+c] * k[a, b, c]``: a depthwise 3x3x3 correlation with
  zero padding 1. ``x [B, T, H, W, C]``, ``k [3, 3, 3, C]``. XLA fuses the 27 products into one
  loop."""
  t, h, w = x.shape[1:4]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))
  return sum(xp[:, a : a + t, b : b + h, c : c + w] * k[a, b, c]
             for a in range(3) for b in range(3) for c in range(3))


def _depthwise_kernel_grad(x: jax.Array, dy: jax.Array) -> jax.Array:
  """``dk[a, b, c] = sum over B, T, H, W of pad(x)[:, t+a, h+b, w+c] * dy`` (``[3, 3, 3, C]``),
  accumulated in >= float32 one output frame at a time, so that frame's 3 padded input frames
  and its gradient stay in cache for all 27 products (27 whole-clip reductions would re-read
  both tensors from memory each time)."""
  acc = jnp.promote_types(x.dtype, jnp.float32)
  _, t, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))

  def frame(total, f):
    slab = jax.lax.dynamic_slice_in_dim(xp, f, 3, axis=1)
    d = jax.lax.dynamic_index_in_dim(dy, f, axis=1, keepdims=False)
    sums = [(slab[:, dt, dh : dh + h, dw : dw + w] * d).sum((0, 1, 2), dtype=acc)
            for dt in range(3) for dh in range(3) for dw in range(3)]
    return total + jnp.stack(sums), None

  dk, _ = jax.lax.scan(frame, jnp.zeros((27, c), acc), jnp.arange(t))
  return dk.reshape(3, 3, 3, c).astype(x.dtype)


@jax.custom_vjp
def depthwise_conv3x3x3(x: jax.Array, k: jax.Array) -> jax.Array:
  """:func:`shifted_sums` with a hand-written VJP that keeps only ``x`` for the backward: the
  input gradient is the same correlation of ``dy`` with the flipped kernel, the kernel
  gradient is recomputed from ``x`` (:func:`_depthwise_kernel_grad`)."""
  return shifted_sums(x, k)


def _depthwise_fwd(x, k):
  return shifted_sums(x, k), (x, k)


def _depthwise_bwd(res, dy):
  x, k = res
  return shifted_sums(dy, k[::-1, ::-1, ::-1]), _depthwise_kernel_grad(x, dy)


depthwise_conv3x3x3.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv3d(x: jax.Array, k: jax.Array) -> jax.Array:
  """Depthwise 3x3x3 correlation with zero padding 1, no bias. ``x [B, T, H, W, C]``,
  ``k [3, 3, 3, C]``. The form is chosen by the module table."""
  return depthwise_conv3x3x3(x, k) if use_dpe_vjp() else shifted_sums(x, k)
