"""K700: every released UniFormerV2 setting, with its effective official recipe.

  python main.py --config configs/k700.py:b16_8x224 --workdir WORKDIR \
      --config.dataset.root=/data/k700 --config.init_from=CONVERTED_CLIP_OR_ZOO_DIR

Arguments (model-zoo rows): b16_8x224, b16_8x224_k710, l14_8x224_k710, l14_16x224_k710,
l14_32x224_k710, l14_32x336_k710, l14_64x336_k710, l14_8x336_frozen, l14_8x336_k710_frozen,
l14_32x336_k710_frozen.
"""

from uniformerv2_jax.configs import common


def get_config(arg: str = "b16_8x224"):
  return common.from_zoo("k700", arg)
