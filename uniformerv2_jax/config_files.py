"""Finding and loading Python config files: recipes shipped with the package by name
(``k400:b16_8x224``, ``demo``: the files in ``uniformerv2_jax/configs/``) and config files by
path (``configs/<file>.py[:<arg>]``, ``my_config.py``).

A config file defines ``get_config(arg=None)``. The shipped ones import their defaults from
``uniformerv2_jax.configs.common``; a user's file may import ``from configs import common``
beside its own ``configs/`` folder, so the folder above the file's is on ``sys.path`` while it
runs, and only then.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from uniformerv2_jax.errors import InputNotFound

RECIPES = Path(__file__).resolve().parent / "configs"


def split_config_spec(spec: str | os.PathLike) -> tuple[Path, str]:
  """``path.py[:arg]`` -> (path, arg). A spec naming an existing file as a whole has no arg (a
  path may itself contain a colon)."""
  text = os.fspath(spec)
  if os.path.exists(text):
    return Path(text), ""
  path, _, arg = text.partition(":")
  return Path(path), arg


def load_config_file(spec: str | os.PathLike) -> Any:
  """``get_config(arg)`` (or ``get_config()`` without an arg) of the config file ``spec``.

  Raises FileNotFoundError when the file does not exist.
  """
  path, arg = split_config_spec(resolve_recipe(os.fspath(spec)))
  if not path.is_file():
    raise InputNotFound(f"config file {path} not found")
  root = str(path.resolve().parent.parent)  # the folder holding the ``configs`` package
  added = root not in sys.path
  if added:
    sys.path.insert(0, root)
  try:
    module_spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  finally:
    if added:
      sys.path.remove(root)


def recipe_names() -> list[str]:
  """The recipes shipped with the package, as ``--config`` accepts them by name."""
  from uniformerv2_jax import zoo
  from uniformerv2_jax.configs import transfer

  names = [e.name for e in zoo.ZOO]
  names += [f"{d}:{a}" for d in transfer.TRANSFER_DATASETS for a in transfer.ARGS]
  return ["demo", *sorted(names)]


def resolve_recipe(spec: str) -> str:
  """``--config`` value -> a config file path[:arg]. A path that exists is kept; a recipe name
  (``k400:b16_8x224``, ``demo``), or ``configs/<name>.py[:arg]`` outside a checkout, becomes the
  package's recipe file."""
  path, sep, arg = spec.partition(":")
  if os.path.exists(spec) or os.path.exists(path):
    return spec
  name = Path(path).name
  parent = Path(path).parent
  if parent in (Path("."), Path("configs")):
    stem = name[:-3] if name.endswith(".py") else name
    if (RECIPES / f"{stem}.py").is_file() and stem not in ("__init__", "common"):
      return f"{RECIPES / stem}.py{sep}{arg}"
  return spec
