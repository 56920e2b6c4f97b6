"""The decode benchmark runs end to end on a tiny model and writes a complete, consistent JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from deed_jax.bench.decode import layer_units


def test_layer_units_replay_the_deed_schedule():
  """Steps running 1, 1, 3, 3 layers with chunk 2: step 2 backfills positions 0, 1 at layers 2 and 3
  (one block of 2 each, then position 2) and step 3 nothing; a block of m costs cost[m] one-position
  calls."""
  steps = np.array([1, 1, 3, 3])
  assert layer_units(steps, 2, None) == 1 + 1 + (1 + 2 + 2) + 3
  cost = {1: 1.0, 2: 1.5}
  assert layer_units(steps, 2, cost) == 1 + 1 + (1 + 2.5 + 2.5) + 3
  # Steps 0..4 at 1 layer, then 2 layers: layer 2 backfills positions 0..4 (chunks of 2, then 1).
  assert layer_units(np.array([1, 1, 1, 1, 1, 2]), 2, cost) == 5 + 1 + (2 * 1.5 + 1.0 + 1.0)


def test_decode_benchmark_writes_its_table_and_json(tmp_path):
  output = tmp_path / "decode.json"
  command = [
    sys.executable,
    "-m",
    "deed_jax.bench.decode",
    "--decoder_layers=3",
    "--d_model=32",
    "--num_heads=2",
    "--d_ff=64",
    "--source_length=8",
    "--max_new_tokens=6",
    "--vocab_size=259",
    "--batch_sizes=1",
    "--target_depths=1.5,2.5",
    "--repeats=1",
    "--backfill_chunk=2",
    "--min_exit_check=2",
    f"--output={output}",
  ]
  run = subprocess.run(command, capture_output=True, text=True, check=True)
  assert "sp/bound" in run.stdout and "Goals (batch 1)" in run.stdout
  result = json.loads(output.read_text())
  rows = {row["variant"]: row for row in result["rows"]}
  assert [r["variant"] for r in result["rows"]][:4] == [
    "static",
    "fixed k=1",
    "fixed k=2",
    "fixed k=3",
  ]
  confidences = ("max_prob", "state", "classifier")  # the default --confidences
  assert {c: sorted(t) for c, t in result["thresholds"].items()} == {
    c: ["1.5", "2.5"] for c in confidences
  }
  assert result["xla_flags"] == os.environ.get("XLA_FLAGS", "")
  for confidence in confidences:  # two tuned thresholds each, and the min-exit check
    for mode in ("deed", "copy"):
      for depth in ("1.5", "2.5"):
        row = rows[f"{mode} {confidence} e~{depth}"]
        assert row["threshold"] == result["thresholds"][confidence][depth]
    at_two = rows[f"deed {confidence} min=2 tau=0"]
    assert at_two["mean_exit_layer"] == 2 and at_two["mean_layers_run_per_step"] == 2
  for k in (1, 2, 3):  # A fixed exit runs exactly k layers per step and exits there.
    assert rows[f"fixed k={k}"]["mean_exit_layer"] == k
    assert rows[f"fixed k={k}"]["mean_layers_run_per_step"] == k
  h = result["head_cost"]["in_layers"]
  assert h > 0 and result["head_cost"]["ms"] > 0
  for row in result["rows"]:
    assert row["tokens_per_sample"] > 0 and row["decoder_ms_per_sample"] >= 0
    if row["confidence"] == "max_prob" and "min=" not in row["variant"]:
      # The head at every layer up to the exit: one per layer, on average the mean exit.
      assert abs(row["heads_per_token"] - row["mean_exit_layer"]) < 1e-9
    else:  # Head-free, fixed, static, or min=2 with every exit at 2: the head once.
      assert row["heads_per_token"] == 1.0
    assert (
      abs(row["bound"] - (3 + h) / (row["mean_exit_layer"] + h * row["heads_per_token"])) < 1e-9
    )
    assert row["speedup"] > 0 and len(row["repeats_ms"]) == 1 and row["compile_s"] >= 0
  assert rows["static"]["speedup"] == 1.0 and rows["static"]["bound"] == 1.0
  deed_checks = {n for n in rows if n.startswith("deed") and "min=" not in n}
  assert {g["variant"] for g in result["goals"]} == (
    {n for n in rows if n.startswith("fixed")} | deed_checks | {n for n in rows if "min=" in n}
  )
  for row in result["rows"]:  # with measured block costs (all >= 1) the bound can only be lower
    if row["exit_mode"] == "deed":
      assert 0 < row["bound_with_block_costs"] <= row["bound"] + 1e-9
  costs = result["block_costs"]  # Block widths 1 and backfill_chunk=2, relative to width 1.
  assert [c["positions"] for c in costs] == [1, 2] and costs[0]["relative_to_one"] == 1.0
  assert all(c["ms_per_block"] > 0 for c in costs) and "relative to one position" in run.stdout


def test_decode_benchmark_rejects_a_bad_fixed_layer(tmp_path):
  output = tmp_path / "decode.json"
  run = subprocess.run(
    [
      sys.executable,
      "-m",
      "deed_jax.bench.decode",
      "--decoder_layers=3",
      "--fixed_layers=4",
      f"--output={output}",
    ],
    capture_output=True,
    text=True,
  )
  assert run.returncode != 0 and "--fixed_layers has 4, outside 1..3" in run.stderr
  assert not output.exists()
