"""HACS: every released UniFormerV2 setting, with its effective official recipe.

  python main.py --config configs/hacs.py:l14_16x224_k710 --workdir WORKDIR \
      --config.dataset.root=/data/hacs --config.init_from=CONVERTED_CLIP_OR_ZOO_DIR

Arguments (model-zoo rows): l14_16x224_k710, l14_32x224_k710.
"""

from uniformerv2_jax.configs import common


def get_config(arg: str = "l14_16x224_k710"):
  return common.from_zoo("hacs", arg)
