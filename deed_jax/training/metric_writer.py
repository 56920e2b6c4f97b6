"""Metrics to disk: TensorBoard event files (tensorboardX, no TensorFlow needed) and a JSONL log.

Only process 0 writes. Vector metrics (one value per exit) are logged as `name/exit_<l>` scalars.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np


class MetricWriter:

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter
      os.makedirs(workdir, exist_ok=True)
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

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
          self._tb.add_scalar(f"{key}/exit_{index}", float(item), step)
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
