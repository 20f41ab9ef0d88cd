"""Every released model-zoo setting builds (shapes only) with the official parameter count."""

from __future__ import annotations

import pytest

from uniformerv2_jax import zoo
from uniformerv2_jax.model import abstract_model, count_params
from uniformerv2_jax.variants import BACKBONES


def official_param_count(e: zoo.ZooEntry) -> int:
  """Parameter count from the official state-dict layout (spec section 7), written out
  independently of the model code."""
  arch = BACKBONES["uniformerv2_" + e.backbone]
  c, layers, p = arch["width"], arch["layers"], arch["patch_size"]
  tokens = 1 + (arch["input_resolution"] // p) ** 2
  kt = 3 if e.something else 1
  n = c + tokens * c + c * 3 * kt * p * p + 2 * c  # class/pos embedding, conv1, ln_pre
  n += c + (0 if e.frozen else c)  # temporal_cls_token, balance
  attn_mlp = (3 * c * c + 3 * c) + (c * c + c) + (4 * c * c + 4 * c) + (4 * c * c + c)
  block = attn_mlp + 2 * 2 * c  # + ln_1, ln_2
  if e.something:  # lmhra1 + lmhra2, R = int(C // 1.5)
    r = int(c // 1.5)
    block += 2 * (2 * c + (r * c + r) + (3 * r + r) + (c * r + c))
  n += layers * block
  n_global = layers - layers // 3 if e.something else 4
  n += n_global * ((27 * c + c) + attn_mlp + 3 * 2 * c)  # dpe, dec (ln_1..ln_3)
  return n + 2 * c + e.num_classes * c + e.num_classes  # proj.0 LayerNorm, proj.2 Linear


# Figures the official code reports (task / spec section 5, params incl. the head).
OFFICIAL = {
  "k400:b16_8x224": 114_552_208,
  "sthv2:b16_16x224": 162_992_814,
  "k400:l14_8x224_k710": 354_099_600,
}
OFFICIAL_MILLIONS = {  # spec section 5 table, rounded to 0.01 M
  "k400:l14_32x336_k710": 354.43,
  "k400:l14_8x336_frozen": 354.43,
  "sthv2:l14_16x224": 573.95,
}


def test_zoo_has_every_released_setting():
  assert len(zoo.ZOO) == 49
  assert len({e.name for e in zoo.ZOO}) == 49
  counts = {}
  for e in zoo.ZOO:
    counts[e.dataset] = counts.get(e.dataset, 0) + 1
  assert counts == {"k400": 10, "k600": 10, "k700": 10, "k710": 4, "mit": 3, "sthv1": 4,
                    "sthv2": 4, "anet": 2, "hacs": 2}


@pytest.mark.parametrize("entry", zoo.ZOO, ids=lambda e: e.name)
def test_param_count_equals_official(entry):
  n = count_params(abstract_model(entry.model_config()))  # eval_shape: nothing allocated
  assert n == official_param_count(entry)
  if entry.name in OFFICIAL:
    assert n == OFFICIAL[entry.name]
  if entry.name in OFFICIAL_MILLIONS:
    assert round(n / 1e6, 2) == OFFICIAL_MILLIONS[entry.name]


def test_unknown_zoo_argument_lists_valid_ones():
  with pytest.raises(KeyError, match="b16_8x224_k710"):
    zoo.get("k400", "b16_9x224")
