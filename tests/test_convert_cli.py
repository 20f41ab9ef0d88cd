"""convert_torch_weights.py: the command line (a few real subprocesses, the rest in-process)."""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import uniformerv2_jax as u
from tests.conftest import FIXTURES, REPO
from uniformerv2_jax import convert_cli as cli

K400 = FIXTURES / "tiny_k400"


def run_cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(REPO / "convert_torch_weights.py"), *map(str, args)],
                        capture_output=True, text=True, cwd=REPO, timeout=300)


def test_import_export_verify_in_subprocesses(tmp_path):
  out = run_cli("--input", K400 / "model.pth", "--output", tmp_path / "ckpt",
                "--official-config", K400 / "config.json", "--verify")
  assert out.returncode == 0, out.stdout + out.stderr
  assert "91 compared, 91 bit-exact" in out.stdout
  assert "max |logits diff| 0" in out.stdout and out.stdout.strip().endswith("PASS")
  out = run_cli("--input", tmp_path / "ckpt", "--output", tmp_path / "model.pyth", "--verify")
  assert out.returncode == 0, out.stdout + out.stderr
  assert out.stdout.strip().endswith("PASS")
  got = torch.load(tmp_path / "model.pyth", weights_only=True)
  want = torch.load(K400 / "model.pth", weights_only=True)
  assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_wrong_format_message_in_subprocess(tmp_path):
  out = run_cli("--input", K400 / "model.pth", "--output", tmp_path / "ckpt", "--format", "hf",
                "--official-config", K400 / "config.json")
  assert out.returncode == 2
  assert "Traceback" not in out.stderr and out.stdout == ""
  assert out.stderr.startswith("error: ") and "--format hf does not fit" in out.stderr
  assert "look like official" in out.stderr
  assert not (tmp_path / "ckpt").exists()


def main_err(capsys, *args) -> str:
  rc = cli.main([str(a) for a in args])
  err = capsys.readouterr().err
  assert rc == 2, err
  assert "Traceback" not in err and err.startswith("error: ")
  return err


def test_bad_inputs_give_one_clear_message(tmp_path, capsys):
  cfg = ["--official-config", K400 / "config.json"]
  data = (K400 / "model.pth").read_bytes()
  (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
  err = main_err(capsys, "-i", tmp_path / "trunc.pth", "-o", tmp_path / "a", *cfg)
  assert "trunc.pth: not a readable PyTorch checkpoint" in err
  sd = dict(np.load(K400 / "model.npz"))
  del sd["backbone.transformer.dec.1.ln_3.bias"]
  np.savez(tmp_path / "missing.npz", **sd)
  err = main_err(capsys, "-i", tmp_path / "missing.npz", "-o", tmp_path / "b", *cfg)
  assert "1 missing key" in err and "backbone.transformer.dec.1.ln_3.bias" in err
  err = main_err(capsys, "-i", K400 / "model.pth", "-o", tmp_path / "c")
  assert "does not say which model" in err and "--official-config" in err
  err = main_err(capsys, "-i", tmp_path / "absent.pth", "-o", tmp_path / "d")
  assert "no such file" in err


def test_direction_follows_from_the_input(tmp_path, capsys):
  """A weights file in is an import whatever the output is called (``run.ckpt`` is an Orbax
  directory, not a PyTorch file); an Orbax directory in is an export, its format chosen by the
  output's extension."""
  cfg = ["--official-config", K400 / "config.json"]
  assert cli.main([str(a) for a in ("-i", K400 / "model.pth", "-o", tmp_path / "run.ckpt",
                                    *cfg)]) == 0
  assert "wrote: " in capsys.readouterr().out
  assert (tmp_path / "run.ckpt").is_dir()
  model = u.load_checkpoint(tmp_path / "run.ckpt")
  assert model.cfg == u.config_from_official(K400 / "config.json")
  assert cli.main([str(a) for a in ("-i", tmp_path / "run.ckpt", "-o", tmp_path / "back.npz")]) \
    == 0
  back = np.load(tmp_path / "back.npz")
  want = np.load(K400 / "model.npz")
  assert list(back) == list(want) and all(np.array_equal(back[k], want[k]) for k in want)
  err = main_err(capsys, "-i", tmp_path / "run.ckpt", "-o", tmp_path / "out")
  assert "the output of an export must be a file" in err


class _Payload:
  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (open, (str(self.target), "w"))


def test_code_executing_pickle_is_refused_and_never_runs(tmp_path, capsys):
  marker = tmp_path / "pwned"
  sd = {k: torch.from_numpy(v) for k, v in np.load(K400 / "model.npz").items()}
  sd["payload"] = _Payload(marker)
  torch.save(sd, tmp_path / "evil.pth", pickle_module=pickle)
  err = main_err(capsys, "-i", tmp_path / "evil.pth", "-o", tmp_path / "out",
                 "--official-config", K400 / "config.json")
  assert "refused to unpickle" in err and "nothing was executed" in err
  assert not marker.exists()


def test_allow_missing_lists_what_stayed_at_init(tmp_path, capsys):
  sd = dict(np.load(K400 / "model.npz"))
  del sd["backbone.transformer.proj.2.weight"], sd["backbone.transformer.proj.2.bias"]
  np.savez(tmp_path / "nohead.npz", **sd)
  rc = cli.main([str(a) for a in ("-i", tmp_path / "nohead.npz", "-o", tmp_path / "ckpt",
                                  "--official-config", K400 / "config.json",
                                  "--allow-missing")])
  out = capsys.readouterr().out
  assert rc == 0
  assert "kept at official init (2 tensors, missing from the checkpoint)" in out
  assert "transformer.proj.2.weight" in out
  # An existing output is not overwritten silently.
  main_err(capsys, "-i", K400 / "model.pth", "-o", tmp_path / "ckpt",
           "--official-config", K400 / "config.json")


def test_config_specs():
  ns = argparse.Namespace(official_config=None, config="zoo:k400:b16_8x224")
  cfg = cli.resolve_config(ns)
  assert (cfg.width, cfg.layers, cfg.num_classes, cfg.num_frames) == (768, 12, 400, 8)
  # A project config gives the same model.
  ns = argparse.Namespace(official_config=None,
                          config=str(REPO / "configs" / "k400.py") + ":b16_8x224")
  assert cli.resolve_config(ns) == cfg
  with pytest.raises(cli.UsageError, match="zoo:<dataset>:<arg>"):
    cli.resolve_config(argparse.Namespace(official_config=None, config="zoo:k400"))
  with pytest.raises(cli.UsageError, match="no such file"):
    cli.resolve_config(argparse.Namespace(official_config=None, config="configs/none.py:x"))


def test_help_describes_both_directions(capsys):
  with pytest.raises(SystemExit) as e:
    cli.parse_args(["--help"])
  assert e.value.code == 0
  text = capsys.readouterr().out
  for word in ("--official-config", "--config", "--verify", "--allow-missing", "mmaction2",
               "TorchScript", "Export", "--clip-activation"):
    assert word in text
