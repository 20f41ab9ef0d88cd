#!/usr/bin/env python
"""Convert UniFormerV2 weights between PyTorch formats and Orbax checkpoints, from a checkout.

The same program as the installed ``uniformerv2-jax convert``; its options, examples and exit
statuses are in ``uniformerv2_jax/convert_cli.py`` (``python convert_torch_weights.py --help``).
"""

import sys

from uniformerv2_jax import convert_cli

if __name__ == "__main__":
  sys.exit(convert_cli.main())
