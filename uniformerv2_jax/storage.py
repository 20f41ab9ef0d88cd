"""File access for local paths and URLs (``gs://``, ``s3://``... whatever ``etils.epath``
understands): the few operations the data readers need.

A local path goes to ``os`` as before (fast, no extra objects). A URL goes to ``etils.epath``,
which reaches ``gs://`` through ``gcsfs`` (the ``gcs`` extra). Path arithmetic on URLs must
never go through ``os.path.abspath`` (it would turn ``gs://b/x`` into ``/cwd/gs:/b/x``):
:func:`absolute` and :func:`dirname` keep them whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
  from etils import epath


def is_url(path: str | os.PathLike) -> bool:
  """Whether ``path`` names an object store / remote file (``scheme://...``)."""
  return "://" in os.fspath(path)


def _epath(path: str | os.PathLike) -> epath.Path:
  from etils import epath  # imported on the first URL: local-only callers never pay for it

  return epath.Path(os.fspath(path))


def exists(path: str) -> bool:
  return _epath(path).exists() if is_url(path) else os.path.exists(path)


def isfile(path: str) -> bool:
  return _epath(path).is_file() if is_url(path) else os.path.isfile(path)


def isdir(path: str) -> bool:
  return _epath(path).is_dir() if is_url(path) else os.path.isdir(path)


def listdir(path: str) -> list[str]:
  """Entry names directly in the folder ``path``."""
  if is_url(path):
    return [p.name for p in _epath(path).iterdir()]
  return os.listdir(path)


def walk(path: str) -> Iterator[tuple[str, list[str], list[str]]]:
  """``os.walk`` for local folders and URLs: (folder, subfolder names, file names)."""
  if not is_url(path):
    yield from os.walk(path)
    return
  # Object stores list a "folder" with one request; walk it the same top-down way.
  pending = [path.rstrip("/")]
  while pending:
    folder = pending.pop(0)
    dirs, files = [], []
    for p in sorted(_epath(folder).iterdir()):
      (dirs if p.is_dir() else files).append(p.name)
    yield folder, dirs, files
    pending.extend(f"{folder}/{d}" for d in dirs)


def open_file(path: str, mode: str = "r", **kwargs) -> IO:
  """``open`` for local paths, ``epath.Path.open`` for URLs (text or binary, by ``mode``)."""
  if is_url(path):
    return _epath(path).open(mode, **kwargs)
  return open(path, mode, **kwargs)


def read_text(path: str) -> str:
  with open_file(path, "r", encoding="utf-8") as f:
    return f.read()


def absolute(path: str) -> str:
  """``os.path.abspath`` for local paths; a URL as it is."""
  return os.fspath(path) if is_url(path) else os.path.abspath(path)


def dirname(path: str) -> str:
  return os.fspath(path).rstrip("/").rsplit("/", 1)[0] if is_url(path) else os.path.dirname(path)


def isabs(path: str) -> bool:
  return is_url(path) or os.path.isabs(path)
