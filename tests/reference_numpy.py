"""An independent float64 NumPy forward of the official UniFormerV2, written from the spec.

It works on the official state dict (torch names and layouts, ``backbone.`` prefix stripped) and
follows the official code's sequence-first layout step by step, so it shares nothing with the
Flax model but the config. Checked against the fixtures' float64 logits; then used to check the
port on configurations the fixtures do not cover.
"""

from __future__ import annotations

import numpy as np


def _ln(x, w, b, eps=1e-5):
  m = x.mean(-1, keepdims=True)
  v = ((x - m) ** 2).mean(-1, keepdims=True)
  return (x - m) / np.sqrt(v + eps) * w + b


def _qgelu(x):
  return x / (1.0 + np.exp(-1.702 * x))


def _softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _mha(x, sd, pre, heads):
  """torch MultiheadAttention, sequence-first x [L, N, C], self-attention, no mask."""
  l, n, c = x.shape
  qkv = x @ sd[f"{pre}.in_proj_weight"].T + sd[f"{pre}.in_proj_bias"]
  q, k, v = np.split(qkv, 3, axis=-1)
  dh = c // heads

  def split(t):  # [L, N, C] -> [N, H, L, Dh]
    return t.reshape(l, n, heads, dh).transpose(1, 2, 0, 3)

  a = _softmax(split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(dh)) @ split(v)
  out = a.transpose(2, 0, 1, 3).reshape(l, n, c)
  return out @ sd[f"{pre}.out_proj.weight"].T + sd[f"{pre}.out_proj.bias"]


def _mlp(x, sd, pre):
  h = _qgelu(x @ sd[f"{pre}.c_fc.weight"].T + sd[f"{pre}.c_fc.bias"])
  return h @ sd[f"{pre}.c_proj.weight"].T + sd[f"{pre}.c_proj.bias"]


def _lmhra(v, sd, pre):
  """v [N, C, T, H, W] -> BN(eval) -> 1x1x1 -> depthwise (3,1,1) pad 1 -> 1x1x1."""
  p = f"{pre}.pos_embed"
  sh = (1, -1, 1, 1, 1)
  h = (v - sd[f"{p}.0.running_mean"].reshape(sh)) / np.sqrt(
    sd[f"{p}.0.running_var"].reshape(sh) + 1e-5)
  h = h * sd[f"{p}.0.weight"].reshape(sh) + sd[f"{p}.0.bias"].reshape(sh)
  h = np.einsum("ncthw,rc->nrthw", h, sd[f"{p}.1.weight"][:, :, 0, 0, 0]) + sd[
    f"{p}.1.bias"].reshape(sh)
  w = sd[f"{p}.2.weight"][:, 0, :, 0, 0]  # [R, 3]
  hp = np.pad(h, ((0, 0), (0, 0), (1, 1), (0, 0), (0, 0)))
  t = h.shape[2]
  h = sum(hp[:, :, k : k + t] * w[:, k].reshape(sh) for k in range(3)) + sd[
    f"{p}.2.bias"].reshape(sh)
  return np.einsum("nrthw,cr->ncthw", h, sd[f"{p}.3.weight"][:, :, 0, 0, 0]) + sd[
    f"{p}.3.bias"].reshape(sh)


def _dw3d(v, w, b):
  """Depthwise Conv3d 3x3x3, zero padding 1: v [N, C, T, H, W], w [C, 1, 3, 3, 3]."""
  n, c, t, h, ww = v.shape
  vp = np.pad(v, ((0, 0), (0, 0), (1, 1), (1, 1), (1, 1)))
  out = np.zeros_like(v)
  for a in range(3):
    for bb in range(3):
      for cc in range(3):
        out += vp[:, :, a : a + t, bb : bb + h, cc : cc + ww] * w[:, 0, a, bb, cc].reshape(
          1, c, 1, 1, 1)
  return out + b.reshape(1, c, 1, 1, 1)


def _apply_lmhra(x, sd, pre, n, t):
  """x [L, N*T, C]: LMHRA on the patch tokens (official reshapes), class tokens untouched."""
  tmp = x[1:]
  l1, nt, c = tmp.shape
  g = int(round(l1**0.5))
  vol = tmp.reshape(g, g, n, t, c).transpose(2, 4, 3, 0, 1)
  vol = vol + _lmhra(vol, sd, pre)
  tmp = vol.reshape(n, c, t, l1).transpose(3, 0, 2, 1).reshape(l1, nt, c)
  return np.concatenate([x[:1], tmp], axis=0)


