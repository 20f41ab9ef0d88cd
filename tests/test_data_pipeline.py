"""Pipeline: determinism, resume, process sharding, eval views, bad data, sources, demo data."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from tests.conftest import REPO
from uniformerv2_jax.data import demo_dataset, pipeline, prepare, sources, transforms
from uniformerv2_jax.data.video import SKIP_KINDS

AUG = transforms.TrainAugConfig(crop_size=16, random_flip=False)
SAMP = pipeline.SamplingConfig(num_frames=4, num_clips=2)
EVAL = transforms.EvalConfig(crop_size=16, num_spatial_crops=3)


def _write_list(path, lines):
  with open(path, "w") as f:
    f.writelines(line + "\n" for line in lines)
  return str(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  """12 tiny H.264 videos; label = video number, so batches identify their records."""
  root = tmp_path_factory.mktemp("videos")
  rng = np.random.default_rng(0)
  lines = []
  for i in range(12):
    frames = rng.integers(0, 256, (10, 24, 24, 3), dtype=np.uint8)
    demo_dataset.write_mp4(str(root / f"v{i}.mp4"), frames)
    lines.append(f"v{i}.mp4,{i}")
  list_file = _write_list(root / "list.csv", lines)
  return str(root), list_file


def _train(src, **kw):
  args = dict(batch_size=3, seed=0, sampling_cfg=SAMP, aug=AUG, process_index=0, process_count=1)
  args.update(kw)
  return pipeline.make_train_iterator(src, **args)


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_train_batches_deterministic_and_shaped(videos):
  root, list_file = videos
  src = sources.VideoListSource(list_file, root, num_classes=12)
  a, b = _take(_train(src), 3), _take(_train(src), 3)
  assert a[0]["video"].shape == (3, 4, 16, 16, 3) and a[0]["video"].dtype == np.float32
  assert a[0]["skipped"].shape == (3, len(SKIP_KINDS))
  for x, y in zip(a, b, strict=True):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  c = _take(_train(src, seed=1), 3)
  assert any(not np.array_equal(x["video"], y["video"]) for x, y in zip(a, c, strict=True))


def test_epochs_cover_all_and_reshuffle(videos):
  root, list_file = videos
  src = sources.VideoListSource(list_file, root)
  it = _train(src, batch_size=4, aug=transforms.TrainAugConfig(crop_size=8, rand_augment=None))
  labels = np.concatenate([b["label"] for b in _take(it, 6)])
  e0, e1 = labels[:12], labels[12:]
  assert sorted(e0) == list(range(12)) and sorted(e1) == list(range(12))
  assert not np.array_equal(e0, e1)


def test_resume_from_iterator_state(videos):
  root, list_file = videos
  src = sources.VideoListSource(list_file, root)
  it = _train(src)
  _take(it, 2)
  state = it.get_state()
  expected = _take(it, 3)
  it2 = _train(src)
  it2.set_state(state)
  for x, y in zip(expected, _take(it2, 3), strict=True):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_two_processes_disjoint_and_covering(videos):
  root, list_file = videos
  src = sources.VideoListSource(list_file, root)
  aug = transforms.TrainAugConfig(crop_size=8, rand_augment=None)
  per = []
  for pi in range(2):
    it = _train(src, batch_size=2, aug=aug, process_index=pi, process_count=2)
    per.append(np.concatenate([b["label"] for b in _take(it, 3)]))  # one epoch: 12 / 2 / 2
  assert not set(per[0]) & set(per[1])
  assert sorted(np.concatenate(per)) == list(range(12))


def test_repeated_augmentation(videos):
  root, list_file = videos
  src = sources.VideoListSource(list_file, root)
  b = next(_train(src, num_sample=2))
  assert b["video"].shape[0] == 6
  np.testing.assert_array_equal(b["label"][0::2], b["label"][1::2])
  assert not np.array_equal(b["video"][0], b["video"][1])


def test_workers_match_in_process(videos):
  flags.FLAGS.mark_as_parsed()
  root, list_file = videos
  src = sources.VideoListSource(list_file, root)
  expected = _take(_train(src), 4)
  it = _train(src, num_workers=2)
  try:
    got = _take(it, 4)
  finally:
    it.close()
  for x, y in zip(expected, got, strict=True):
    np.testing.assert_array_equal(x["video"], y["video"])
    np.testing.assert_array_equal(x["label"], y["label"])


_FRESH_PROCESS_SCRIPT = """
import sys

