"""Prediction and feature extraction on two processes (jax.distributed on localhost, one CPU
device each) against one process: each process writes its part, process 0 the index and the
merged outputs, and the parts together are the single-process outputs bit for bit.

Both runs are the same worker (the command line's predict / extract wiring, extract then
predict in one interpreter, so one compile per process) under the same XLA flags; only the
process count differs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import FIXTURES, REPO
from tests.test_predict import _frames
from tests.util import fast_compile_env, free_port
from uniformerv2_jax import checkpoint, load_official
from uniformerv2_jax.data.demo_dataset import write_mp4
from uniformerv2_jax.errors import InputError
from uniformerv2_jax.predict import ProcessShare

# Sorted input order: a b c | d_broken e f -> process 0 takes a, b, c; process 1 the rest, the
# broken file included, so its error has to travel through process 1's part.
VIDEOS = {"a.mp4": (40, 56, 9, 10), "b.mp4": (48, 40, 12, 10), "c.mp4": (36, 36, 8, 10),
          "e.mp4": (44, 60, 10, 10), "f.mp4": (40, 40, 16, 10)}
BROKEN = "d_broken.mp4"

WORKER = """
import json, sys
from uniformerv2_jax import cli
ckpt, videos, out = sys.argv[1:]
status = {}
for mode, name in (("extract", "feats.npz"), ("predict", "preds.json")):
  cli.FLAGS.unparse_flags()
  cli.FLAGS(["main.py", f"--mode={mode}", f"--checkpoint={ckpt}", f"--input={videos}",
             f"--output={out}/{name}", "--merge", "--batch_size=2", "--topk=3"])
  status[mode] = cli.predict_or_extract(None)
print("STATUS " + json.dumps(status))
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost_predict")
  fixture = FIXTURES / "tiny_k400"
  ckpt = root / "ckpt"
  checkpoint.save_model(ckpt, load_official(fixture / "model.pth", fixture / "config.json"))
  videos = root / "videos"
  videos.mkdir()
  for seed, (name, (h, w, t, fps)) in enumerate(VIDEOS.items()):
    write_mp4(str(videos / name), _frames(h, w, t, seed), fps=fps)
  (videos / BROKEN).write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 20)
  return str(ckpt), str(videos)


def _launch(inputs, out, num_processes):
  """The worker on ``num_processes`` processes; each one's STATUS line (exit statuses)."""
  out.mkdir()
  port = free_port()
  procs = []
  for pid in range(num_processes):
    extra = dict(JAX_PLATFORMS="cpu")
    if num_processes > 1:
      extra.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen([sys.executable, "-c", WORKER, *inputs, str(out)], cwd=REPO,
                                  env=fast_compile_env(**extra), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=600) for p in procs]
  status = []
  for p, (stdout, stderr) in zip(procs, outs, strict=True):
    assert p.returncode == 0, stderr[-3000:]
    line = next(s for s in stdout.splitlines() if s.startswith("STATUS "))
    status.append(json.loads(line[len("STATUS "):]))
  return status


def _npz(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def test_two_processes_equal_one(inputs, tmp_path):
  single, multi = tmp_path / "single", tmp_path / "multi"
  assert _launch(inputs, single, 1) == [{"extract": 3, "predict": 3}]
  # Exit status 3 (some input failed) only where the broken video was.
  assert _launch(inputs, multi, 2) == [{"extract": 0, "predict": 0},
                                       {"extract": 3, "predict": 3}]
  assert sorted(p.name for p in single.iterdir()) == ["feats.npz", "preds.json"]
  assert sorted(p.name for p in multi.iterdir()) == [
    "feats-00000-of-00002.npz", "feats-00001-of-00002.npz", "feats.index.json", "feats.npz",
    "preds-00000-of-00002.json", "preds-00001-of-00002.json", "preds.index.json", "preds.json"]
  want = _npz(single / "feats.npz")
  names = [v.rsplit("/", 1)[-1] for v in want["videos"]]
  assert names == sorted([*VIDEOS, BROKEN])

  # Features: the parts are disjoint blocks whose union is every video once, and their rows
  # equal the single process's exactly (same program, same views: no tolerance).
  parts = [_npz(multi / f"feats-{i:05d}-of-00002.npz") for i in range(2)]
  got = [[v.rsplit("/", 1)[-1] for v in p["videos"]] for p in parts]
  assert got == [names[:3], names[3:]]
  for key, value in want.items():
    joined = value if key == "num_views" else np.concatenate([p[key] for p in parts])
    np.testing.assert_array_equal(joined, value, err_msg=key)  # NaN rows (broken) equal too
    np.testing.assert_array_equal(_npz(multi / "feats.npz")[key], value, err_msg=key)
  assert want["errors"][3].startswith("cannot read video") and np.isnan(want["features"][3]).all()

  # Predictions: entries of the parts in order are the single process's, float for float.
  entries = json.loads((single / "preds.json").read_text())
  part_entries = [json.loads((multi / f"preds-{i:05d}-of-00002.json").read_text())
                  for i in range(2)]
  assert part_entries[0] + part_entries[1] == entries
  assert (multi / "preds.json").read_text() == (single / "preds.json").read_text()
  assert [len(e["topk"]) for e in entries] == [3, 3, 3, 0, 3, 3]

  # The indexes name the parts and carry process 1's error.
  for name, part in (("feats", "npz"), ("preds", "json")):
    index = json.loads((multi / f"{name}.index.json").read_text())
    assert index["num_videos"] == 6 and index["num_failed"] == 1 and index["merged"]
    assert [(p["process"], p["file"].rsplit("/", 1)[-1], p["num_videos"])
            for p in index["parts"]] == [(i, f"{name}-{i:05d}-of-00002.{part}", 3)
                                         for i in range(2)]
    assert index["parts"][0]["errors"] == []
    assert index["parts"][1]["errors"] == [{"video": entries[3]["video"],
                                            "error": entries[3]["error"]}]


def test_blocks_and_bad_settings():
  """Blocks of every size split any list into its contiguous, in-order pieces; settings the
  parts cannot honour fail before any work, naming the flag."""
  for n in range(0, 12):
    for count in range(1, 6):
      videos = [f"v{i}" for i in range(n)]
      blocks = [ProcessShare(i, count).take(videos) for i in range(count)]
      assert [v for b in blocks for v in b] == videos
      assert {len(b) for b in blocks} <= {n // count, -(-n // count)}
  assert ProcessShare(0, 1).part_path("out/feats.npz") == "out/feats.npz"
  assert ProcessShare(1, 12).part_path("gs://b/p.json") == "gs://b/p-00001-of-00012.json"
  with pytest.raises(InputError, match="--merge .*--output"):
    ProcessShare(0, 2).check(None, True)
  with pytest.raises(InputError, match="--output f.npy: 2 processes .* .npz"):
    ProcessShare(1, 2).check("f.npy", False)
  ProcessShare(0, 1).check("f.npy", False)  # one process: .npy as before
