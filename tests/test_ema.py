"""EMA of the parameters, end to end: a short training run with ``optim.ema_decay > 0`` saves
EMA weights equal to the recurrence computed here in NumPy from the parameters after each step;
``--mode eval`` and ``--mode predict`` with ``--use_ema`` then give what those weights give, and
not what the raw parameters give."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from tests.conftest import REPO
from tests.util import fast_compile_env
from uniformerv2_jax import checkpoint as ckpt_lib
from uniformerv2_jax.data import demo_dataset
from uniformerv2_jax.model import create_model
from uniformerv2_jax.trees import flat_state

STEPS = 4
DECAY = 0.75  # not 0.5: a swapped recurrence (decay on the new params) must give other numbers


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from tests.tiny_train_config import get_config
  from uniformerv2_jax.train import model_config, train_and_evaluate

  root = str(tmp_path_factory.mktemp("demo"))
  demo_dataset.generate(root, seed=3, train_per_class=2, val_per_class=1)
  config = get_config(root)
  config.total_steps = STEPS
  config.optim.ema_decay = DECAY
  # A checkpoint after every step, all kept: the parameters of each step, read back from what
  # the run saves anyway (the code under test runs unchanged).
  config.checkpoint_every_steps = 1
  config.keep_checkpoints = STEPS + 1
  config.eval_every_steps = 100
  workdir = str(tmp_path_factory.mktemp("run"))
  train_and_evaluate(config, workdir)
  return {"root": root, "config": config, "workdir": workdir,
          "initial": flat_state(create_model(model_config(config), seed=config.seed), nnx.Param)}


def _params(tree: dict) -> dict:
  return {k: np.asarray(v, np.float64) for k, v in tree.items()}


def test_saved_ema_is_the_recurrence_of_the_params(trained):
  workdir = trained["workdir"]
  assert ckpt_lib.checkpoint_steps(workdir) == list(range(1, STEPS + 1))
  # Documented start (steps.init_train_state): the EMA is a copy of the initial params, no
  # zero start and no bias correction.
  ema = _params(trained["initial"])
  scale: dict = {}
  for step in range(1, STEPS + 1):
    raw = ckpt_lib.load_checkpoint(workdir, step=step)
    saved = ckpt_lib.load_checkpoint(workdir, step=step, use_ema=True)
    params = _params(flat_state(raw, nnx.Param))
    ema = {k: DECAY * ema[k] + (1 - DECAY) * params[k] for k in params}
    # BatchNorm statistics are not averaged: the EMA checkpoint carries the run's own.
    stats = flat_state(raw, nnx.BatchStat)
    assert stats  # the tiny model has local MHRA, hence BatchNorm
    for k, v in flat_state(saved, nnx.BatchStat).items():
      np.testing.assert_array_equal(np.asarray(v), np.asarray(stats[k]))
    saved = flat_state(saved, nnx.Param)
    assert saved.keys() == params.keys()
    moved = 0
    for k, p in params.items():
      # float32 recurrence vs this float64 one: each step rounds the two products and the
      # sum (< 2 ulp of the largest operand seen), and the error carried over shrinks by
      # DECAY, so 2 ulp x step of the running max of |ema|, |params| bounds it.
      scale[k] = np.maximum(scale.get(k, 0.0), np.maximum(np.abs(ema[k]), np.abs(p)))
      atol = 2 * step * np.finfo(np.float32).eps * scale[k]
      got = np.asarray(saved[k], np.float64)
      assert np.all(np.abs(got - ema[k]) <= atol), (step, k, np.abs(got - ema[k]).max())
      moved += int(np.any(np.abs(p - ema[k]) > 10 * atol))
    assert moved > 0, "the EMA never differs from the params: the test would prove nothing"


def _reference_checkpoint(trained, tmp_path) -> str:
  """The NumPy EMA of the last step as a plain checkpoint (params only) with the run's config."""
  workdir = trained["workdir"]
  ema = _params(trained["initial"])
  for step in range(1, STEPS + 1):
    params = _params(flat_state(ckpt_lib.load_checkpoint(workdir, step=step), nnx.Param))
    ema = {k: DECAY * ema[k] + (1 - DECAY) * params[k] for k in params}
  last = ckpt_lib.load_checkpoint(workdir, step=STEPS)
  values = {k: np.asarray(v) for k, v in flat_state(last, nnx.BatchStat).items()}
  values.update({k: v.astype(np.float32) for k, v in ema.items()})
  ref = create_model(last.cfg, values=values)
  config = ckpt_lib.read_config(workdir, step=STEPS)
  path = str(tmp_path / "reference")
  ckpt_lib.save_model(path, ref, step=STEPS,
                      extra_config={k: v for k, v in config.items() if k != "model"})
  return path


def _main(*args: str, env: dict | None = None) -> None:
  subprocess.run([sys.executable, "main.py", *args], cwd=REPO, check=True, capture_output=True,
                 timeout=600, env=env)


def _eval_scores(trained, checkpoint: str, out: str, *flags: str) -> list[str]:
  _main("--mode", "eval", "--config", f"tests/tiny_train_config.py:{trained['root']}",
        "--config.dataset.test_list=val.csv",  # the generated dataset has no test split
        "--checkpoint", checkpoint, "--workdir", out, *flags,
        env=fast_compile_env())  # the evals are compared only with each other: cheap compiles
  with open(os.path.join(out, "test_predictions.csv")) as f:
    return [(r["prediction"], float(r["score"])) for r in csv.DictReader(f)]


def test_eval_and_predict_use_ema_weights(trained, tmp_path):
  from uniformerv2_jax import predict

  ref = _reference_checkpoint(trained, tmp_path)
  workdir = trained["workdir"]
  # --mode eval: per-video top-1 class and score (4 decimals in the CSV).
  with_ema = _eval_scores(trained, workdir, str(tmp_path / "eval_ema"), "--use_ema")
  want = _eval_scores(trained, ref, str(tmp_path / "eval_ref"))
  raw = _eval_scores(trained, workdir, str(tmp_path / "eval_raw"))
  assert len(with_ema) == len(want) == 10
  # The float32 EMA and the rounded float64 reference differ by ulps: probabilities by ~1e-6,
  # within one unit of the CSV's 4th decimal.
  for (c1, s1), (c2, s2) in zip(with_ema, want, strict=True):
    assert c1 == c2 and abs(s1 - s2) <= 1e-4, (with_ema, want)
  assert max(abs(s1 - s2) for (_, s1), (_, s2) in zip(with_ema, raw, strict=True)) > 1e-3

  # --mode predict: full-precision probabilities in the JSON output.
  val = os.path.join(trained["root"], "val")
  video = os.path.join(val, sorted(os.listdir(val))[0])
  out = str(tmp_path / "preds.json")
  _main("--mode", "predict", "--checkpoint", workdir, "--input", video, "--output", out,
        "--topk", "10", "--use_ema")

  def probs(entries) -> np.ndarray:
    p = np.zeros(10)
    for t in entries[0]["topk"]:
      p[t["index"]] = t["prob"]
    return p

  got = probs(json.load(open(out)))
  kw = dict(topk=10, progress=False, verbose=False)
  want_p = probs(predict.predict_videos(ref, video, **kw))
  raw_p = probs(predict.predict_videos(workdir, video, **kw))
  np.testing.assert_allclose(got, want_p, atol=1e-5)  # ulps of the weights, see above
  assert np.abs(got - raw_p).max() > 1e-3
