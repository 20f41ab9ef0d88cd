"""The ahead-of-time plan (uniformerv2_jax/plan.py): the state's bytes against a count the plan
did not produce (the official model's parameter count), a config that does not fit a given
memory (with the largest batch that does, checked by compiling it), and ``--topology`` errors
that never fall back to the local backend."""

import importlib.util
import json
import subprocess
import sys

import jax
import pytest

from tests.conftest import FIXTURES, REPO
from uniformerv2_jax import plan as plan_lib
from uniformerv2_jax.configs import common
from uniformerv2_jax.model import ModelConfig
from uniformerv2_jax.variants import config_from_official

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def _tiny_config():
  c = common.base_config()
  c.model = common.model_config_dict(ModelConfig(
    num_classes=10, num_frames=2, input_resolution=32, patch_size=16, width=32, layers=1,
    heads=2, no_lmhra=True, return_list=(0,), n_layers=1, n_dim=32, n_head=2, mlp_factor=2.0,
    mlp_dropout=(0.0,), cls_dropout=0.0))
  c.batch_size = 2
  return c


def test_state_bytes_match_the_official_parameter_count():
  """params / AdamW moments / EMA bytes = the official PyTorch model's parameter count
  (``derived.num_params`` of the fixture, counted by torch) x 4 bytes (float32)."""
  official = json.loads((FIXTURES / "tiny_k400" / "config.json").read_text())
  n = official["derived"]["num_params"]
  c = common.base_config()
  c.model = common.model_config_dict(config_from_official(FIXTURES / "tiny_k400" / "config.json"))
  c.batch_size = 1
  c.optim.ema_decay = 0.999
  r = plan_lib.plan(c, fit_batch=False)
  assert r["param_count"] == n
  assert r["params_bytes"] == 4 * n
  assert r["ema_bytes"] == 4 * n  # the EMA is a float32 copy of the params
  assert r["batch_stats_bytes"] == 0  # no local MHRA: no BatchNorm
  # AdamW: two float32 moments per parameter; the rest is optax's scalar step counters (a few
  # int32), hence the 64-byte allowance.
  assert 0 <= r["optimizer_bytes"] - 2 * 4 * n <= 64, r["optimizer_bytes"]
  # The compiled step's arguments hold at least the whole state (plus the batch).
  assert r["argument_bytes"] >= r["params_bytes"] + r["optimizer_bytes"] + r["ema_bytes"]


def test_plan_that_does_not_fit_names_the_largest_batch(capsys):
  """8 clips of the tiny model need ~1.4 MB on XLA:CPU; with 1.2 MB the plan must say it does
  not fit and name a smaller batch, which a compile at that batch confirms (and one clip more
  does not fit)."""
  config = _tiny_config()
  config.batch_size = 8
  limit_gb = 1.2e-3
  result = plan_lib.print_memory_plan(config, device_memory_gb=limit_gb)
  out = capsys.readouterr().out.strip().splitlines()
  line = json.loads(out[-1])  # the JSON line carries the same figures as the returned dict
  assert line["max_global_batch"] == result["max_global_batch"]
  assert result["fits"] is False and line["fits"] is False
  assert result["total_bytes_per_device"] > limit_gb * 1e9
  best = result["max_global_batch"]
  assert 0 < best < 8, best
  table = "\n".join(out[:-1])
  assert "fits: False" in table
  assert any(r.startswith("largest global batch that fits") and r.split()[-1] == str(best)
             for r in out[:-1]), table
  cfg = plan_lib.train_lib.model_config(config)
  assert result["flops_per_step"] == 2 * 3 * 8 * plan_lib.flops_lib.forward_macs(cfg)
  at_best = plan_lib.plan(config, device_memory_gb=limit_gb, batch_size=best, fit_batch=False)
  assert at_best["fits"] is True, at_best["total_bytes_per_device"]
  if best + 1 < 8:  # 8 itself was compiled above and did not fit
    above = plan_lib.plan(config, device_memory_gb=limit_gb, batch_size=best + 1,
                          fit_batch=False)
    assert above["fits"] is False, above["total_bytes_per_device"]


@pytest.mark.skipif(HAS_LIBTPU, reason="libtpu is installed: the missing-libtpu error cannot occur")
def test_topology_without_libtpu_is_an_error():
  with pytest.raises(plan_lib.TopologyError) as e:
    plan_lib.plan(_tiny_config(), topology="v5e:2x2", fit_batch=False)
  msg = str(e.value)
  assert "\n" not in msg
  assert "v5e:2x2 needs libtpu" in msg and f"pip install 'jax[tpu]=={jax.__version__}'" in msg


@pytest.mark.parametrize("topology, message", [
  ("v9z:2x2", "unknown TPU chip 'v9z'"),
  ("v5e-2x2", "is malformed"),
  ("v5e:2x", "is malformed"),
])
def test_bad_topology_is_an_error_even_with_libtpu(monkeypatch, topology, message):
  """The name is checked before libtpu is looked for: pretend libtpu is installed."""
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: object() if name == "libtpu" else real(name, *a))
  with pytest.raises(plan_lib.TopologyError, match=message):
    plan_lib.plan(_tiny_config(), topology=topology, fit_batch=False)


@pytest.mark.skipif(HAS_LIBTPU, reason="libtpu is installed: the missing-libtpu error cannot occur")
def test_plan_cli_topology_error_is_one_line_and_exits_2():
  proc = subprocess.run(
    [sys.executable, "main.py", "--mode", "plan", "--config", "configs/demo.py",
     "--topology", "v5e:2x2", "--device_memory_gb", "1"],
    cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr, proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
    f"error: --topology v5e:2x2 needs libtpu, which is not installed: "
    f"pip install 'jax[tpu]=={jax.__version__}'"), proc.stderr
  assert "total / device" not in proc.stdout  # nothing was planned on the local backend
