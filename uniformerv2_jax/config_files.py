"""Loading the project's Python config files, ``configs/<file>.py[:<arg>]``.

A config file defines ``get_config(arg=None)`` and imports its shared defaults as
``from configs import common``, so the folder above ``configs/`` must be importable while the
file runs. It is put on ``sys.path`` for that time only: loading a config leaves the import path
as it was.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any


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
  path, arg = split_config_spec(spec)
  if not path.is_file():
    raise FileNotFoundError(f"config file {path} not found")
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
