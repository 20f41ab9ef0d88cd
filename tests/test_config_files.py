"""One loader for ``configs/<file>.py[:<arg>]`` files, shared by prediction and the converter."""

from __future__ import annotations

import argparse
import sys

import pytest

from tests.conftest import REPO
from uniformerv2_jax import convert_cli as cli
from uniformerv2_jax import predict
from uniformerv2_jax.config_files import load_config_file, split_config_spec
from uniformerv2_jax.model import ModelConfig

K400 = REPO / "configs" / "k400.py"


def test_loading_a_config_leaves_the_import_path_as_it_was(monkeypatch):
  path = [p for p in sys.path if p not in (str(REPO), "")]
  monkeypatch.setattr(sys, "path", list(path))
  config = load_config_file(f"{K400}:b16_8x224")
  assert sys.path == path
  assert (config.model.width, config.model.num_classes) == (768, 400)


def test_prediction_and_converter_read_the_same_config(monkeypatch):
  monkeypatch.setattr(sys, "path", list(sys.path))
  before = list(sys.path)
  spec = f"{K400}:b16_8x224"
  assert predict.load_config(spec) == load_config_file(spec).to_dict()
  ns = argparse.Namespace(official_config=None, config=spec)
  assert cli.resolve_config(ns) == ModelConfig(**load_config_file(spec).model.to_dict())
  assert sys.path == before


def test_spec_parsing_and_missing_files(tmp_path):
  assert split_config_spec("configs/k400.py:b16_8x224") == (
    split_config_spec("configs/k400.py")[0], "b16_8x224")
  odd = tmp_path / "a:b.py"  # an existing file is taken whole, colon and all
  odd.write_text("def get_config(arg=None):\n  return arg\n")
  assert split_config_spec(odd) == (odd, "")
  with pytest.raises(FileNotFoundError, match="config file .*none.py not found"):
    load_config_file("configs/none.py:x")
