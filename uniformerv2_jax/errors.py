"""The one exception type for problems with what a user asked for or gave.

``InputError`` covers a config value out of range, a file that is missing or malformed, a
checkpoint that does not fit the requested model, a flag that makes no sense: anything the user
can fix. The command line (``uniformerv2_jax.cli``) prints its message as one line and exits with
status 2; every other exception is a bug and keeps its traceback. It subclasses ``ValueError``
so that library callers catching ``ValueError`` keep working.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn


class InputError(ValueError):
  """A user-fixable problem; the message names the key, file or value and what is expected."""


class InputNotFound(InputError, FileNotFoundError):
  """A file or directory the user named does not exist (or holds nothing usable)."""


class UnknownSetting(InputError, KeyError):
  """A name (a model-zoo row, a recipe argument) that is not among the known ones."""

  def __str__(self) -> str:  # KeyError would quote the message
    return str(self.args[0]) if self.args else ""


def run_main(main: Callable[[], int | None]) -> NoReturn:
  """Runs a program's ``main()`` and exits with its status; an ``InputError`` becomes one line
  on stderr and status 2 (the tracebacks stay for bugs)."""
  try:
    status = main()
  except InputError as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  sys.exit(status)


def check_can_write(flag: str, value: str) -> None:
  """The local path ``value`` of ``flag`` can be written: it is an existing folder, or its
  nearest existing ancestor is one, that this user may write in. Raises InputError naming the
  flag otherwise."""
  existing = os.path.abspath(value)
  if not os.path.isdir(existing):
    existing = os.path.dirname(existing)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise InputError(f"{flag} {value}: {existing} is a file, not a folder")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise InputError(f"{flag} {value}: no permission to write in {existing}")
