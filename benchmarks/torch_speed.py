"""The same work in the official PyTorch model and in this port, in one run: B/16 8x224 eval
forward and train step (forward + cross-entropy + backward + clip_grad_norm_(20) + AdamW), batch
1, float32 on CPU, alternating round by round so that both see the same machine.

    python benchmarks/torch_speed.py --official UNIFORMERV2_CHECKOUT   # e.g. a git clone of
        # OpenGVLab/UniFormerV2: its slowfast/models/uniformerv2_model.py is imported from there

The official module imports ``timm`` (its DropPath) and ``slowfast.utils.logging``, neither of
which is needed to build the model: both are replaced by small stand-ins in ``sys.modules``
(the stand-in DropPath drops whole samples like timm's). Nothing of the official repository
is copied here. Needs ``torch`` (requirements-dev.txt).

Prints a table and one JSON line per measurement: ``name``, ``seconds``, ``gflops_per_s`` (the
FLOP count of ``uniformerv2_jax/flops.py`` for both), ``fraction_of_peak`` (against the float32
2048x2048 matmul of the same framework, bracketing each sample) and ``speedup_vs_torch``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# torch's OpenMP threads otherwise spin after each op and steal the cores from XLA's threads
# in the alternating rounds (measured: the JAX train step 60% slower beside spinning threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import speed_common as sc  # noqa: E402

from uniformerv2_jax import host_memory  # noqa: E402
from uniformerv2_jax.model import REMAT_POLICIES  # noqa: E402

OFFICIAL_FILE = os.path.join("slowfast", "models", "uniformerv2_model.py")


def _stub_modules(torch) -> None:
  """``timm.models.layers.DropPath`` and ``slowfast.utils.logging`` for the official import."""

  class DropPath(torch.nn.Module):
    """Stochastic depth: per sample (first axis), keep with 1 - p and scale by 1 / (1 - p)."""

    def __init__(self, drop_prob=0.0):
      super().__init__()
      self.p = float(drop_prob or 0.0)

    def forward(self, x):
      if not self.training or self.p == 0.0:
        return x
      keep = 1.0 - self.p
      mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
      return x * mask / keep

  layers = types.ModuleType("timm.models.layers")
  layers.DropPath = DropPath
  log = types.ModuleType("slowfast.utils.logging")
  log.get_logger = logging.getLogger
  for name in ("timm", "timm.models", "slowfast", "slowfast.utils"):
    sys.modules.setdefault(name, types.ModuleType(name))
  sys.modules["timm.models.layers"] = layers
  sys.modules["slowfast.utils.logging"] = log


def load_official(checkout: str):
  import torch

  path = os.path.join(checkout, OFFICIAL_FILE)
  if not os.path.isfile(path):
    raise SystemExit(f"--official {checkout}: {OFFICIAL_FILE} not found there (give a checkout of "
                     "OpenGVLab/UniFormerV2)")
  _stub_modules(torch)
  spec = importlib.util.spec_from_file_location("official_uniformerv2_model", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def official_b16(module, cfg):
  """The official B/16 with this port's k400:b16_8x224 settings, dropout and drop path
  included (no pretrained weights)."""
  return module.uniformerv2_b16(
    pretrained=False, t_size=cfg.num_frames, dw_reduction=cfg.dw_reduction,
    backbone_drop_path_rate=cfg.backbone_drop_path_rate,
    temporal_downsample=cfg.temporal_downsample, no_lmhra=cfg.no_lmhra,
    double_lmhra=cfg.double_lmhra, return_list=list(cfg.return_list), n_layers=cfg.n_layers,
    n_dim=cfg.n_dim, n_head=cfg.n_head, mlp_factor=cfg.mlp_factor,
    drop_path_rate=cfg.drop_path_rate, mlp_dropout=list(cfg.mlp_dropout),
    cls_dropout=cfg.cls_dropout, num_classes=cfg.num_classes, frozen=cfg.frozen)


class TorchBench:
  def __init__(self, model, cfg, batch: int):
    import torch

    self.torch = torch
    r = cfg.input_resolution
    self.x = torch.randn(batch, 3, cfg.num_frames, r, r)
    self.y = torch.zeros(batch, dtype=torch.long)
    self.model = model
    self.opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=0.05)
    n = 2048
    self.a, self.b = torch.randn(n, n), torch.randn(n, n)

  def run_eval(self):
    self.model.eval()
    with self.torch.no_grad():
      return self.model(self.x)

  def run_train(self):
    self.model.train()
    self.opt.zero_grad(set_to_none=True)
    loss = self.torch.nn.functional.cross_entropy(self.model(self.x), self.y)
    loss.backward()
    self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 20.0)
    self.opt.step()
    return loss

  def matmul_flops(self, repeats: int = 5) -> float:
    times = [sc.time_call(lambda: self.a @ self.b, 0.0) for _ in range(repeats)]
    return 2.0 * 2048**3 / sc.median(times)


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--official", required=True, help="checkout of OpenGVLab/UniFormerV2")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
  p.add_argument("--remat", default="qkv_mlp", choices=REMAT_POLICIES,
                 help="this port's remat policy (default qkv_mlp: the fastest on XLA:CPU)")
  a = p.parse_args(argv)
  import torch

  torch.set_num_threads(a.threads)
  module = load_official(a.official)
  cfg = sc.model_config("b16", remat_policy=a.remat)
  t0 = time.perf_counter()
  tb = TorchBench(official_b16(module, cfg), cfg, batch=1)
  print(f"# official model built in {time.perf_counter() - t0:.1f} s; compiling ours",
        file=sys.stderr, flush=True)
  jb = sc.Bench(cfg, 1)
  jpeak = sc.MatmulPeak()
  for warm in (jb.run_eval, jb.run_train, tb.run_eval, tb.run_train):
    warm()
  samples: dict[str, list[tuple[float, float]]] = {}  # name -> [(seconds, peak FLOP/s)]
  jobs = (("jax_eval_forward", jb.run_eval, jb.eval_flops, "jax"),
          ("torch_eval_forward", tb.run_eval, jb.eval_flops, "torch"),
          ("jax_train_step", jb.run_train, jb.train_flops, "jax"),
          ("torch_train_step", tb.run_train, jb.train_flops, "torch"))
  for _ in range(a.rounds):
    for name, fn, _, framework in jobs:
      # One untimed call after switching frameworks: the first step after the other
      # framework ran was up to 2x slower (its allocator had returned the memory to the OS).
      fn()
      peak_before = jpeak.sample() if framework == "jax" else tb.matmul_flops()
      s = sc.time_call(fn)
      peak_after = jpeak.sample() if framework == "jax" else tb.matmul_flops()
      samples.setdefault(name, []).append((s, 0.5 * (peak_before + peak_after)))
  records = []
  for name, _, flops, framework in jobs:
    secs = [s for s, _ in samples[name]]
    s = sc.median(secs)
    records.append({
      "name": name, "framework": framework, "seconds": s,
      "seconds_all": [round(t, 4) for t in secs],
      "flops": flops, "gflops_per_s": flops / s / 1e9,
      "fraction_of_peak": sc.median([flops / t / pk for t, pk in samples[name]]),
      "matmul_f32_gflops_per_s": sc.median([pk for _, pk in samples[name]]) / 1e9,
      "torch_version": torch.__version__, "threads": a.threads, "loadavg": sc.loadavg(),
      "remat": a.remat if framework == "jax" else "none (official default)"})
  by = {r["name"]: r for r in records}
  for kind in ("eval_forward", "train_step"):
    by[f"jax_{kind}"]["speedup_vs_torch"] = by[f"torch_{kind}"]["seconds"] / \
      by[f"jax_{kind}"]["seconds"]
  print(f"\nB/16 8x224 batch 1 float32 (this port: remat={a.remat}), {a.rounds} alternating "
        f"rounds, torch {torch.__version__} ({a.threads} threads)")
  print(f"{'name':<22}{'seconds':>9}{'GFLOP/s':>9}{'of own matmul':>15}{'matmul GFLOP/s':>16}")
  for r in records:
    print(f"{r['name']:<22}{r['seconds']:>9.3f}{r['gflops_per_s']:>9.1f}"
          f"{r['fraction_of_peak']:>15.2f}{r['matmul_f32_gflops_per_s']:>16.1f}")
  for r in records:
    sc.emit(r)
  return records


if __name__ == "__main__":
  host_memory.reexec_with_malloc_tuning()  # huge-page malloc, as main.py
  main()
