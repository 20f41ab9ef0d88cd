"""Huge-page malloc for the entry points (uniformerv2_jax/host_memory.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from tests.conftest import REPO
from uniformerv2_jax import host_memory

GLIBC_LINUX = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def test_tuned_environ_adds_keeps_and_respects():
  assert host_memory.tuned_environ({"PATH": "/bin"}) == {
    "PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  # Other tunables are kept, ours appended.
  env = host_memory.tuned_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  # The user's own hugetlb choice (or an already re-executed process) is left alone.
  assert host_memory.tuned_environ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
  assert host_memory.tuned_environ(
    {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}) is None
  # Opt-out.
  assert host_memory.tuned_environ({host_memory.OPT_OUT: "0"}) is None
  assert host_memory.tuned_environ({host_memory.OPT_OUT: "1"}) is not None


def _child_env(**extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)}
  env["PYTHONPATH"] = str(REPO)
  env.update(extra)
  return env


CHILD = ("import os, sys\n"
         "from uniformerv2_jax import host_memory\n"
         "assert 'jax' not in sys.modules, 'importing host_memory imported JAX'\n"
         "host_memory.reexec_with_malloc_tuning()\n"
         "print(repr(os.environ.get('GLIBC_TUNABLES')), sys.argv[1:])\n")


@pytest.mark.skipif(not GLIBC_LINUX, reason="glibc tunables exist only on Linux with glibc")
def test_reexec_sets_the_tunable_keeps_arguments_and_runs_once():
  out = subprocess.run([sys.executable, "-c", CHILD, "a b", "--x=1"], env=_child_env(),
                       capture_output=True, text=True, check=True).stdout
  # One line: the re-executed process printed, the original one never reached the print.
  assert out.splitlines() == ["'glibc.malloc.hugetlb=1' ['a b', '--x=1']"]


def test_reexec_opt_out_keeps_the_environment():
  out = subprocess.run([sys.executable, "-c", CHILD], env=_child_env(**{host_memory.OPT_OUT: "0"}),
                       capture_output=True, text=True, check=True).stdout
  assert out.splitlines() == ["None []"]


@pytest.mark.skipif(not GLIBC_LINUX, reason="glibc tunables exist only on Linux with glibc")
def test_main_runs_with_the_tunable():
  # --mode eval without --config stops with a usage error right after main() logged its setting.
  # The setting is a debug line (quiet by default): --verbosity=1 shows it.
  r = subprocess.run([sys.executable, str(REPO / "main.py"), "--mode", "eval", "--verbosity=1"],
                     cwd=REPO,
                     env=_child_env(), capture_output=True, text=True)
  assert r.returncode != 0 and "needs --config" in r.stderr + r.stdout
  assert "GLIBC_TUNABLES='glibc.malloc.hugetlb=1'" in r.stderr


@pytest.mark.skipif(not GLIBC_LINUX, reason="glibc tunables exist only on Linux with glibc")
def test_no_reexec_when_the_process_was_started_for_something_else():
  # As under IPython's %run: sys.argv names a script the interpreter was not started with.
  child = "import sys\nsys.argv = ['main.py']\n" + CHILD
  out = subprocess.run([sys.executable, "-c", child], env=_child_env(),
                       capture_output=True, text=True, check=True).stdout
  assert out.splitlines() == ["None []"]
