"""Training feedback: a console progress bar, TensorBoard scalars, a JSON-lines log and a PNG
plot of the curves at the end (all in the workdir; only process 0 writes). Files go through
``etils.epath``, so a ``gs://`` workdir works where its filesystem is installed (the ``gcs``
extra: ``gcsfs`` for the log and plot, ``google-cloud-storage`` for TensorBoard events).

``metrics.jsonl`` is one log for the whole run, whatever the resumes. On a local disk rows are
appended and flushed one by one. An object store cannot append (gcsfs turns ``"a"`` into an
overwrite) and uploads only on close, so there the log is kept in memory (with the earlier
segments' rows read back at start, minus any logged after the step the run resumed from) and the
whole object is rewritten by :meth:`MetricsWriter.flush`, which the trainer calls before every
checkpoint: the rows of every committed step are in the bucket, a kill -9 loses only rows after
the last checkpoint, which the resumed run logs again. One object (not one per segment) keeps
every reader unchanged: the plot, ``pandas.read_json(..., lines=True)``, the results page. The
rewrite costs one upload of the log (about 200 bytes a row) per checkpoint.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import numpy as np
from absl import logging
from etils import epath

from uniformerv2_jax import storage


class MetricsWriter:
  def __init__(self, workdir: str, *, total_steps: int, start_step: int = 0,
               enabled: bool = True):
    self.workdir, self.enabled = workdir, enabled
    self.total, self.history = total_steps, {"train": [], "eval": []}
    self.t0, self.step0 = time.time(), start_step
    self.bar = self.tb = None
    if not enabled:
      return
    self.path = epath.Path(workdir)
    self.path.mkdir(parents=True, exist_ok=True)
    log_path = self.path / "metrics.jsonl"
    self.object_store = storage.is_url(workdir)
    earlier = _read_rows(log_path)
    if self.object_store:
      # Rows past the resume step belong to a segment that was cut off before its checkpoint.
      earlier = [r for r in earlier if r.get("step", 0) <= start_step]
      self.log_lines = [json.dumps(r) + "\n" for r in earlier]
      self.log_path, self.log_file = log_path, None
    else:
      self.log_file = log_path.open("a")
    for r in earlier:  # the plot shows the whole run
      if r.get("step", 0) <= start_step and r.get("kind") in self.history:
        self.history[r["kind"]].append(r)
    try:
      from tensorboardX import SummaryWriter

      self.tb = SummaryWriter(str(self.path / "tensorboard"))
    except ImportError:  # pragma: no cover - tensorboardX is a requirement
      logging.warning("tensorboardX not installed: no TensorBoard events")
    from tqdm.auto import tqdm

    self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                    dynamic_ncols=True)

  def _write(self, kind: str, step: int, values: dict[str, Any]) -> None:
    row = {"kind": kind, "step": step, "time": time.time() - self.t0,
           **{k: float(v) for k, v in values.items()
              if isinstance(v, (int, float, np.number, np.ndarray)) and np.ndim(v) == 0}}
    self.history[kind].append(row)
    if self.object_store:
      self.log_lines.append(json.dumps(row) + "\n")
    else:
      self.log_file.write(json.dumps(row) + "\n")
      self.log_file.flush()
    if self.tb is not None:
      for k, v in row.items():
        if k not in ("kind", "step", "time"):
          self.tb.add_scalar(f"{kind}/{k}", v, step)

  def flush(self) -> None:
    """Make every row logged so far durable: rewrite the log object (object stores) and flush
    TensorBoard events (tensorboardX otherwise holds them up to 120 s, or to the end on GCS)."""
    if not self.enabled:
      return
    if self.object_store:
      self.log_path.write_text("".join(self.log_lines))
    if self.tb is not None:
      self.tb.flush()

  def log_train(self, step: int, m: dict[str, Any]) -> None:
    if not self.enabled:
      return
    self._write("train", step, m)
    self.bar.n = step
    self.bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}",
                         clips_s=f"{m['clips_per_s']:.1f}", refresh=False)
    self.bar.refresh()

  def log_eval(self, step: int, summary: dict[str, Any]) -> None:
    if not self.enabled:
      return
    self._write("eval", step, summary)
    self.bar.write(f"step {step}: eval top1 {summary['top1']:.4f} top5 {summary['top5']:.4f} "
                   f"({summary['num_videos']} videos)")

  def close(self) -> None:
    if not self.enabled:
      return
    self.bar.close()
    if self.object_store:
      self.flush()
    else:
      self.log_file.close()
    if self.tb is not None:
      self.tb.close()
    self.plot()

  def plot(self) -> None:
    """``WORKDIR/training_curves.png``: loss and LR by step, eval top-1/top-5."""
    try:
      import matplotlib

      matplotlib.use("Agg")
      import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
      logging.warning("matplotlib not installed: no plot")
      return
    train, ev = self.history["train"], self.history["eval"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    if train:
      steps = [r["step"] for r in train]
      axes[0].plot(steps, [r["loss"] for r in train])
      axes[0].set_title("training loss")
      axes[1].plot(steps, [r["lr"] for r in train])
      axes[1].set_title("learning rate")
    if ev:
      steps = [r["step"] for r in ev]
      axes[2].plot(steps, [r["top1"] for r in ev], marker="o", label="top-1")
      axes[2].plot(steps, [r["top5"] for r in ev], marker="o", label="top-5")
      axes[2].legend()
      axes[2].set_title("validation accuracy")
    for ax in axes:
      ax.set_xlabel("step")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    (self.path / "training_curves.png").write_bytes(buf.getvalue())


def _read_rows(path: epath.Path) -> list[dict[str, Any]]:
  """The rows of an existing log (none if absent); a torn last line (a kill mid-write on a
  local disk) is dropped."""
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return rows
