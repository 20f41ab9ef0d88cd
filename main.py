"""UniFormerV2 in JAX: train, evaluate and run models from a checkout.

  python main.py --config configs/demo.py --workdir demo_run
  python main.py --mode eval --config configs/k400.py:b16_8x224 --checkpoint DIR
  python main.py --mode predict --checkpoint DIR --input video.mp4

The same program as the installed ``uniformerv2-jax MODE`` command: modes, flags and exit
statuses are documented in ``uniformerv2_jax/cli.py`` (``python main.py --help``).
"""

from uniformerv2_jax import cli

if __name__ == "__main__":
  cli.run_program()
