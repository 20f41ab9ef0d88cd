"""The ahead-of-time plan (uniformerv2_jax/plan.py) on a tiny config: one compile, no params."""

import json

from configs import common
from uniformerv2_jax import plan as plan_lib
from uniformerv2_jax.model import ModelConfig, count_params, create_model

KEYS = ("params_bytes", "optimizer_bytes", "temp_bytes", "total_bytes_per_device",
        "flops_per_step", "argument_bytes", "output_bytes", "compile_seconds")


def _tiny_config():
  c = common.base_config()
  c.model = common.model_config_dict(ModelConfig(
    num_classes=10, num_frames=2, input_resolution=32, patch_size=16, width=32, layers=1,
    heads=2, no_lmhra=True, return_list=(0,), n_layers=1, n_dim=32, n_head=2, mlp_factor=2.0,
    mlp_dropout=(0.0,), cls_dropout=0.0))
  c.batch_size = 2
  return c




def test_plan_tiny(capsys):
  config = _tiny_config()
  result = plan_lib.main(config, device_memory_gb=0.5, fit_batch=False)
  out = capsys.readouterr().out.strip().splitlines()
  line = json.loads(out[-1])  # the JSON line parses and carries the figures
  assert "total / device" in "\n".join(out[:-1])
  for k in KEYS:
    assert k in result and k in line, k
    assert result[k] > 0, (k, result[k])
  n = count_params(create_model(plan_lib.train_lib.model_config(config)))
  assert result["param_count"] == n
  assert result["params_bytes"] == 4 * n
  # Adam: two float32 moments per parameter (plus scalar step counters).
  assert 2 * result["params_bytes"] <= result["optimizer_bytes"] <= 2 * result["params_bytes"] + 64
  assert result["total_bytes_per_device"] >= result["temp_bytes"]
  assert result["flops_per_step"] == 2 * 3 * 2 * plan_lib.flops_lib.forward_macs(
    plan_lib.train_lib.model_config(config))
  assert result["fits"] is True
  assert result["devices"] >= 1 and result["global_batch"] == 2
