"""The hub folder (``--format hub``): the official fixture's weights come back bit-exactly through
the folder (as the official state dict, through ``load_checkpoint`` and through the converter),
its config.json states the official config, and the model card states what the checkpoint
records (classes, views, the measured top-1)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import FIXTURES
from uniformerv2_jax import checkpoint, convert_cli, hub, load_checkpoint, load_official, predict
from uniformerv2_jax.checkpoint_files import read_checkpoint
from uniformerv2_jax.errors import InputError
from uniformerv2_jax.trees import flat_state
from uniformerv2_jax.variants import config_from_official

K400 = FIXTURES / "tiny_k400"
NAMES = [f"action {i}" for i in range(10)]  # the fixture's 10 classes, named for the test


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """The fixture model as a checkpoint with class names and a recorded evaluation, like a
  training workdir."""
  d = tmp_path_factory.mktemp("hub") / "run"
  checkpoint.save_model(d, load_official(K400 / "model.pth", K400 / "config.json"),
                        extra_config={"labels": NAMES})
  (d / "eval_results.json").write_text(json.dumps({"top1": 0.625, "top5": 0.875,
                                                   "num_videos": 40, "step": 300}))
  return d


def test_hub_folder_round_trips_and_says_what_it_is(run_dir, tmp_path, capsys):
  out = tmp_path / "hub"
  assert convert_cli.main(["--input", str(run_dir), "--output", str(out), "--format", "hub",
                           "--verify"]) == 0
  assert "PASS" in capsys.readouterr().out
  assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "labels.txt",
                                                   "model.safetensors"]
  # The weights: the official state dict of the fixture, key for key, bit for bit.
  official = read_checkpoint(K400 / "model.pth")
  ours = read_checkpoint(out / "model.safetensors")
  assert sorted(ours) == sorted(official)  # safetensors keeps keys sorted
  assert all(np.array_equal(ours[k], np.asarray(official[k])) for k in official)
  # The config: the official names describe the fixture's model.
  config = json.loads((out / "config.json").read_text())
  assert config_from_official(config) == config_from_official(K400 / "config.json")
  assert (out / "labels.txt").read_text().splitlines() == NAMES
  card = (out / "README.md").read_text()
  assert "top-1 62.50 %" in card and "40 videos" in card and "(step 300)" in card
  assert "[batch, 8, 64, 64, 3]" in card and "load_checkpoint('hub')" in card
  # Read back by every reader: load_checkpoint, predict's preparation, the converter.
  a, b = flat_state(load_checkpoint(run_dir)), flat_state(load_checkpoint(out))
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  assert predict.prepare(str(out)).names == NAMES
  assert convert_cli.main(["--input", str(out), "--output", str(tmp_path / "back")]) == 0
  c = flat_state(load_checkpoint(tmp_path / "back"))
  assert all(np.array_equal(a[k], c[k]) for k in a)


def test_hub_folder_refuses_to_replace_other_things(run_dir, tmp_path):
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("mine")
  with pytest.raises(InputError, match="exists and is not empty; pass --overwrite"):
    hub.write_hub(str(run_dir), other)
  with pytest.raises(InputError, match="not a hub folder written here"):
    hub.write_hub(str(run_dir), other, overwrite=True)
  assert (other / "notes.txt").read_text() == "mine"
  with pytest.raises(checkpoint.NoEmaError, match="hub folder"):
    hub.write_hub(str(run_dir), tmp_path / "h")
    load_checkpoint(tmp_path / "h", use_ema=True)
