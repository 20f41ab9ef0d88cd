"""Seconds from ``python -m uniformerv2_jax.app --checkpoint DIR`` starting to its first
``/predict`` answer, for the demo configuration's model (``configs/demo.py``, random weights: the
time does not depend on them), first with an empty JAX compilation cache, then with the cache
the first start left. Prints a table and a JSON line.

    python benchmarks/app_startup.py [--starts 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.test_app_browser import start_app  # noqa: E402
from tests.util import free_port  # noqa: E402
from uniformerv2_jax import checkpoint  # noqa: E402
from uniformerv2_jax.config_files import load_config_file  # noqa: E402
from uniformerv2_jax.data import demo_dataset  # noqa: E402
from uniformerv2_jax.model import create_model  # noqa: E402
from uniformerv2_jax.train import config_json, model_config  # noqa: E402


def first_answer_s(ckpt: str, video: str, cache: str, log: str) -> float:
  from gradio_client import Client, handle_file

  port = free_port()
  env = {**os.environ, "XDG_CACHE_HOME": cache}
  start = time.perf_counter()
  proc = start_app(ckpt, port, log, env)
  try:
    Client(f"http://127.0.0.1:{port}/", verbose=False).predict(handle_file(video),
                                                               api_name="/predict")
    return time.perf_counter() - start
  finally:
    proc.terminate()
    proc.wait(30)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--starts", type=int, default=2, help="starts after the cold one")
  args = parser.parse_args()
  tmp = Path(tempfile.mkdtemp())
  demo_dataset.generate(str(tmp / "demo"), seed=0, train_per_class=0, val_per_class=1)
  config = load_config_file("demo")
  config.dataset.root = str(tmp / "demo")
  ckpt = checkpoint.save_model(tmp / "ckpt", create_model(model_config(config), seed=0),
                               extra_config={"train_config": config_json(config),
                                             "labels": list(demo_dataset.CLASSES)})
  video = str(sorted((tmp / "demo" / "val").iterdir())[0])
  cache = str(tmp / "cache")
  cold = first_answer_s(str(ckpt), video, cache, str(tmp / "cold.log"))
  warm = [first_answer_s(str(ckpt), video, cache, str(tmp / f"warm{i}.log"))
          for i in range(args.starts)]
  print(f"demo model, command start to the first /predict answer (load average "
        f"{os.getloadavg()[0]:.1f}):")
  print(f"  empty compilation cache  {cold:6.1f} s")
  print(f"  cache from a first start {min(warm):6.1f} s (best of {len(warm)})")
  print(json.dumps({"benchmark": "app_startup", "cold_s": round(cold, 1),
                    "warm_s": round(min(warm), 1), "loadavg": round(os.getloadavg()[0], 2),
                    "host": platform.processor() or platform.machine()}))


if __name__ == "__main__":
  main()
