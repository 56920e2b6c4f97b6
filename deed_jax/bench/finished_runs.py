"""What a finished training run's workdir tells about its training: how long it took, and how many
steps another run would get in that time. (No flags here: tests and scripts import it.)"""

from __future__ import annotations

import json
import os

import numpy as np

from deed_jax.workdir import read_json_file


def training_time(workdir: str) -> dict:
  """Seconds between the first and last logged train step, and the median logged steps/s."""
  records = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if "train/loss" in record:
        records.append(record)
  return {
    "logged_steps": [records[0]["step"], records[-1]["step"]],
    "seconds": records[-1]["time"] - records[0]["time"],
    "median_steps_per_second": float(np.median([r["train/steps_per_second"] for r in records])),
  }


def equal_time_steps(reference: str, workdir: str) -> int:
  """The steps `workdir`'s schedule would train for in the time `reference` (a finished run) took for
  its total_steps, at each run's measured seconds per step."""
  per_step = lambda run: run["seconds"] / (run["logged_steps"][1] - run["logged_steps"][0])
  total = read_json_file(os.path.join(reference, "train_config.json"))["total_steps"]
  reference_seconds = total * per_step(training_time(reference))
  return round(reference_seconds / per_step(training_time(workdir)))
