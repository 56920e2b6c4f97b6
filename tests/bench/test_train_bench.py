"""The training benchmark runs end to end on a tiny model and writes a complete, consistent JSON: it
honours --config.loss.* (sampled exit supervision in the deed row) and counts the model FLOPs of
exactly the heads a step runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_train_benchmark_compares_losses_and_device_counts(tmp_path):
  output = tmp_path / "train.json"
  command = [
    sys.executable,
    "-m",
    "deed_jax.bench.train",
    "--config",
    "configs/forms_text.py:runlocal",
    "--config.model.d_model=32",
    "--config.model.d_ff=32",
    "--config.model.adapter_dim=8",
    "--config.loss.exits_per_step=1",
    "--devices=1,2",
    "--batch_size=4",
    "--steps=1",
    f"--output={output}",
  ]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS" or "device_count" not in v}
  run = subprocess.run(
    command,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    env={**env, "JAX_PLATFORMS": "cpu"},
  )
  assert run.returncode == 0, run.stderr[-3000:]
  assert "vs final" in run.stdout and "compiled MiB/dev" in run.stdout
  result = json.loads(output.read_text())
  rows = {(r["devices"], r["loss_mode"]): r for r in result["rows"]}
  assert set(rows) == {(1, "deed"), (1, "final"), (2, "deed"), (2, "final")}
  assert [rows[d, "deed"]["exits_per_step"] for d in (1, 2)] == [1, 1]
  assert result["loss"]["exits_per_step"] == 1
  # The sampled step runs the head on one more exit than the final-only step: 3 x 2 B T D V more.
  model = result["model"]
  head = 2 * 4 * model["max_target_length"] * model["d_model"] * model["vocab_size"]
  for devices in (1, 2):
    extra = (
      rows[devices, "deed"]["model_flops_per_step"] - rows[devices, "final"]["model_flops_per_step"]
    )
    assert extra == 3 * head, (extra, 3 * head)
    assert rows[devices, "final"]["model_flops_per_step"] > 3 * head  # the layers count too
  for (devices, mode), row in rows.items():
    assert row["model_flops_per_second"] == row["model_flops_per_step"] / (row["step_ms"] / 1e3)
    assert row["mfu"] is None  # no peak is claimed for a CPU
    assert row["step_ms"] > 0 and row["batch_size"] == 4
    assert row["vs_final_only"] == row["step_ms"] / rows[devices, "final"]["step_ms"]
    assert row["vs_one_device"] == row["step_ms"] / rows[1, mode]["step_ms"]
    assert row["compiled_bytes_per_device"] > 0
  # Two devices split the batch: each holds about half of the activations.
  assert rows[2, "deed"]["temp_bytes_per_device"] < rows[1, "deed"]["temp_bytes_per_device"]
  assert result["model"]["d_model"] == 32 and result["device_kind"]
