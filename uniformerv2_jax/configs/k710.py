"""K710: every released UniFormerV2 setting, with its effective official recipe.

  python main.py --config configs/k710.py:b16_8x224 --workdir WORKDIR \
      --config.dataset.root=/data/k710 --config.init_from=CONVERTED_CLIP_OR_ZOO_DIR

Arguments (model-zoo rows): b16_8x224, l14_8x224, l14_8x336, l14_8x336_frozen.
"""

from uniformerv2_jax.configs import common


def get_config(arg: str = "b16_8x224"):
  return common.from_zoo("k710", arg)
