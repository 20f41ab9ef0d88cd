"""HMDB-51: fine-tuning a Kinetics-400 UniFormerV2, our recipe (see configs/transfer.py).

  python main.py --config configs/hmdb51.py:b16_8x224 --workdir WORKDIR \
      --config.dataset.root=ROOT --config.init_from=CONVERTED_K400_DIR [--config.dataset.split=2]

ROOT is where the official archives were extracted: <class>/*.avi beside
testTrainMulti_7030_splits/.
Arguments: b16_8x224, b16_8x224_k710, l14_8x224_k710 (the Kinetics-400 checkpoint it starts
from). Split 1 by default; the 3-split average is --mode eval over splits 1-3 (README).
"""

from uniformerv2_jax.configs import transfer


def get_config(arg: str = "b16_8x224"):
  return transfer.transfer_config("hmdb51", arg)
