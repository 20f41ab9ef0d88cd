"""UniFormerV2 in Flax NNX.

A CLIP ViT runs on every frame (frames folded into the batch), optionally with local temporal
modules (local MHRA) inside each block; after chosen blocks a global UniBlock (DPE + one-query
cross-attention + MLP) updates a single video token; the head reads a learned mix of that token
and the frame-averaged class token.

Layout: video ``[B, T, H, W, 3]`` (channels last), tokens ``[B, T', L, C]`` batch-major with the
class token at ``L = 0`` and patches row-major after it. The backbone blocks are stacked along a
leading layer axis (created with ``nnx.vmap``) and applied with ``jax.lax.scan`` (or a Python loop
over the same body, ``scan_layers=False``), so both paths compute the same thing from the same
parameters. The global branch reads the RETURN_LIST features afterwards; it never feeds back.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from uniformerv2_jax import ops
from uniformerv2_jax.activation_sharding import batch_shards, constrain_batch
from uniformerv2_jax.errors import InputError

# Collections whose parameters carry a leading stacked-layer axis.
STACKED = ("resblocks", "dpe", "dec")

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "qkv_mlp")

# ModelConfig fields that describe the pretrained image tower rather than UniFormerV2 itself.
TOWER_FIELDS = ("activation", "patch_bias", "ln_pre", "layer_norm_eps", "layer_scale")

# Activation of the backbone MLPs. The official model is OpenAI CLIP's QuickGELU; exact (erf)
# GELU is for CLIP towers trained with it (open_clip's LAION ViT-B-16, timm vit_*_clip_*).
ACTIVATIONS = ("quick_gelu", "gelu")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Every option of the official model (official names in comments)."""

  num_classes: int = 400  # MODEL.NUM_CLASSES
  num_frames: int = 8  # DATA.NUM_FRAMES (frames fed to the model)
  input_resolution: int = 224  # backbone_arch.input_resolution
  patch_size: int = 16
  width: int = 768  # C
  layers: int = 12
  heads: int = 12
  temporal_kernel: int = 3  # backbone_arch.kernel_size (conv1 temporal kernel when downsampling)
  temporal_downsample: bool = False  # UNIFORMERV2.TEMPORAL_DOWNSAMPLE
  no_lmhra: bool = True  # UNIFORMERV2.NO_LMHRA
  double_lmhra: bool = True  # UNIFORMERV2.DOUBLE_LMHRA
  dw_reduction: float = 1.5  # UNIFORMERV2.DW_REDUCTION
  return_list: tuple[int, ...] = (8, 9, 10, 11)  # UNIFORMERV2.RETURN_LIST
  n_layers: int = 4  # UNIFORMERV2.N_LAYERS
  n_dim: int = 768  # UNIFORMERV2.N_DIM
  n_head: int = 12  # UNIFORMERV2.N_HEAD
  mlp_factor: float = 4.0  # UNIFORMERV2.MLP_FACTOR
  backbone_drop_path_rate: float = 0.0
  drop_path_rate: float = 0.0
  mlp_dropout: tuple[float, ...] = (0.5, 0.5, 0.5, 0.5)
  cls_dropout: float = 0.5
  frozen: bool = False  # UNIFORMERV2.FROZEN: no `balance`, output = video token, backbone frozen
  # The image tower's own options (TOWER_FIELDS; defaults: OpenAI CLIP, the official model).
  # They follow the tower's pretraining, never the video recipe; the local and global
  # UniFormer blocks and the head are the same for every tower.
  # Backbone MLP activation: quick_gelu (OpenAI CLIP) | gelu (exact erf GELU: open_clip LAION,
  # supervised / DeiT / MAE / DINOv2 ViTs). The global blocks keep QuickGELU either way: the
  # official Extractor hard-codes it, independent of the image tower.
  activation: str = "quick_gelu"
  patch_bias: bool = False  # the patch embedding has a bias (every ViT but CLIP)
  ln_pre: bool = True  # LayerNorm after the embeddings (CLIP's ln_pre, timm's norm_pre)
  layer_norm_eps: float = 1e-5  # the tower's LayerNorms: CLIP 1e-5, timm 1e-6, HF ViT 1e-12
  layer_scale: bool = False  # per-block learned scales of both branches (DINOv2's ls1 / ls2)
  # Training-time BatchNorm (local MHRA) statistics: True = over the whole global batch
  # (synchronised across devices); False = over each batch shard of the mesh (data x fsdp), as
  # the official DDP training with plain BatchNorm3d normalises each GPU's sub-batch
  # (BatchNorm). Evaluation reads the running statistics either way.
  bn_sync: bool = True
  # Implementation choices; none of them changes the numbers.
  scan_layers: bool = True
  remat_policy: str = "none"  # none | full | dots | dots_no_batch | qkv_mlp (_remat)
  dtype: str = "float32"  # compute dtype of matmuls / activations
  param_dtype: str = "float32"

  def __post_init__(self):
    object.__setattr__(self, "return_list", tuple(int(i) for i in self.return_list))
    object.__setattr__(self, "mlp_dropout", tuple(float(p) for p in self.mlp_dropout))
    object.__setattr__(self, "layer_norm_eps", float(self.layer_norm_eps))
    problems = []
    if self.input_resolution % self.patch_size:
      problems.append(
        f"input_resolution {self.input_resolution} is not a multiple of "
        f"patch_size {self.patch_size}"
      )
    if self.width % self.heads:
      problems.append(f"width {self.width} is not divisible by heads {self.heads}")
    if self.n_dim != self.width:
      problems.append(f"n_dim {self.n_dim} must equal the backbone width {self.width}")
    if self.n_dim % self.n_head:
      problems.append(f"n_dim {self.n_dim} is not divisible by n_head {self.n_head}")
    if self.n_layers != len(self.return_list):
      problems.append(f"n_layers {self.n_layers} != len(return_list) {len(self.return_list)}")
    if len(set(self.return_list)) != len(self.return_list):
      problems.append(f"return_list {self.return_list} has duplicates")
    if any(not 0 <= i < self.layers for i in self.return_list):
      problems.append(f"return_list {self.return_list} must index layers 0..{self.layers - 1}")
    if len(self.mlp_dropout) != self.n_layers:
      problems.append(f"mlp_dropout needs {self.n_layers} entries, got {self.mlp_dropout}")
    if self.temporal_downsample and self.num_frames % 2:
      problems.append(f"temporal_downsample needs an even num_frames, got {self.num_frames}")
    if self.activation not in ACTIVATIONS:
      problems.append(f"activation {self.activation!r} not in {ACTIVATIONS}")
    if not 0 < self.layer_norm_eps < 1:
      problems.append(f"layer_norm_eps {self.layer_norm_eps} must be in (0, 1)")
    if self.remat_policy not in REMAT_POLICIES:
      problems.append(f"remat_policy {self.remat_policy!r} not in {REMAT_POLICIES}")
    if problems:
      raise InputError("Invalid UniFormerV2 config: " + "; ".join(problems))

  # Derived sizes (official formulas).
  @property
  def kt(self) -> int:
    return self.temporal_kernel if self.temporal_downsample else 1

  @property
  def frames_inside(self) -> int:
    """T': frames after the patch conv (stride 2 in time with temporal downsampling)."""
    if not self.temporal_downsample:
      return self.num_frames
    pad = (self.kt - 1) // 2
    return (self.num_frames + 2 * pad - self.kt) // 2 + 1

  @property
  def grid(self) -> int:
    return self.input_resolution // self.patch_size

  @property
  def tokens(self) -> int:
    return 1 + self.grid**2

  @property
  def lmhra_dim(self) -> int:
    return int(self.width // self.dw_reduction)  # floors, as the official int(C // r)

  @property
  def global_mlp_dim(self) -> int:
    return round(self.mlp_factor * self.n_dim)  # Python round (banker's), as official

  @property
  def sorted_return_list(self) -> tuple[int, ...]:
    # The official loop visits layers in order and counts global blocks as it meets them.
    return tuple(sorted(self.return_list))

  def replace(self, **kw) -> ModelConfig:
    return dataclasses.replace(self, **kw)

  def tower_changes(self) -> dict[str, Any]:
    """The ``TOWER_FIELDS`` that differ from the official model's (OpenAI CLIP's tower)."""
    official = ModelConfig()
    return {k: getattr(self, k) for k in TOWER_FIELDS if getattr(self, k) != getattr(official, k)}


# ----------------------------------------------------------------------------- initialisers
# Each variable records how it is initialised (``init_spec`` metadata), so ``create_model`` can
# fill a shape-only model on the host with NumPy: constructing through ``jax.random`` costs one
# XLA compilation per distinct shape (tens of seconds on CPU), the host path none.
def _torch_default_uniform(fan_in: int):
  """PyTorch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  return ("uniform", 1.0 / math.sqrt(fan_in))


def _xavier_uniform(fan_in: int, fan_out: int):
  return ("uniform", math.sqrt(6.0 / (fan_in + fan_out)))


def _normal(std: float):
  return ("normal", std)


ZEROS, ONES = ("zeros",), ("ones",)


def _jax_init(spec, key, shape, dtype):
  kind = spec[0]
  if kind == "uniform":
    return jax.random.uniform(key, shape, dtype, -spec[1], spec[1])
  if kind == "normal":
    return spec[1] * jax.random.normal(key, shape, dtype)
  return (jnp.zeros if kind == "zeros" else jnp.ones)(shape, dtype)


def host_init(spec, rng: np.random.Generator, shape, dtype) -> np.ndarray:
  """The same distribution as ``_jax_init``, drawn with NumPy."""
  kind = spec[0]
  if kind == "uniform":
    return rng.uniform(-spec[1], spec[1], shape).astype(dtype)
  if kind == "normal":
    return (spec[1] * rng.standard_normal(shape)).astype(dtype)
  return (np.zeros if kind == "zeros" else np.ones)(shape, dtype)


def _param(rngs: nnx.Rngs | None, spec, shape, dtype) -> nnx.Param:
  key = rngs.params() if spec[0] in ("uniform", "normal") else None
  return nnx.Param(_jax_init(spec, key, tuple(shape), dtype), init_spec=spec)


def _zeros(shape, dtype) -> nnx.Param:
  return _param(None, ZEROS, shape, dtype)


# ----------------------------------------------------------------------------- numerics helpers
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-5) -> jax.Array:
  """LayerNorm computed in (at least) float32 and cast back, like CLIP's fp16-safe LayerNorm."""
  ct = jnp.promote_types(x.dtype, jnp.float32)
  # Rows flattened to 2-D: XLA:CPU's reductions over the last axis of a tensor with a leading 1
  # (batch 1: [1, T, L, C]) were far slower than over [T*L, C] (benchmarks/RESULTS.md).
  xf = x.reshape(-1, x.shape[-1]).astype(ct)
  mean = xf.mean(-1, keepdims=True)
  var = jnp.square(xf - mean).mean(-1, keepdims=True)
  y = (xf - mean) * jax.lax.rsqrt(var + eps) * scale.astype(ct) + bias.astype(ct)
  return y.astype(x.dtype).reshape(x.shape)


def quick_gelu(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(1.702 * x)


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU ``x * Phi(x)`` (erf form), as ``torch.nn.GELU()`` with its default
  ``approximate='none'``. (QuickGELU differs from it by up to 0.02, the tanh approximation
  by up to 5e-4.)"""
  return jax.nn.gelu(x, approximate=False)


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
  """The function of an ``ACTIVATIONS`` name."""
  if name == "quick_gelu":
    return quick_gelu
  if name == "gelu":
    return gelu
  raise ValueError(f"activation {name!r} not in {ACTIVATIONS}")


def drop_path(x: jax.Array, rate, key, mask_shape) -> jax.Array:
  """timm DropPath with a traced rate: one Bernoulli(keep) per index of ``mask_shape``."""
  if key is None:
    return x
  keep = 1.0 - jnp.asarray(rate, jnp.float32)
  mask = jax.random.bernoulli(key, keep, mask_shape)
  scaled = jnp.where(mask, 1.0 / jnp.maximum(keep, 1e-12), 0.0).astype(x.dtype)
  return jnp.where(keep < 1.0, x * scaled, x)


def dropout(x: jax.Array, rate, key) -> jax.Array:
  if key is None:
    return x
  keep = 1.0 - jnp.asarray(rate, jnp.float32)
  mask = jax.random.bernoulli(key, keep, x.shape)
  scaled = jnp.where(mask, 1.0 / jnp.maximum(keep, 1e-12), 0.0).astype(x.dtype)
  return jnp.where(keep < 1.0, x * scaled, x)


def _split(key, n):
  return (None,) * n if key is None else tuple(jax.random.split(key, n))


# ----------------------------------------------------------------------------- modules
class LayerNorm(nnx.Module):
  def __init__(self, dim: int, *, param_dtype, eps: float = 1e-5):
    self.eps = eps  # a float: static graph data
    self.scale = _param(None, ONES, (dim,), param_dtype)
    self.bias = _zeros((dim,), param_dtype)

  def __call__(self, x):
    return layer_norm(x, self.scale[...], self.bias[...], self.eps)


class Dense(nnx.Module):
  """A Linear layer whose kernel is ``[in, out]`` (the transpose of torch's weight)."""

  def __init__(self, din, dout, *, rngs, param_dtype, kernel_init=None, bias_init=None):
    kernel_init = kernel_init or _torch_default_uniform(din)
    self.kernel = _param(rngs, kernel_init, (din, dout), param_dtype)
    self.bias = _param(rngs, bias_init or _torch_default_uniform(din), (dout,), param_dtype)

  def __call__(self, x, dtype):
    y = jnp.einsum("...i,io->...o", x.astype(dtype), self.kernel[...].astype(dtype))
    return y + self.bias[...].astype(dtype)


class MultiHeadAttention(nnx.Module):
  """torch.nn.MultiheadAttention's parameters, kept head-structured.

  ``in_proj.kernel [C, 3, H, Dh]`` (q|k|v like torch's packed rows), ``in_proj.bias [3C]``,
  ``out_proj.kernel [H, Dh, C]``, ``out_proj.bias [C]``. Biases stay 1-D so that the official
  weight-decay rule (decay only tensors with >= 2 dims) reads the same on both sides.
  """

  def __init__(self, dim: int, heads: int, *, rngs, param_dtype, zero_out: bool = False):
    self.heads = heads
    dh = dim // heads
    xavier = _xavier_uniform(dim, 3 * dim)  # torch's xavier over the packed [3C, C] matrix
    self.in_proj_kernel = _param(rngs, xavier, (dim, 3, heads, dh), param_dtype)
    self.in_proj_bias = _zeros((3 * dim,), param_dtype)
    if zero_out:
      self.out_proj_kernel = _zeros((heads, dh, dim), param_dtype)
    else:
      self.out_proj_kernel = _param(rngs, _torch_default_uniform(dim), (heads, dh, dim),
                                    param_dtype)
    self.out_proj_bias = _zeros((dim,), param_dtype)

  def qkv_bias(self, dtype):
    """``[3, H, Dh]`` with the key part zeroed: adding a constant to every key of a query
    shifts all its scores equally, which softmax ignores, so the key bias never changes the
    output. Leaving it out makes its gradient exactly 0 instead of float round-off, which Adam
    would otherwise turn into +-lr updates that differ between any two reduction orders."""
    c = self.in_proj_bias.shape[0] // 3
    b = self.in_proj_bias[...].reshape(3, self.heads, c // self.heads).astype(dtype)
    return b * jnp.asarray([1, 0, 1], dtype)[:, None, None]

  def self_attention(self, x, dtype):
    """Per-frame attention over the L tokens. ``x [N, L, C]`` -> ``[N, L, C]`` (the kernel
    form follows the backend: :func:`uniformerv2_jax.ops.attention`)."""
    y = ops.attention(x.astype(dtype), self.in_proj_kernel[...].astype(dtype), self.qkv_bias(dtype),
                      self.out_proj_kernel[...].astype(dtype))
    return y + self.out_proj_bias[...].astype(dtype)

  def query_attention(self, q, y, dtype):
    """One query per clip over all of its tokens (the Extractor). ``q [B, C]``, ``y [B, S, C]``.

    Computed without materialising K and V for the S tokens: the query is pulled through the
    key projection (``q·(W_k y + b_k) = (W_k^T q)·y + const``; the constant per head cancels in
    the softmax) and the value projection is applied after the weighted sum of the tokens
    (softmax weights sum to 1, so ``Σ a_s (W_v y_s + b_v) = W_v (Σ a_s y_s) + b_v``). Same math
    as the official code, ~H/C of its FLOPs.
    """
    w = self.in_proj_kernel[...].astype(dtype)
    bias = self.qkv_bias(dtype)
    dh = w.shape[-1]
    qh = jnp.einsum("bc,chd->bhd", q.astype(dtype), w[:, 0]) + bias[0]
    qk = jnp.einsum("bhd,chd->bhc", qh, w[:, 1])  # query folded into the key projection
    scores = jnp.einsum("bhc,bsc->bhs", qk, y.astype(dtype))
    scores = scores.astype(jnp.promote_types(dtype, jnp.float32))  # softmax in >= f32
    attn = jax.nn.softmax(scores / math.sqrt(dh), axis=-1).astype(dtype)
    pooled = jnp.einsum("bhs,bsc->bhc", attn, y.astype(dtype))
    out = jnp.einsum("bhc,chd->bhd", pooled, w[:, 2]) + bias[2]
    y = jnp.einsum("bhd,hdc->bc", out, self.out_proj_kernel[...].astype(dtype))
    return y + self.out_proj_bias[...].astype(dtype)


class MLP(nnx.Module):
  def __init__(self, dim, hidden, *, rngs, param_dtype, xavier_fc=False, zero_proj=False,
               activation: str = "quick_gelu"):
    activation_fn(activation)  # an unknown name fails here, at construction
    self.activation = activation  # a string: static graph data, not a variable
    fc_init = _xavier_uniform(dim, hidden) if xavier_fc else None
    self.c_fc = Dense(dim, hidden, rngs=rngs, param_dtype=param_dtype, kernel_init=fc_init)
    if zero_proj:
      self.c_proj = Dense(hidden, dim, rngs=rngs, param_dtype=param_dtype, kernel_init=ZEROS,
                          bias_init=ZEROS)
    else:
      self.c_proj = Dense(hidden, dim, rngs=rngs, param_dtype=param_dtype)

  def __call__(self, x, dtype, dropout_rate=0.0, key=None):
    h = activation_fn(self.activation)(checkpoint_name(self.c_fc(x, dtype), "mlp_hidden"))
    h = dropout(h, dropout_rate, key)
    return self.c_proj(h, dtype)


class Count(nnx.BatchStat):
  """BatchNorm's ``num_batches_tracked`` (kept so checkpoints round-trip exactly)."""


class BatchNorm(nnx.Module):
  """torch BatchNorm3d semantics: biased variance to normalise, unbiased in the running var.

  Training statistics cover the whole batch (``sync=True``) or, with ``sync=False``, each batch
  shard separately: the batch ``[B, ...]`` is cut into ``G`` contiguous blocks of ``B / G``
  clips, ``G`` the number of batch shards of the mesh the step traces under
  (:func:`~uniformerv2_jax.activation_sharding.batch_shards`; 1 without a mesh). The batch
  sharding gives device ``g`` (in data x fsdp order) exactly block ``g``, so each device
  normalises its own sub-batch with its own mean and variance, and the gradients are those of
  that per-device computation, as under PyTorch DDP with plain BatchNorm3d (devices along the
  ``tensor`` axis hold the same shard, hence the same statistics). The running
  statistics then take block 0's batch statistics: DDP (``broadcast_buffers=True``) copies
  rank 0's buffers to every rank before each forward and the official checkpoints are saved
  by rank 0, so the official running statistics are one replica's, updated from its own
  sub-batches only.

  The groups are a reshape, not a ``shard_map``: the numbers follow from the grouping alone,
  whatever the partitioner does and with no mesh at all, and nothing has to be threaded through
  the layer scan, remat and ``jax.grad``; a sharding constraint keeps each group on its device.
  """

  def __init__(self, dim, *, param_dtype, momentum=0.1, eps=1e-5, sync=True):
    self.momentum, self.eps, self.sync = momentum, eps, sync
    self.scale = _param(None, ONES, (dim,), param_dtype)
    self.bias = _zeros((dim,), param_dtype)
    self.mean = nnx.BatchStat(jnp.zeros((dim,), param_dtype), init_spec=ZEROS)
    self.var = nnx.BatchStat(jnp.ones((dim,), param_dtype), init_spec=ONES)
    self.num_batches_tracked = Count(jnp.zeros((), jnp.int32), init_spec=ZEROS)

  def __call__(self, x, train: bool):
    ct = jnp.promote_types(x.dtype, jnp.float32)
    groups = 1 if self.sync or not train else batch_shards()
    if x.shape[0] % groups:
      raise InputError(f"per-device BatchNorm (bn_sync=False): batch {x.shape[0]} does not "
                       f"split over the mesh's {groups} batch shards")
    # [G, B/G * ..., C]: row-major, so group g holds batch rows g*B/G .. (g+1)*B/G - 1.
    xg = x.reshape(groups, -1, x.shape[-1]).astype(ct)
    if groups > 1:
      xg = constrain_batch(xg)  # each group stays on the device whose batch shard it is
    if train:
      mean = xg.mean(1, keepdims=True)
      var = jnp.square(xg - mean).mean(1, keepdims=True)
      self._update_running(mean[0, 0], var[0, 0], xg.shape[1])
    else:
      mean, var = self.mean[...].astype(ct), self.var[...].astype(ct)
    y = (xg - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...].astype(ct)
    return (y + self.bias[...].astype(ct)).astype(x.dtype).reshape(x.shape)

  def _update_running(self, mean, var, n):
    """Momentum update from one group's biased batch moments over ``n`` positions."""
    m = self.momentum
    rm, rv = self.mean[...], self.var[...]
    self.mean[...] = ((1 - m) * rm + m * jax.lax.stop_gradient(mean)).astype(rm.dtype)
    unbiased = var * (n / max(n - 1, 1))
    self.var[...] = ((1 - m) * rv + m * jax.lax.stop_gradient(unbiased)).astype(rv.dtype)
    self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1


class LocalMHRA(nnx.Module):
  """BN -> 1x1x1 conv (C->R) -> depthwise temporal conv (3,1,1) -> 1x1x1 conv (R->C).

  The 1x1x1 convs are Dense layers over channels; the depthwise conv is three shifted
  multiply-adds along T'. The last conv starts at zero, so the branch starts as an identity.
  """

  def __init__(self, dim, reduced, *, rngs, param_dtype, bn_sync=True):
    self.bn = BatchNorm(dim, param_dtype=param_dtype, sync=bn_sync)
    self.down = Dense(dim, reduced, rngs=rngs, param_dtype=param_dtype)
    self.dw_kernel = _param(rngs, _torch_default_uniform(3), (3, reduced), param_dtype)
    self.dw_bias = _param(rngs, _torch_default_uniform(3), (reduced,), param_dtype)
    self.up = Dense(reduced, dim, rngs=rngs, param_dtype=param_dtype, kernel_init=ZEROS,
                    bias_init=ZEROS)

  def __call__(self, x, train: bool, dtype):
    """``x [B, T', g*g, C]`` patch tokens -> branch output of the same shape."""
    h = self.down(self.bn(x, train), dtype)
    w = self.dw_kernel[...].astype(dtype)
    hp = jnp.pad(h, ((0, 0), (1, 1), (0, 0), (0, 0)))
    t = h.shape[1]
    h = hp[:, :t] * w[0] + hp[:, 1 : t + 1] * w[1] + hp[:, 2 : t + 2] * w[2]
    h = h + self.dw_bias[...].astype(dtype)
    return self.up(h, dtype)


class ResidualBlock(nnx.Module):
  """Local UniBlock: [LMHRA-1] -> MHSA -> [LMHRA-2] -> FFN, each a residual branch."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    pd = cfg.param_dtype
    c = cfg.width
    if not cfg.no_lmhra:
      self.lmhra1 = LocalMHRA(c, cfg.lmhra_dim, rngs=rngs, param_dtype=pd, bn_sync=cfg.bn_sync)
      if cfg.double_lmhra:
        self.lmhra2 = LocalMHRA(c, cfg.lmhra_dim, rngs=rngs, param_dtype=pd,
                                bn_sync=cfg.bn_sync)
    eps = cfg.layer_norm_eps
    self.attn = MultiHeadAttention(c, cfg.heads, rngs=rngs, param_dtype=pd)
    self.ln_1 = LayerNorm(c, param_dtype=pd, eps=eps)
    self.mlp = MLP(c, 4 * c, rngs=rngs, param_dtype=pd, activation=cfg.activation)
    self.ln_2 = LayerNorm(c, param_dtype=pd, eps=eps)
    if cfg.layer_scale:
      # DINOv2's LayerScale: a learned per-channel gain on each branch. A tower's own values
      # replace the ones a fresh model starts from (the plain pre-norm block).
      self.ls_1 = _param(None, ONES, (c,), pd)
      self.ls_2 = _param(None, ONES, (c,), pd)

  def _lmhra(self, module: LocalMHRA, x, train, dtype, rate, key):
    patches = x[:, :, 1:]
    branch = module(patches, train, dtype)
    # timm DropPath on a [B, C, T, H, W] input: one draw per clip.
    branch = drop_path(branch, rate, key, (x.shape[0], 1, 1, 1))
    return x.at[:, :, 1:].add(branch.astype(x.dtype))

  def __call__(self, x, *, train: bool, dtype, rate, key):
    """``x [B, T', L, C]``. ``rate``: this layer's drop-path rate; ``key``: None = no dropping."""
    b, t, l, c = x.shape
    keys = _split(key, 4)
    # The official blocks run sequence-first [L, B*T', C], so their DropPath draws one mask
    # entry per token position, shared by every clip and frame.
    token_mask = (1, 1, l, 1)
    if hasattr(self, "lmhra1"):
      x = self._lmhra(self.lmhra1, x, train, dtype, rate, keys[0])
    x = checkpoint_name(x, "residual")  # the residual stream between branches (remat qkv_mlp)
    h = self.attn.self_attention(self.ln_1(x).reshape(b * t, l, c), dtype).reshape(b, t, l, c)
    if hasattr(self, "ls_1"):
      h = h * self.ls_1[...].astype(h.dtype)
    x = checkpoint_name(x + drop_path(h, rate, keys[1], token_mask).astype(x.dtype), "residual")
    if hasattr(self, "lmhra2"):
      x = checkpoint_name(self._lmhra(self.lmhra2, x, train, dtype, rate, keys[2]), "residual")
    h = self.mlp(self.ln_2(x), dtype)
    if hasattr(self, "ls_2"):
      h = h * self.ls_2[...].astype(h.dtype)
    x = x + drop_path(h, rate, keys[3], token_mask).astype(x.dtype)
    return x


class DepthwiseConv3d(nnx.Module):
  """DPE: depthwise 3x3x3 conv (zero padding 1), kernel ``[3, 3, 3, 1, C]`` (DHWIO).

  The convolution itself is :func:`uniformerv2_jax.ops.depthwise_conv3d` (its form follows the
  backend).
  """

  def __init__(self, dim, *, rngs, param_dtype):
    self.kernel = _param(rngs, _torch_default_uniform(27), (3, 3, 3, 1, dim), param_dtype)
    self.bias = _zeros((dim,), param_dtype)

  def __call__(self, x, dtype):
    """``x [B, T', g, g, C]``."""
    k = self.kernel[...].astype(dtype)[:, :, :, 0]
    return ops.depthwise_conv3d(x.astype(dtype), k) + self.bias[...].astype(dtype)


class Extractor(nnx.Module):
  """Global UniBlock's cross-attention + MLP updating the video token (``dec.j``)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, pd = cfg.n_dim, cfg.param_dtype
    self.attn = MultiHeadAttention(d, cfg.n_head, rngs=rngs, param_dtype=pd, zero_out=True)
    self.ln_1 = LayerNorm(d, param_dtype=pd)
    # QuickGELU whatever cfg.activation says: the official Extractor defines its own MLP with
    # QuickGELU; only the image tower's blocks follow the tower's training activation.
    self.mlp = MLP(d, cfg.global_mlp_dim, rngs=rngs, param_dtype=pd, xavier_fc=True,
                   zero_proj=True, activation="quick_gelu")
    self.ln_2 = LayerNorm(d, param_dtype=pd)
    self.ln_3 = LayerNorm(d, param_dtype=pd)

  def __call__(self, q, y, *, dtype, rate, mlp_dropout, key):
    """``q [B, D]`` video token, ``y [B, S, D]`` all tokens of the clip."""
    keys = _split(key, 3)
    # The official global block sees [1, B, D]: a DropPath draw drops the branch for the batch.
    h = self.attn.query_attention(self.ln_1(q), self.ln_3(y), dtype)
    q = q + drop_path(h, rate, keys[0], ()).astype(q.dtype)
    h = self.mlp(self.ln_2(q), dtype, mlp_dropout, keys[1])
    return q + drop_path(h, rate, keys[2], ()).astype(q.dtype)


class PatchEmbed(nnx.Module):
  """conv1: Conv3d, kernel (kt, p, p), stride (kt>1 ? 2 : 1, p, p); a bias only for towers
  that have one (``patch_bias``: not CLIP).

  Computed as one matmul over gathered patches: ``kernel [kt, p, p, 3, C]``.
  """

  def __init__(self, cfg: ModelConfig, *, rngs):
    kt, p, c = cfg.kt, cfg.patch_size, cfg.width
    self.kt, self.p = kt, p
    fan_in = 3 * kt * p * p
    self.kernel = _param(rngs, _torch_default_uniform(fan_in), (kt, p, p, 3, c), cfg.param_dtype)
    if cfg.patch_bias:
      self.bias = _param(rngs, _torch_default_uniform(fan_in), (c,), cfg.param_dtype)

  def __call__(self, x, dtype):
    y = self._conv(x, dtype)
    return y + self.bias[...].astype(dtype) if hasattr(self, "bias") else y

  def _conv(self, x, dtype):
    b, t, h, w, ch = x.shape
    p, kt = self.p, self.kt
    gh, gw = h // p, w // p
    x = x.astype(dtype).reshape(b, t, gh, p, gw, p, ch).transpose(0, 1, 2, 4, 3, 5, 6)
    k = self.kernel[...].astype(dtype)
    if kt == 1:
      return jnp.einsum("bthwijc,ijcd->bthwd", x, k[0])
    pad = (kt - 1) // 2
    xp = jnp.pad(x, ((0, 0), (pad, pad)) + ((0, 0),) * 5)
    t_out = (t + 2 * pad - kt) // 2 + 1
    taps = jnp.stack([xp[:, i : i + 2 * (t_out - 1) + 1 : 2] for i in range(kt)], axis=2)
    return jnp.einsum("btkhwijc,kijcd->bthwd", taps, k)


def _stacked(n: int, make, rngs: nnx.Rngs):
  """Create ``n`` copies of a module with parameters stacked along a leading axis."""

  @nnx.split_rngs(splits=n)
  @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=n)
  def create(r: nnx.Rngs):
    return make(r)

  return create(rngs)


def _remat(fn, policy: str):
  """Rematerialisation of one backbone layer. ``qkv_mlp`` saves only the q/k/v projection, the
  MLP's hidden pre-activation and the residual stream between branches (everything else is
  recomputed). ``dots`` saves every dot output, each a stacked write, a read and a
  zero-initialised buffer per step; on XLA:CPU ``qkv_mlp`` needs less temporary memory and was
  usually faster (benchmarks/RESULTS.md)."""
  if policy == "none":
    return fn
  policies = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "qkv_mlp": jax.checkpoint_policies.save_only_these_names("qkv", "mlp_hidden", "residual"),
  }
  return jax.checkpoint(fn, policy=policies[policy], prevent_cse=False)


def _apply_stacked(module: nnx.Module, body, xs, carry, *, scan: bool, remat: str,
                   emit: bool):
  """Run ``body(carry, layer_module, x) -> (carry, out)`` over a stacked module.

  Scanned (``jax.lax.scan``) or looped in Python over the same body and the same stacked
  parameters, so the two give the same numbers. BatchNorm statistics updated inside the body
  are written back to ``module``. Returns ``(carry, stacked outputs or None)``.
  """
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)

  def step(c, inputs):
    layer_params, layer_rest, x = inputs
    layer = nnx.merge(graphdef, layer_params, layer_rest)
    c, out = body(c, layer, x)
    _, _, new_rest = nnx.split(layer, nnx.Param, ...)
    return c, (new_rest, out if emit else None)

  step = _remat(step, remat)
  n = jax.tree.leaves(params)[0].shape[0]
  if scan:
    carry, (new_rest, outs) = jax.lax.scan(step, carry, (params, rest, xs))
  else:
    rests, outs_list = [], []
    for i in range(n):
      sl = jax.tree.map(lambda a, i=i: a[i], (params, rest, xs))
      carry, (r, o) = step(carry, sl)
      rests.append(r)
      outs_list.append(o)
    new_rest = jax.tree.map(lambda *a: jnp.stack(a), *rests) if jax.tree.leaves(rest) else rest
    outs = jax.tree.map(lambda *a: jnp.stack(a), *outs_list) if emit else None
  if jax.tree.leaves(rest):
    nnx.update(module, new_rest)
  return carry, outs


class UniFormerV2(nnx.Module):
  """The video model. ``model(x)`` with ``x [B, T, H, W, 3]`` float returns logits ``[B, K]``."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    c, d, pd = cfg.width, cfg.n_dim, cfg.param_dtype
    self.conv1 = PatchEmbed(cfg, rngs=rngs)
    self.class_embedding = _param(rngs, _normal(c**-0.5), (c,), pd)
    self.positional_embedding = _param(rngs, _normal(c**-0.5), (cfg.tokens, c), pd)
    if cfg.ln_pre:
      self.ln_pre = LayerNorm(c, param_dtype=pd, eps=cfg.layer_norm_eps)
    self.resblocks = _stacked(cfg.layers, lambda r: ResidualBlock(cfg, rngs=r), rngs)
    self.temporal_cls_token = _zeros((1, 1, d), pd)
    if not cfg.frozen:
      self.balance = _zeros((d,), pd)
    self.dpe = _stacked(cfg.n_layers, lambda r: DepthwiseConv3d(d, rngs=r, param_dtype=pd), rngs)
    self.dec = _stacked(cfg.n_layers, lambda r: Extractor(cfg, rngs=r), rngs)
    self.head_norm = LayerNorm(d, param_dtype=pd)  # official transformer.proj.0
    self.head = Dense(d, cfg.num_classes, rngs=rngs, param_dtype=pd)  # transformer.proj.2
    # Train/eval switches, flipped by ``model.train()`` / ``model.eval()``.
    self.deterministic = False
    self.use_running_average = False
    # Dropout / drop-path randomness when training without an explicit key.
    self.rngs = nnx.Rngs(dropout=rngs.dropout())

  # -- pieces -----------------------------------------------------------------------------
  def stem(self, x: jax.Array) -> jax.Array:
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    b, t, h, w, ch = x.shape if x.ndim == 5 else (0,) * 5
    # No parameter depends on T (the official +K710 16/32/64-frame recipes load 8-frame
    # weights), so any frame count works; the resolution is fixed by the positional embedding.
    if x.ndim != 5 or h != w or h != cfg.input_resolution or ch != 3 or t < 1 or (
        cfg.temporal_downsample and t % 2):
      even = "; T even with temporal downsampling" if cfg.temporal_downsample else ""
      raise ValueError(
        f"UniFormerV2 expects input [B, T, {cfg.input_resolution}, {cfg.input_resolution}, 3] "
        f"(B, T, H, W, RGB{even}); got {tuple(x.shape)}"
      )
    x = self.conv1(x, dtype)  # [B, T', g, g, C]
    b, tp, g, _, c = x.shape
    x = x.reshape(b, tp, g * g, c)
    cls = jnp.broadcast_to(self.class_embedding[...].astype(dtype), (b, tp, 1, c))
    x = jnp.concatenate([cls, x], axis=2) + self.positional_embedding[...].astype(dtype)
    return constrain_batch(self.ln_pre(x) if self.cfg.ln_pre else x)

  def _backbone(self, x, *, batch_stats, key):
    """Returns the last block's output and every block's output (stacked ``[LAYERS, ...]``)."""
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    rates = jnp.asarray(np.linspace(0, cfg.backbone_drop_path_rate, cfg.layers), jnp.float32)
    keys = None if key is None else jax.random.split(key, cfg.layers)

    def body(carry, layer, xs):
      rate, k = xs
      # Block inputs and outputs stay split over the batch axes (see activation_sharding).
      y = constrain_batch(layer(constrain_batch(carry), train=batch_stats, dtype=dtype,
                                rate=rate, key=k))
      return y, y

    # One scan over all layers, every output emitted (the RETURN_LIST ones are picked after).
    # Scanning the layers before the first RETURN_LIST layer separately would save stacking
    # their outputs, but the backward then assembles every stacked weight's gradient from two
    # padded halves: on XLA:CPU that cost more time and more temporary memory than the outputs
    # (benchmarks/RESULTS.md).
    return _apply_stacked(self.resblocks, body, (rates, keys), x, scan=cfg.scan_layers,
                          remat=cfg.remat_policy, emit=True)

  def _global_branch(self, features, *, train, key):
    """features ``[N_LAYERS, B, T', L, D]`` -> video token after each global block."""
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    n, b, tp, l, d = features.shape
    g = cfg.grid
    rates = jnp.asarray(np.linspace(0, cfg.drop_path_rate, cfg.n_layers), jnp.float32)
    mlp_drop = jnp.asarray(cfg.mlp_dropout, jnp.float32)
    keys = None if key is None else jax.random.split(key, cfg.n_layers)
    q0 = jnp.broadcast_to(self.temporal_cls_token[...].reshape(1, d), (b, d)).astype(dtype)
    dpe_graph, dpe_state = nnx.split(self.dpe)

    def body(q, dec, xs):
      feat, dpe_params, rate, drop, k = xs
      dpe = nnx.merge(dpe_graph, dpe_params)
      patches = feat[:, :, 1:].reshape(b, tp, g, g, d)
      pos = dpe(patches, dtype).reshape(b, tp, g * g, d)
      y = constrain_batch(feat.at[:, :, 1:].add(pos.astype(feat.dtype)).reshape(b, tp * l, d))
      q = dec(q, y, dtype=dtype, rate=rate, mlp_dropout=drop if train else 0.0, key=k)
      return q, q

    # A Python loop even when the backbone is scanned: only a few blocks, and XLA:CPU runs
    # this scan body slower than the unrolled blocks (benchmarks/RESULTS.md).
    q, tokens = _apply_stacked(self.dec, body, (features, dpe_state, rates, mlp_drop, keys), q0,
                               scan=False, remat="none", emit=True)
    return q, tokens

  # -- forward ----------------------------------------------------------------------------
  def __call__(self, x: jax.Array, *, train: bool | None = None, key: jax.Array | None = None,
               return_intermediates: bool = False, return_features: bool = False):
    """Logits ``[B, K]``; with ``return_features`` also the fused pre-head vector ``[B, D]``;
    with ``return_intermediates`` a dict of every named intermediate instead.

    ``train`` defaults to the module's mode (``model.train()`` / ``model.eval()``). In training,
    dropout and drop path draw from ``key`` (or the module's own ``rngs`` when ``key`` is None)
    and BatchNorm uses batch statistics and updates its running statistics.

    Called outside any JAX transformation in eval mode, the forward runs as one compiled program
    (:func:`compiled_eval_forward`: compiled once per input shape and dtype, reading the current
    parameter values on every call). Inside a transformation (``jax.jit``, ``nnx.jit``, grad,
    ``eval_shape``) and in training it is :meth:`forward` itself, traced by the caller.
    """
    evaluating = train is False or (
      train is None and self.deterministic and self.use_running_average)
    if evaluating:
      graphdef, state = nnx.split(self)
      if not any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves((state, x))):
        return compiled_eval_forward(graphdef, state, x, return_intermediates=return_intermediates,
                                     return_features=return_features)
    return self.forward(x, train=train, key=key, return_intermediates=return_intermediates,
                        return_features=return_features)

  def forward(self, x: jax.Array, *, train: bool | None = None, key: jax.Array | None = None,
              return_intermediates: bool = False, return_features: bool = False):
    """The forward pass as JAX operations (what :meth:`__call__` computes), run op by op when
    called outside a transformation."""
    cfg = self.cfg
    # An explicit `train` sets both behaviours; otherwise each follows its module switch.
    batch_stats = (not self.use_running_average) if train is None else train
    train = (not self.deterministic) if train is None else train
    stochastic = train and (
      cfg.backbone_drop_path_rate > 0 or cfg.drop_path_rate > 0 or cfg.cls_dropout > 0
      or any(p > 0 for p in cfg.mlp_dropout)
    )
    if stochastic and key is None:
      key = self.rngs.dropout()
    k_backbone, k_global, k_head = _split(key if stochastic else None, 3)

    inter: dict[str, Any] = {}
    x = self.stem(x)
    if return_intermediates:
      inter["stem"] = x
    last, outs = self._backbone(x, batch_stats=batch_stats, key=k_backbone)
    if return_intermediates:
      for i in range(cfg.layers):
        inter[f"block_{i:02d}"] = outs[i]
    picks = cfg.sorted_return_list
    contiguous = picks == tuple(range(picks[0], picks[-1] + 1))
    features = outs[picks[0] : picks[-1] + 1] if contiguous else outs[np.asarray(picks)]
    if cfg.frozen:
      # FROZEN recipes never update the CLIP backbone: stop the backward pass at its outputs
      # (about 2/3 of a training step's backward is skipped; the optimizer zeroes those
      # parameters' updates anyway).
      last, features = jax.lax.stop_gradient(last), jax.lax.stop_gradient(features)
    q, tokens = self._global_branch(features, train=train, key=k_global)
    if return_intermediates:
      for j in range(cfg.n_layers):
        inter[f"global_{j:02d}"] = tokens[j]
    fused = self.fuse(q, last)
    inter["fused"] = fused
    logits = self.classify(fused, train=train, key=k_head)
    if return_intermediates:
      return logits, inter
    return (logits, fused) if return_features else logits

  def fuse(self, q: jax.Array, last: jax.Array) -> jax.Array:
    """Mix the video token with the frame-mean class token of the last block."""
    if self.cfg.frozen:
      return q
    w = jax.nn.sigmoid(self.balance[...].astype(q.dtype))
    residual = last[:, :, 0].mean(axis=1).astype(q.dtype)
    return (1 - w) * q + w * residual

  def classify(self, fused: jax.Array, *, train: bool = False, key=None) -> jax.Array:
    h = self.head_norm(fused)
    if train:
      h = dropout(h, self.cfg.cls_dropout, key)
    # Logits leave in (at least) float32 whatever the compute dtype.
    dtype = jnp.dtype(self.cfg.dtype)
    return self.head(h, dtype).astype(jnp.promote_types(dtype, jnp.float32))


@functools.partial(jax.jit, static_argnums=(0,),
                   static_argnames=("return_intermediates", "return_features"))
def compiled_eval_forward(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, *,
                          return_intermediates: bool = False, return_features: bool = False):
  """The eval-mode forward of the model ``nnx.merge(graphdef, state)`` as one compiled program.

  The parameters are an argument, so edits to a model's variables are seen by its next call;
  ``jax.jit`` keeps one executable per graph, input shape/dtype and output options. The eval
  forward writes no state (BatchNorm reads its running statistics, nothing draws randomness),
  so nothing has to be merged back into the caller's model.
  """
  model = nnx.merge(graphdef, state)
  return model.forward(x, train=False, return_intermediates=return_intermediates,
                       return_features=return_features)


def count_params(model_or_state) -> int:
  """Number of trainable parameters (nnx.Param leaves), BatchNorm statistics excluded."""
  state = nnx.state(model_or_state, nnx.Param) if isinstance(model_or_state, nnx.Module) \
    else model_or_state
  return int(sum(math.prod(a.shape) for a in jax.tree.leaves(state)))


def create_model(cfg: ModelConfig, seed: int = 0,
                 values: Mapping[tuple[str, ...], Any] | None = None) -> UniFormerV2:
  """A model in eval mode: variables from ``values`` ({path: array}) where given, the official
  initialisation (drawn on the host from ``seed``) elsewhere."""
  abstract = abstract_model(cfg, seed)
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(seed)
  values = values or {}
  fresh_rngs = {tuple(str(k) for k in p): v
                for p, v in nnx.to_flat_state(nnx.state(nnx.Rngs(dropout=seed + 1)))}
  leaves = []
  for path, var in nnx.to_flat_state(state):
    names = tuple(str(k) for k in path)
    a = var.get_value()
    if names[0] == "rngs":
      value = fresh_rngs[names[1:]].get_value()
    elif names in values:
      value = jnp.asarray(values[names], dtype=a.dtype)
      if value.shape != a.shape:
        raise ValueError(f"{'/'.join(names)}: shape {value.shape}, the model has {a.shape}")
    else:
      value = jnp.asarray(host_init(var.get_metadata()["init_spec"], rng, a.shape, a.dtype))
    leaves.append((path, var.replace(value)))
  model = nnx.merge(graphdef, nnx.from_flat_state(leaves))
  model.eval()
  return model


def abstract_model(cfg: ModelConfig, seed: int = 0) -> UniFormerV2:
  """Shapes and dtypes only (``jax.ShapeDtypeStruct`` leaves): no memory is allocated."""

  def build():
    model = UniFormerV2(cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    model.eval()
    return model

  return nnx.eval_shape(build)