def forward(sd: dict, cfg, x: np.ndarray, return_features: bool = False):
  """Eval-mode logits [B, K] for ``x [B, 3, T, H, W]`` (official layout), float64."""
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  x = np.asarray(x, np.float64)
  w = sd["conv1.weight"]  # [C, 3, kt, p, p]
  c, _, kt, p, _ = w.shape
  b, _, t, hgt, _ = x.shape
  stride, pad = (2, (kt - 1) // 2) if cfg.temporal_downsample else (1, 0)
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (0, 0), (0, 0)))
  tp = (t + 2 * pad - kt) // stride + 1
  g = hgt // p
  frames = []
  for i in range(tp):
    clip = xp[:, :, i * stride : i * stride + kt].reshape(b, 3, kt, g, p, g, p)
    frames.append(np.einsum("bcuhiwj,ocuij->bohw", clip, w))
  feat = np.stack(frames, axis=2)  # [B, C, T', g, g]
  tokens = feat.transpose(0, 2, 3, 4, 1).reshape(b * tp, g * g, c)
  cls = np.broadcast_to(sd["class_embedding"], (b * tp, 1, c))
  xx = np.concatenate([cls, tokens], axis=1) + sd["positional_embedding"]
  xx = _ln(xx, sd["ln_pre.weight"], sd["ln_pre.bias"]).transpose(1, 0, 2)  # [L, N*T', C]
  L = xx.shape[0]
  q = np.broadcast_to(sd["transformer.temporal_cls_token"], (1, b, c)).copy()
  j = -1
  for i in range(cfg.layers):
    pre = f"transformer.resblocks.{i}"
    if not cfg.no_lmhra:
      xx = _apply_lmhra(xx, sd, f"{pre}.lmhra1", b, tp)
    xx = xx + _mha(_ln(xx, sd[f"{pre}.ln_1.weight"], sd[f"{pre}.ln_1.bias"]), sd,
                   f"{pre}.attn", cfg.heads)
    if not cfg.no_lmhra and cfg.double_lmhra:
      xx = _apply_lmhra(xx, sd, f"{pre}.lmhra2", b, tp)
    xx = xx + _mlp(_ln(xx, sd[f"{pre}.ln_2.weight"], sd[f"{pre}.ln_2.bias"]), sd, f"{pre}.mlp")
    if i in cfg.return_list:
      j += 1
      tmp = xx.copy().reshape(L, b, tp, c)
      vol = tmp[1:].transpose(1, 3, 2, 0).reshape(b, c, tp, g, g)
      conv = _dw3d(vol, sd[f"transformer.dpe.{j}.weight"], sd[f"transformer.dpe.{j}.bias"])
      tmp[1:] = tmp[1:] + conv.reshape(b, c, tp, L - 1).transpose(3, 0, 2, 1)
      y = tmp.transpose(2, 0, 1, 3).reshape(tp * L, b, c)
      q = _extractor(q, y, sd, f"transformer.dec.{j}", cfg.n_head)
  if cfg.frozen:
    fused = q[0]
  else:
    wgt = 1.0 / (1.0 + np.exp(-sd["transformer.balance"]))
    residual = xx.reshape(L, b, tp, c)[0].mean(1)
    fused = (1 - wgt) * q[0] + wgt * residual
  h = _ln(fused, sd["transformer.proj.0.weight"], sd["transformer.proj.0.bias"])
  logits = h @ sd["transformer.proj.2.weight"].T + sd["transformer.proj.2.bias"]
  return (logits, fused) if return_features else logits


def _extractor(q, y, sd, pre, heads):
  """q [1, B, D], y [S, B, D]: the official hand-written one-query attention + MLP."""
  d = q.shape[-1]
  wi, bi = sd[f"{pre}.attn.in_proj_weight"], sd[f"{pre}.attn.in_proj_bias"]
  qn = _ln(q, sd[f"{pre}.ln_1.weight"], sd[f"{pre}.ln_1.bias"])
  yn = _ln(y, sd[f"{pre}.ln_3.weight"], sd[f"{pre}.ln_3.bias"])
  qq = qn @ wi[:d].T + bi[:d]
  kk = yn @ wi[d : 2 * d].T + bi[d : 2 * d]
  vv = yn @ wi[2 * d :].T + bi[2 * d :]
  dh = d // heads

  def split(t):  # [S, B, D] -> [B, H, S, Dh]
    return t.reshape(t.shape[0], t.shape[1], heads, dh).transpose(1, 2, 0, 3)

  a = _softmax(split(qq) @ split(kk).transpose(0, 1, 3, 2) / np.sqrt(dh)) @ split(vv)
  out = a.transpose(2, 0, 1, 3).reshape(1, -1, d)
  out = out @ sd[f"{pre}.attn.out_proj.weight"].T + sd[f"{pre}.attn.out_proj.bias"]
  q = q + out
  return q + _mlp(_ln(q, sd[f"{pre}.ln_2.weight"], sd[f"{pre}.ln_2.bias"]), sd, f"{pre}.mlp")