import numpy as np
from absl import flags

from uniformerv2_jax.data import pipeline, sources, transforms


def main():
  flags.FLAGS.mark_as_parsed()  # grain reads its absl flags in the workers
  root, list_file, out = sys.argv[1:4]
  samp = pipeline.SamplingConfig(num_frames=4, num_clips=2)
  src = sources.VideoListSource(list_file, root, num_classes=12)
  it = pipeline.make_train_iterator(
    src, batch_size=3, seed=0, sampling_cfg=samp,
    aug=transforms.TrainAugConfig(crop_size=16, random_flip=False), process_index=0,
    process_count=1, num_workers=2)
  arrays = {f"train{i}_{k}": v for i in range(3) for k, v in next(it).items()}
  it.close()
  ds, _ = pipeline.make_eval_dataset(
    src, batch_size=5, sampling_cfg=samp,
    eval_cfg=transforms.EvalConfig(crop_size=16, num_spatial_crops=3), process_index=0,
    process_count=1)
  arrays.update({f"eval3_{k}": v for k, v in ds[3].items()})
  np.savez(out, **arrays)


if __name__ == "__main__":
  main()
"""


def test_batches_equal_in_a_fresh_process_with_workers(videos, tmp_path):
  """Another interpreter, reading through two grain worker processes, produces the batches this
  process produces without workers (train) and the same eval batch."""
  root, list_file = videos
  script = tmp_path / "make_batches.py"
  script.write_text(_FRESH_PROCESS_SCRIPT)
  out = tmp_path / "batches.npz"
  env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "123"}
  proc = subprocess.run([sys.executable, str(script), root, list_file, str(out)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = dict(np.load(out))
  src = sources.VideoListSource(list_file, root, num_classes=12)
  expected = {f"train{i}_{k}": v for i, b in enumerate(_take(_train(src), 3)) for k, v in b.items()}
  ds, _ = pipeline.make_eval_dataset(
    src, batch_size=5, sampling_cfg=SAMP, eval_cfg=EVAL, process_index=0, process_count=1
  )
  expected.update({f"eval3_{k}": v for k, v in ds[3].items()})
  assert set(got) == set(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_eval_views_padding_and_processes(videos):
  root, list_file = videos
  src = sources.VideoListSource(list_file, root)
  seen = []
  num_batches = set()
  for pi in range(2):
    ds, layout = pipeline.make_eval_dataset(
      src, batch_size=5, sampling_cfg=SAMP, eval_cfg=EVAL, process_index=pi, process_count=2
    )
    num_batches.add(len(ds))
    batches = list(ds)
    valid = np.concatenate([b["valid"] for b in batches])
    vid = np.concatenate([b["video_index"] for b in batches])[valid]
    view = np.concatenate([b["view_index"] for b in batches])[valid]
    assert valid.sum() == 6 * 6 and not valid[-(len(valid) - 36) :].any()
    # Views of one video are consecutive: clip j // 3, crop j % 3.
    np.testing.assert_array_equal(view, np.tile(np.arange(6), 6))
    np.testing.assert_array_equal(vid, np.repeat(np.arange(pi, 12, 2), 6))
    seen.extend(vid[::6])
  assert len(num_batches) == 1 and sorted(seen) == list(range(12))
  # Deterministic: a second dataset built from scratch gives the same batches.
  ds, _ = pipeline.make_eval_dataset(
    src, batch_size=5, sampling_cfg=SAMP, eval_cfg=EVAL, process_index=0, process_count=1
  )
  ds2, _ = pipeline.make_eval_dataset(
    sources.VideoListSource(list_file, root), batch_size=5, sampling_cfg=SAMP, eval_cfg=EVAL,
    process_index=0, process_count=1
  )
  for i in (0, 3, len(ds) - 1):
    for k in ds[i]:
      np.testing.assert_array_equal(ds[i][k], ds2[i][k], err_msg=f"{i} {k}")
  b = ds[0]
  # Square frames give three identical crops (official); the temporal clips differ.
  np.testing.assert_array_equal(b["video"][0], b["video"][1])
  assert not np.array_equal(b["video"][0], b["video"][3])


@pytest.fixture
def bad_dataset(videos, tmp_path, monkeypatch):
  root, _ = videos
  d = tmp_path
  good = [f"v{i}.mp4" for i in range(6)]
  for g in good:
    shutil.copy(os.path.join(root, g), d / g)
  (d / "empty.mp4").write_bytes(b"")
  (d / "text.mp4").write_text("this is not a video\n" * 20)
  data = (d / "v0.mp4").read_bytes()
  (d / "cut.mp4").write_bytes(data[: len(data) // 3])
  big = np.zeros((4, 64, 64, 3), np.uint8)
  demo_dataset.write_mp4(str(d / "big.mp4"), big)
  (d / "locked.mp4").write_bytes(data)
  os.chmod(d / "locked.mp4", 0)
  real_access = os.access
  locked = str(d / "locked.mp4")
  # Root ignores file modes; make the permission check see what an ordinary user would.
  monkeypatch.setattr(
    os, "access", lambda p, m, **k: False if str(p) == locked else real_access(p, m, **k)
  )
  bad = {
    "missing.mp4": "missing",
    "empty.mp4": "empty",
    "text.mp4": "unreadable",
    "cut.mp4": "unreadable",
    "big.mp4": "too_large",
    "locked.mp4": "permission",
  }
  # Interleave: good, bad, good, bad, ... so each bad one is replaced by a good neighbour.
  names = [x for pair in zip(good, bad, strict=True) for x in pair]
  labels = {n: i for i, n in enumerate(names)}
  list_file = _write_list(d / "list.csv", [f"{n},{labels[n]}" for n in names])
  return str(d), list_file, bad, {labels[g] for g in good}


def test_bad_data_replaced_and_counted(bad_dataset):
  root, list_file, bad, good_labels = bad_dataset
  src = sources.VideoListSource(list_file, root)
  reader = pipeline.ReaderConfig(max_pixels=40 * 40)
  it = _train(src, batch_size=4, reader=reader)
  batches = _take(it, 3)  # exactly one epoch of 12 records
  labels = np.concatenate([b["label"] for b in batches])
  skipped = sum(b["skipped"].sum(0) for b in batches)
  assert set(labels) == good_labels  # every good sample present, only good ones returned
  expected = np.zeros(len(SKIP_KINDS), int)
  for kind in bad.values():
    expected[SKIP_KINDS.index(kind)] += 1
  np.testing.assert_array_equal(skipped, expected)
  # Eval: bad videos become invalid, counted once each.
  ds, _ = pipeline.make_eval_dataset(
    src,
    batch_size=6,
    sampling_cfg=SAMP,
    eval_cfg=EVAL,
    reader=reader,
    process_index=0,
    process_count=1,
  )
  batches = list(ds)
  valid = np.concatenate([b["valid"] for b in batches])
  vids = np.concatenate([b["video_index"] for b in batches])
  assert set(vids[valid]) == {i for i in range(12) if i % 2 == 0}
  np.testing.assert_array_equal(sum(b["skipped"].sum(0) for b in batches), expected)


def test_list_file_errors(tmp_path):
  with pytest.raises(sources.ListFileError, match="not found"):
    sources.VideoListSource(str(tmp_path / "nope.csv"))
  bad_line = _write_list(tmp_path / "a.csv", ["a.mp4,1", "justonefield"])
  with pytest.raises(sources.ListFileError, match=r"a\.csv:2"):
    sources.VideoListSource(bad_line)
  out_of_range = _write_list(tmp_path / "b.csv", ["a.mp4,1", "b.mp4,5"])
  with pytest.raises(sources.ListFileError, match=r"b\.csv:2.*outside"):
    sources.VideoListSource(out_of_range, num_classes=5)
  not_int = _write_list(tmp_path / "c.csv", ["a.mp4,x"])
  with pytest.raises(sources.ListFileError, match=r"c\.csv:1"):
    sources.VideoListSource(not_int)
  ws = _write_list(tmp_path / "d.txt", ["dir/a.mp4 3", "", "b.mp4\t4"])
  src = sources.VideoListSource(ws, "/data", num_classes=5)
  assert [r["path"] for r in src.records] == ["/data/dir/a.mp4", "/data/b.mp4"]
  assert [r["label"] for r in src.records] == [3, 4]
  ssv2 = _write_list(tmp_path / "e.txt", ["12345 40 7", "bad 4"])
  with pytest.raises(sources.ListFileError, match=r"e\.txt:2"):
    sources.FrameFolderListSource(ssv2)


def test_frame_folder_source_pipeline(tmp_path):
  from PIL import Image

  frames = np.random.default_rng(0).integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
  for v in range(2):
    os.makedirs(tmp_path / f"vid{v}")
    for i, f in enumerate(frames):
      Image.fromarray(f).save(tmp_path / f"vid{v}" / f"img_{i + 1:05d}.png")
  lst = _write_list(tmp_path / "l.txt", ["vid0 6 0", "vid1 6 1"])
  src = sources.FrameFolderListSource(lst, str(tmp_path), template="img_{:05d}.png", bgr=True)
  clip = sources.read_clip(src[0], lambda n: np.array([0, 5]))
  np.testing.assert_array_equal(clip.frames, frames[[0, 5]][..., ::-1])
  assert next(_train(src, batch_size=2))["video"].shape == (2, 4, 16, 16, 3)


class _FakeTfds:
  def __init__(self):
    rng = np.random.default_rng(0)
    self.items = [
      {"video": rng.integers(0, 256, (7, 20, 20, 3), dtype=np.uint8), "label": np.int64(i)}
      for i in range(4)
    ]

  def __len__(self):
    return len(self.items)

  def __getitem__(self, i):
    return self.items[i]


def test_tfds_source_with_fake_data_source():
  src = sources.TfdsSource(data_source=_FakeTfds())
  b = next(_train(src, batch_size=4))
  assert sorted(b["label"].tolist()) == [0, 1, 2, 3]
  try:
    import tensorflow_datasets  # noqa: F401
  except ImportError:
    with pytest.raises(ImportError, match="tensorflow_datasets"):
      sources.TfdsSource("kinetics400")


@pytest.mark.parametrize("fmt", ["mp4", "jpeg"])
def test_array_record_roundtrip(videos, tmp_path, fmt):
  root, list_file = videos
  out = str(tmp_path / fmt)
  prepare.prepare(list_file, root, out, short_side=16, fmt=fmt, records_per_shard=5)
  src = sources.ArrayRecordSource(out)
  assert len(src) == 12 and src[3]["label"] == 3 and src[3]["path"] == "v3.mp4"
  clip = sources.read_clip(src[3], lambda n: np.arange(n))
  assert clip.frames.shape == (10, 16, 16, 3)
  b = next(_train(src))
  assert b["video"].shape == (3, 4, 16, 16, 3)
  # The same videos from an explicit list of shards, in another order.
  shards = sorted(src.paths, reverse=True)
  again = sources.ArrayRecordSource(shards)
  assert sorted(again[i]["label"] for i in range(len(again))) == list(range(12))
  if fmt == "jpeg":  # frames are records of their own, read when asked for
    frames = src[3]["frames"]
    assert len(frames) == 10 and isinstance(frames[9], bytes) and frames[-1] == frames[9]


def test_array_record_without_index(videos, tmp_path):
  """Shards written before index.json (one record per video, every JPEG inside) still read."""
  from array_record.python.array_record_module import ArrayRecordWriter

  root, _ = videos
  frames = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
  rec = {"path": "a.mp4", "label": 4, "format": "jpeg", "num_frames": 5, "height": 16}
  rec.update(width=16, frames=prepare.encode_jpegs(frames))
  writer = ArrayRecordWriter(str(tmp_path / "old.array_record"), "group_size:1")
  writer.write(sources.encode_record(rec))
  writer.close()
  src = sources.ArrayRecordSource(str(tmp_path))
  assert len(src) == 1 and src[0]["label"] == 4
  clip = sources.read_clip(src[0], lambda n: np.array([0, 4]))
  assert clip.frames.shape == (2, 16, 16, 3) and clip.num_frames == 5


def test_mixup_in_pipeline(videos):
  root, list_file = videos
  src = sources.VideoListSource(list_file, root)
  b = next(_train(src, mixup=transforms.MixupConfig(num_classes=12)))
  assert b["soft_label"].shape == (3, 12)
  np.testing.assert_allclose(b["soft_label"].sum(1), 1.0, rtol=1e-5)


def test_demo_dataset_deterministic(tmp_path):
  a = demo_dataset.generate(str(tmp_path / "a"), seed=3, train_per_class=1, val_per_class=1)
  b = demo_dataset.generate(str(tmp_path / "b"), seed=3, train_per_class=1, val_per_class=1)
  for split in ("train", "val"):
    la = open(os.path.join(a, f"{split}.csv")).read().splitlines()
    lb = open(os.path.join(b, f"{split}.csv")).read().splitlines()
    assert la == lb and len(la) == len(demo_dataset.CLASSES)
    for line in la:
      rel = line.split(",")[0]
      with open(os.path.join(a, rel), "rb") as fa, open(os.path.join(b, rel), "rb") as fb:
        assert fa.read() == fb.read()
  labels = open(os.path.join(a, "labels.txt")).read().split()
  assert labels == list(demo_dataset.CLASSES) and len(labels) >= 8
  src = sources.VideoListSource(os.path.join(a, "val.csv"), a, num_classes=len(labels))
  clip = sources.read_clip(src[0], lambda n: np.arange(n))
  assert clip.frames.shape == (demo_dataset.NUM_FRAMES, demo_dataset.SIZE, demo_dataset.SIZE, 3)
  # Motion: the first and last frames differ for every class.
  for r in src.records:
    c = sources.read_clip(r, lambda n: np.array([0, n - 1]))
    assert np.abs(c.frames[0].astype(int) - c.frames[1]).mean() > 0.5


def test_ensure_demo_dataset(tmp_path, monkeypatch):
  calls = []
  real = demo_dataset.generate

  def small(out, seed=0):
    calls.append(out)
    return real(out, seed, train_per_class=1, val_per_class=1)

  monkeypatch.setattr(demo_dataset, "generate", small)
  root = str(tmp_path / "demo")
  assert demo_dataset.ensure_demo_dataset(root) == root
  assert os.path.isfile(os.path.join(root, "train.csv")) and len(calls) == 1
  assert demo_dataset.ensure_demo_dataset(root) == root and len(calls) == 1
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".demo-tmp-")]


def test_reader_config_from_the_config():
  """Worker processes get single-threaded decoders unless the config names a threading;
  a bad name is a clear error."""
  import importlib

  from uniformerv2_jax import train

  c = importlib.import_module("configs.k400").get_config("b16_8x224")
  assert train.reader_config(c).decode_threads == "AUTO"
  assert train.reader_config(c).selective_decode
  c.dataset.num_workers = 4
  assert train.reader_config(c).decode_threads == "NONE"
  c.dataset.decode_threads = "FRAME"
  assert train.reader_config(c).decode_threads == "FRAME"
  c.dataset.decode_threads = "fast"
  with pytest.raises(ValueError, match="dataset.decode_threads"):
    train.reader_config(c)
