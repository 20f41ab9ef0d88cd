"""A real TFDS dataset, written by ``tensorflow-datasets`` itself (a tiny builder with
``file_format=array_record``; no TensorFlow needed), read back through ``TfdsSource``
(``tfds.data_source``) and the training pipeline."""

from __future__ import annotations

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from uniformerv2_jax.data import sources  # noqa: E402

CLIPS = {"train": 6, "test": 3}


def _clip(split: str, i: int) -> tuple[np.ndarray, int]:
  """Frames and label of example ``i``: distinct lengths, so every clip is recognisable."""
  rng = np.random.default_rng([len(split), i])
  return rng.integers(0, 256, (5 + i, 16, 20, 3), dtype=np.uint8), i % 3


class TinyVideos(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
      "video": tfds.features.Tensor(shape=(None, 16, 20, 3), dtype=np.uint8),
      "label": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in CLIPS}

  def _generate_examples(self, split):
    for i in range(CLIPS[split]):
      video, label = _clip(split, i)
      yield f"{split}{i}", {"video": video, "label": label}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("tfds"))
  TinyVideos(data_dir=path, file_format="array_record").download_and_prepare()
  return path


@pytest.mark.parametrize("split", ["train", "test"])
def test_tfds_source_reads_what_tfds_wrote(data_dir, split):
  src = sources.TfdsSource("tiny_videos", split=split, data_dir=data_dir)
  assert len(src) == CLIPS[split]
  # TFDS shuffles examples on write: match them by their (distinct) lengths.
  want = {len(v): (v, label) for v, label in (_clip(split, i) for i in range(CLIPS[split]))}
  seen = set()
  for i in range(len(src)):
    rec = src[i]
    assert rec["kind"] == "array" and rec["path"] == f"tiny_videos[{i}]"
    video, label = want[len(rec["frames"])]
    np.testing.assert_array_equal(rec["frames"], video)
    assert rec["label"] == label
    seen.add(len(video))
    clip = sources.read_clip(rec, lambda n: np.array([0, n - 1]))
    np.testing.assert_array_equal(clip.frames, video[[0, -1]])
  assert len(seen) == CLIPS[split]
