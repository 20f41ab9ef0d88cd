"""Host memory allocator tuning: transparent huge pages for glibc malloc.

XLA:CPU allocates each step's buffers with ``malloc``, and glibc gives freed blocks back to the
kernel (blocks above the mmap threshold, at most 32 MiB, are their own ``mmap`` regions), so
every train step page-faults its activations and gradients back in, 4 KiB at a time, and the
kernel zeroes each page: 842k faults and 1.8 s of kernel time per B/16 step. With
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35) malloc asks for transparent huge
pages: 2.1k faults and 0.24 s per step. Measured on a 2-core host, B/16 8x224 batch 1 f32:
train step 5.1-6.8 s -> 4.3-4.7 s, eval forward 1.25-1.42 s -> 1.12-1.20 s, and the same
process's 2048 matmul no longer drops to half its rate after a train step
(``benchmarks/RESULTS.md``).

glibc reads tunables only at process start, so the entry points (``main.py``, the benchmarks)
re-execute themselves once with the tunable added, before JAX is imported. This module uses
only the standard library so that importing it costs nothing.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "UNIFORMERV2_MALLOC_TUNING"  # "0": keep the system's allocator settings


def tuned_environ(environ: Mapping[str, str]) -> dict[str, str] | None:
  """The environment to re-execute with, or None when nothing should change: opted out, or
  ``GLIBC_TUNABLES`` already sets ``glibc.malloc.hugetlb`` (the user's choice, or this
  process was already re-executed)."""
  if environ.get(OPT_OUT, "1") == "0":
    return None
  current = environ.get("GLIBC_TUNABLES", "")
  names = {item.split("=", 1)[0] for item in current.split(":") if item}
  if "glibc.malloc.hugetlb" in names:
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}" if current else TUNABLE
  return env


def reexec_with_malloc_tuning() -> None:
  """Re-executes this interpreter with the same command line and huge-page malloc, on Linux
  with glibc. Returns only when no re-execution is needed (or possible); call it first thing
  in ``if __name__ == "__main__":``, before threads are started or JAX is imported."""
  if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
    return
  env = tuned_environ(os.environ)
  if env is None:
    return
  argv = list(getattr(sys, "orig_argv", []))
  # Only when this interpreter was started for this script: under IPython's ``%run`` or a
  # runner that rewrote sys.argv, re-executing the original command would restart the host.
  if not argv or sys.argv[0] not in argv:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, argv, env)
