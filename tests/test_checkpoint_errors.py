"""Strict loading: every problem of a checkpoint is named in one clear error; nothing from a
pickle ever runs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import uniformerv2_jax as u
from tests.conftest import FIXTURES
from uniformerv2_jax.checkpoint_files import CheckpointError, read_checkpoint

CFG = FIXTURES / "tiny_k400" / "config.json"


@pytest.fixture()
def state_dict():
  return dict(np.load(FIXTURES / "tiny_k400" / "model.npz"))


def save_npz(tmp_path, sd, name="ckpt.npz"):
  path = tmp_path / name
  np.savez(path, **sd)
  return path


def test_missing_key_is_named(tmp_path, state_dict):
  del state_dict["backbone.transformer.dec.1.ln_3.bias"]
  with pytest.raises(CheckpointError) as e:
    u.load_official(save_npz(tmp_path, state_dict), CFG)
  msg = str(e.value)
  assert "1 missing key" in msg and "backbone.transformer.dec.1.ln_3.bias  expected [64]" in msg


def test_unexpected_key_is_named(tmp_path, state_dict):
  state_dict["backbone.transformer.extra.weight"] = np.zeros((3, 2), np.float32)
  with pytest.raises(CheckpointError, match=r"1 unexpected key.*\n  backbone\.transformer\.extra"
                                            r"\.weight  \[3, 2\]"):
    u.load_official(save_npz(tmp_path, state_dict), CFG)


def test_wrong_shape_is_named_with_both_shapes(tmp_path, state_dict):
  state_dict["backbone.transformer.proj.2.weight"] = np.zeros((11, 64), np.float32)
  with pytest.raises(CheckpointError, match=r"backbone\.transformer\.proj\.2\.weight  got \[11, "
                                            r"64\], expected \[10, 64\]"):
    u.load_official(save_npz(tmp_path, state_dict), CFG)


def test_all_problems_reported_together(tmp_path, state_dict):
  del state_dict["backbone.ln_pre.weight"]
  state_dict["backbone.foo"] = np.zeros(1, np.float32)
  state_dict["backbone.class_embedding"] = np.zeros(65, np.float32)
  with pytest.raises(CheckpointError) as e:
    u.load_official(save_npz(tmp_path, state_dict), CFG)
  msg = str(e.value)
  assert "1 missing" in msg and "1 unexpected" in msg and "1 key(s) with the wrong shape" in msg
  assert "backbone.ln_pre.weight" in msg and "backbone.foo" in msg
  assert "backbone.class_embedding  got [65], expected [64]" in msg


def test_non_checkpoint_files(tmp_path):
  text = tmp_path / "notes.pth"
  text.write_text("these are not weights\n")
  with pytest.raises(CheckpointError, match="notes.pth: not a readable PyTorch checkpoint"):
    u.load_official(text, CFG)
  empty = tmp_path / "empty.pyth"
  empty.write_bytes(b"")
  with pytest.raises(CheckpointError, match="empty file"):
    u.load_official(empty, CFG)
  with pytest.raises(CheckpointError, match="no such file"):
    u.load_official(tmp_path / "absent.pth", CFG)
  bad_npz = tmp_path / "bad.npz"
  bad_npz.write_bytes(b"PK\x03\x04 truncated")
  with pytest.raises(CheckpointError, match="bad.npz: not a readable .npz"):
    u.load_official(bad_npz, CFG)
  truncated = tmp_path / "truncated.pth"
  data = (FIXTURES / "tiny_k400" / "model.pth").read_bytes()
  truncated.write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match="truncated.pth: not a readable PyTorch checkpoint"):
    u.load_official(truncated, CFG)


class _Payload:
  """Unpickling this object would create a file: the side effect a loader must never cause."""

  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (open, (str(self.target), "w"))


def test_code_executing_pickle_is_refused_and_never_runs(tmp_path, state_dict):
  marker = tmp_path / "pwned"
  evil = tmp_path / "evil.pth"
  sd = {k: torch.from_numpy(v) for k, v in state_dict.items()}
  sd["payload"] = _Payload(marker)
  with open(evil, "wb") as f:
    torch.save(sd, f, pickle_module=pickle)
  assert not marker.exists()
  with pytest.raises(CheckpointError, match="refused to unpickle.*nothing was executed"):
    read_checkpoint(evil)
  assert not marker.exists()


def test_wrapped_training_checkpoint_loads(tmp_path, state_dict):
  """Official training checkpoints wrap the state dict: {'epoch', 'model_state', ...}."""
  path = tmp_path / "checkpoint_epoch_00001.pyth"
  torch.save({"epoch": 1, "model_state": {k: torch.from_numpy(v) for k, v in
                                          state_dict.items()}, "cfg": "TRAIN:\n  ENABLE: True"},
             path)
  model = u.load_official(path, CFG)
  assert model.cfg.num_classes == 10


def test_relative_checkpoint_directories_work(tmp_path, monkeypatch):
  """Users pass relative workdirs (`--workdir demo_run`); Orbax itself needs absolute paths."""
  from uniformerv2_jax.checkpoint import TrainCheckpointer, load_checkpoint, save_model

  monkeypatch.chdir(tmp_path)
  model = u.load_official(FIXTURES / "tiny_k400" / "model.npz", CFG)
  save_model("rel_ckpt", model)
  assert load_checkpoint("rel_ckpt").cfg == model.cfg
  manager = TrainCheckpointer("run/checkpoints")
  assert str(manager.directory) == str(tmp_path / "run" / "checkpoints")
  manager.close()


def test_training_state_of_another_layout_is_a_clear_error(tmp_path):
  """A run's checkpoint whose optimizer state has another structure (an older optimizer, a
  different recipe) names the directory and the way out instead of Orbax's bare mismatch."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from uniformerv2_jax.checkpoint import TrainCheckpointer
  from uniformerv2_jax.steps import TrainState

  params = nnx.State({"w": nnx.Param(jnp.ones(3))})

  def state(opt_state):
    return TrainState(step=jnp.int32(1), params=params, batch_stats=nnx.State({}),
                      opt_state=opt_state, key=jnp.zeros(2, jnp.uint32))

  ckpt = TrainCheckpointer(tmp_path / "checkpoints", async_save=False)
  ckpt.save(1, state(({"mu": jnp.ones(3)}, {"count": jnp.int32(0)})), data_state={}, config={})
  ckpt.wait()
  abstract = jax.eval_shape(lambda: state({"count": jnp.int32(0), "mu": jnp.ones(3),
                                           "nu": jnp.ones(3)}))
  with pytest.raises(ValueError, match=r"checkpoints step 1: the stored training state does "
                     r"not match.*--config.init_from="):
    ckpt.restore(1, abstract)
  ckpt.close()
