"""Training feedback: a console progress bar, TensorBoard scalars, a JSON-lines log and a PNG
plot of the curves at the end (all in the workdir; only process 0 writes). Files go through
``etils.epath``, so a ``gs://`` workdir works where its filesystem is installed (``gcsfs``;
TensorBoard events to ``gs://`` need ``google-cloud-storage``)."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import numpy as np
from absl import logging
from etils import epath


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
    self.log_file = (self.path / "metrics.jsonl").open("a")
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
    self.log_file.write(json.dumps(row) + "\n")
    self.log_file.flush()
    if self.tb is not None:
      for k, v in row.items():
        if k not in ("kind", "step", "time"):
          self.tb.add_scalar(f"{kind}/{k}", v, step)

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
