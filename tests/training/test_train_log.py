"""The trainer's progress bar and training log advance with completed steps, not dispatched ones."""

import json

import jax.numpy as jnp

from deed_jax.config_defaults import training_defaults
from deed_jax.train import _TrainLog
from deed_jax.training.metric_writer import MetricWriter


def _metrics(loss: float) -> dict:
  return {"loss": jnp.float32(loss), "exit_token_accuracy": jnp.asarray([0.5, 0.75])}


def test_the_bar_moves_where_metrics_are_fetched(tmp_path):
  config = training_defaults()
  config.total_steps, config.log_every_steps = 12, 4
  writer = MetricWriter(str(tmp_path), resumed_at=4)
  log = _TrainLog(config, writer, start=4, progress=True)
  assert (log.bar.n, log.bar.total) == (4, 12)  # a resumed run starts at its step
  log(8, _metrics(2.0))
  assert log.bar.n == 8
  log(12, _metrics(1.5))
  assert log.bar.n == 12
  log.close()
  writer.close()
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [8, 12]
  assert [r["train/loss"] for r in records] == [2.0, 1.5]
  assert all(r["train/steps_per_second"] > 0 for r in records)
  # The schedule counts optimizer updates: warmup from 0 at step 1.
  assert 0 < records[0]["train/learning_rate"] <= config.optimizer.learning_rate
