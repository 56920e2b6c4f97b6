"""Metrics to disk: TensorBoard event files (tensorboardX, no TensorFlow needed) and a JSONL log.

Only process 0 writes. Vector metrics (one value per exit) are logged as `name/exit_<l>` scalars.
A run resumed at step s first drops what an interrupted run logged after s (it will log those steps
again): the JSONL records and, through TensorBoard's purge_step, the events.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from etils import epath


class MetricWriter:
  def __init__(self, workdir: str, resumed_at: int = 0):
    self.enabled = jax.process_index() == 0
    self.jsonl_path = epath.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter

      epath.Path(workdir).mkdir(parents=True, exist_ok=True)
      if resumed_at and self.jsonl_path.exists():
        kept = [
          line
          for line in self.jsonl_path.read_text().splitlines(keepends=True)
          if line.strip() and json.loads(line)["step"] <= resumed_at
        ]
        self.jsonl_path.write_text("".join(kept))
      self._tb = SummaryWriter(
        os.fspath(epath.Path(workdir) / "tensorboard"),
        purge_step=resumed_at + 1 if resumed_at else None,
      )

  def write(self, step: int, metrics: dict, prefix: str = "") -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "time": time.time()}
    for name, value in metrics.items():
      value = np.asarray(value)
      if value.dtype.kind not in "fiub":
        continue
      key = f"{prefix}{name}"
      if value.ndim == 0:
        record[key] = float(value)
        self._tb.add_scalar(key, float(value), step)
      else:
        record[key] = value.astype(float).tolist()
        for index, item in enumerate(value.reshape(-1), start=1):
          if np.isfinite(item):  # NaN: an exit this step did not supervise (kept in the JSON)
            self._tb.add_scalar(f"{key}/exit_{index}", float(item), step)
    with self.jsonl_path.open("a") as f:
      f.write(json.dumps(record) + "\n")

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
