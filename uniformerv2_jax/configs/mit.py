"""MIT: every released UniFormerV2 setting, with its effective official recipe.

  python main.py --config configs/mit.py:b16_8x224_k710 --workdir WORKDIR \
      --config.dataset.root=/data/mit --config.init_from=CONVERTED_CLIP_OR_ZOO_DIR

Arguments (model-zoo rows): b16_8x224_k710, l14_8x224_k710, l14_8x336_k710.
"""

from uniformerv2_jax.configs import common


def get_config(arg: str = "b16_8x224_k710"):
  return common.from_zoo("mit", arg)
