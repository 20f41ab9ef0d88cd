"""``python -m uniformerv2_jax COMMAND ...``: the ``uniformerv2-jax`` command."""

from uniformerv2_jax import cli

if __name__ == "__main__":
  cli.command()
