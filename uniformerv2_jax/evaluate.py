"""Multi-view evaluation: clips x crops views per video, softmax per view, summed per video
(the official ``TEST.ADD_SOFTMAX`` aggregation), top-1 / top-5 / mean per-class accuracy.

Results do not depend on the batch size or the number of devices: every view is scored once,
padding and bad videos are masked out by the pipeline's ``valid`` flag, and the per-video sums
are accumulated on the host from the gathered outputs.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils


class ViewAccumulator:
  """Sums per-view probabilities into per-video scores (each (video, view) counted once), and
  any other per-view arrays named in ``extra_shapes`` (features) alike; eval, predict and
  extract all aggregate their views here."""

  def __init__(self, num_videos: int, num_classes: int, views: int,
               extra_shapes: Mapping[str, tuple[int, ...]] | None = None):
    self.scores = np.zeros((num_videos, num_classes), np.float64)
    self.seen = np.zeros((num_videos, views), bool)
    self.labels = np.full((num_videos,), -1, np.int64)
    self.extra = {k: np.zeros((num_videos, *shape), np.float64)
                  for k, shape in (extra_shapes or {}).items()}

  def add(self, probs: np.ndarray, video_index: np.ndarray, view_index: np.ndarray,
          valid: np.ndarray, labels: np.ndarray,
          extra: Mapping[str, np.ndarray] | None = None) -> None:
    for row, (p, v, w, ok, y) in enumerate(
        zip(probs, video_index, view_index, valid, labels, strict=True)):
      if v < 0 or v >= len(self.scores):
        continue  # padding beyond the last video
      if not ok:
        continue  # a bad video's views (the pipeline counts it as skipped)
      if self.seen[v, w]:
        continue  # a view delivered twice (padding) counts once
      self.seen[v, w] = True
      self.scores[v] += p
      for k, total in self.extra.items():
        total[v] += extra[k][row]
      self.labels[v] = y

  def means(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-video averages over the counted views: probabilities (they sum to 1, the official
    ``TEST.ADD_SOFTMAX`` sum normalised) and each extra array; NaN rows for videos with no
    counted view."""
    counts = self.seen.sum(1)

    def mean(total: np.ndarray) -> np.ndarray:
      shape = (-1,) + (1,) * (total.ndim - 1)
      denom = np.maximum(counts, 1).reshape(shape)
      return np.where((counts > 0).reshape(shape), total / denom, np.nan)

    return mean(self.scores), {k: mean(v) for k, v in self.extra.items()}

  def summary(self) -> dict[str, Any]:
    counted = self.seen.any(1)
    return summarize(self.scores[counted], self.labels[counted])


def summarize(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
  """Top-1 / top-5 / mean per-class accuracy of per-video ``scores`` [N, K]."""
  n, k = scores.shape
  if n == 0:
    return {"top1": 0.0, "top5": 0.0, "mean_class_accuracy": 0.0, "num_videos": 0}
  order = np.argsort(-scores, axis=1, kind="stable")
  top1 = order[:, 0] == labels
  top5 = (order[:, : min(5, k)] == labels[:, None]).any(1)
  classes = np.unique(labels)
  per_class = [top1[labels == c].mean() for c in classes]
  return {"top1": float(top1.mean()), "top5": float(top5.mean()),
          "mean_class_accuracy": float(np.mean(per_class)), "num_videos": int(n)}


def _gather(x: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def run_evaluation(eval_fn: Callable[[dict[str, np.ndarray]], Any],
                   batches: Iterable[Mapping[str, np.ndarray]], *, num_videos: int,
                   num_classes: int, views: int, progress=None) -> ViewAccumulator:
  """Score every batch with ``eval_fn(local batch) -> probabilities of the global batch`` (the
  processes' local batches concatenated in process order, as ``jax.Array``s placed from
  process-local data are) and accumulate; the host-side arrays of the batch (indices, labels,
  valid) are gathered across processes in the same order."""
  acc = ViewAccumulator(num_videos, num_classes, views)
  for batch in batches:
    probs = np.asarray(eval_fn(batch))
    acc.add(probs, _gather(batch["video_index"]), _gather(batch["view_index"]),
            _gather(batch["valid"]), _gather(batch["label"]))
    if progress is not None:
      progress.update(1)
  return acc


def write_results(workdir: str | Path, acc: ViewAccumulator, summary: dict[str, Any], *,
                  step: int, names: list[str] | None = None,
                  paths: list[str] | None = None, prefix: str = "eval") -> None:
  """``WORKDIR/eval_results.json`` (summary) and ``WORKDIR/eval_predictions.csv`` (per video).

  The CSV gives classes as indices and names in separate columns; the top-5 columns are JSON
  lists (Kinetics names contain spaces and commas, so a joined string would be ambiguous)."""
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  summary = {**summary, "step": int(step)}
  (workdir / f"{prefix}_results.json").write_text(json.dumps(summary, indent=1))
  counted = acc.seen.any(1)

  def name(i: int) -> str:
    return names[i] if names and i < len(names) else str(i)

  with (workdir / f"{prefix}_predictions.csv").open("w") as f:
    w = csv.writer(f)
    w.writerow(["video_index", "path", "label_index", "label", "prediction_index", "prediction",
                "top5_indices", "top5", "score", "views"])
    for v in np.nonzero(counted)[0]:
      order = [int(i) for i in np.argsort(-acc.scores[v], kind="stable")[:5]]
      label = int(acc.labels[v])
      w.writerow([int(v), paths[v] if paths else "", label, name(label), order[0],
                  name(order[0]), json.dumps(order), json.dumps([name(i) for i in order]),
                  f"{acc.scores[v, order[0]] / acc.seen[v].sum():.4f}", int(acc.seen[v].sum())])
