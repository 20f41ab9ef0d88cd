"""STHV2: every released UniFormerV2 setting, with its effective official recipe.

  python main.py --config configs/sthv2.py:b16_16x224 --workdir WORKDIR \
      --config.dataset.root=/data/sthv2 --config.init_from=CONVERTED_CLIP_OR_ZOO_DIR

Arguments (model-zoo rows): b16_16x224, b16_32x224, l14_16x224, l14_32x224.
"""

from uniformerv2_jax.configs import common


def get_config(arg: str = "b16_16x224"):
  return common.from_zoo("sthv2", arg)
