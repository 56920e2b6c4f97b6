"""bench.finished_runs: the equal-wall-clock step count, from two runs' logged train steps."""

from __future__ import annotations

import json

from deed_jax.bench.finished_runs import equal_time_steps


def _run(path, total_steps: int, seconds_per_step: float):
  """A finished run's files as the trainer writes them: its config and train steps logged every 25
  steps (from step 25, as the trainer logs), `seconds_per_step` apart."""
  path.mkdir()
  (path / "train_config.json").write_text(json.dumps({"total_steps": total_steps}))
  records = [
    {
      "step": s,
      "time": 1000.0 + s * seconds_per_step,
      "train/loss": 1.0,
      "train/steps_per_second": 1,
    }
    for s in range(25, total_steps + 1, 25)
  ]
  records.insert(1, {"step": 50, "time": 0.0, "eval/loss": 1.0})  # not a train record: ignored
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def test_equal_time_steps_scale_by_seconds_per_step(tmp_path):
  """The reference trains 2000 steps at 0.2 s each (400 s); at 0.16 s per step, 400 s hold 2500."""
  reference = _run(tmp_path / "all", 2000, 0.2)
  faster = _run(tmp_path / "k1", 2000, 0.16)
  assert equal_time_steps(reference, faster) == 2500
  assert equal_time_steps(reference, reference) == 2000
