"""Multiply-accumulate counts of the official UniFormerV2 forward (1 MAC = 1 "FLOP" as fvcore
and the paper count). Used for throughput / MFU figures. It counts the matmuls and convolutions
of the official forward (patch embedding, attention, MLPs, local MHRA, DPE, the global blocks,
the head) and ignores element-wise work; for B/16 8x224 it gives 148.1 GMACs per view, the
figure the paper reports (148 GFLOPs x 1 view).

Note: this port computes the global blocks' one-query attention without projecting every token
to keys and values (same math, ~2·T'·L·D² fewer MACs per global block), so it does slightly less
work than counted here; figures quoted against this count are comparable with the official code.
"""

from __future__ import annotations

from uniformerv2_jax.model import ModelConfig


def forward_macs(cfg: ModelConfig, frames: int | None = None) -> int:
  """MACs of one eval forward of one clip (one view)."""
  t = cfg.num_frames if frames is None else frames
  tp = (t + 1) // 2 if cfg.temporal_downsample else t
  c, l, g2 = cfg.width, cfg.tokens, cfg.grid**2
  macs = tp * g2 * 3 * cfg.kt * cfg.patch_size**2 * c  # patch embedding
  per_block = l * 12 * c * c + 2 * l * l * c  # qkv + out + 4x MLP, scores + weighted sum
  if not cfg.no_lmhra:
    r = cfg.lmhra_dim
    per_block += (2 if cfg.double_lmhra else 1) * (l - 1) * (2 * c * r + 3 * r)
  macs += cfg.layers * tp * per_block
  d, hidden = cfg.n_dim, cfg.global_mlp_dim
  per_global = (tp * g2 * 27 * d  # DPE
                + 2 * tp * l * d * d  # K and V of every token
                + 2 * d * d  # query and output projections
                + 2 * tp * l * d  # scores + weighted sum
                + 2 * d * hidden)  # MLP
  macs += cfg.n_layers * per_global
  return macs + d * cfg.num_classes


def train_step_macs(cfg: ModelConfig, batch: int) -> int:
  """Forward + backward (the usual 3x forward) for ``batch`` clips."""
  return 3 * batch * forward_macs(cfg)
