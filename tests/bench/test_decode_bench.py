"""The decode benchmark runs end to end on a tiny model and writes a complete, consistent JSON."""

from __future__ import annotations

import json
import subprocess
import sys


def test_decode_benchmark_writes_its_table_and_json(tmp_path):
  output = tmp_path / "decode.json"
  command = [sys.executable, "-m", "deed_jax.bench.decode", "--decoder_layers=3", "--d_model=32",
             "--num_heads=2", "--d_ff=64", "--source_length=8", "--max_new_tokens=6",
             "--batch_sizes=1", "--target_depths=1.5,2.5", "--repeats=1", "--backfill_chunk=2",
             f"--output={output}"]
  run = subprocess.run(command, capture_output=True, text=True, check=True)
  assert "sp/bound" in run.stdout and "Goals (batch 1)" in run.stdout
  result = json.loads(output.read_text())
  rows = {row["variant"]: row for row in result["rows"]}
  assert [r["variant"] for r in result["rows"]][:4] == ["static", "fixed k=1", "fixed k=2", "fixed k=3"]
  assert len(result["thresholds"]) == 2
  assert sum(name.startswith("deed") for name in rows) == 2
  assert sum(name.startswith("copy") for name in rows) == 2
  for k in (1, 2, 3):  # A fixed exit runs exactly k layers per step and exits there.
    assert rows[f"fixed k={k}"]["mean_exit_layer"] == k
    assert rows[f"fixed k={k}"]["mean_layers_run_per_step"] == k
  for row in result["rows"]:
    assert row["tokens_per_sample"] > 0 and row["decoder_ms_per_sample"] >= 0
    assert row["bound"] == 3 / row["mean_exit_layer"]
    assert row["speedup"] > 0 and len(row["repeats_ms"]) == 1
  assert rows["static"]["speedup"] == 1.0
  assert {g["variant"] for g in result["goals"]} == {n for n in rows if n.startswith(("fixed", "deed"))}
  costs = result["block_costs"]  # Block widths 1 and backfill_chunk=2, relative to width 1.
  assert [c["positions"] for c in costs] == [1, 2] and costs[0]["relative_to_one"] == 1.0
  assert all(c["ms_per_block"] > 0 for c in costs) and "relative to one position" in run.stdout


def test_decode_benchmark_rejects_a_bad_fixed_layer(tmp_path):
  output = tmp_path / "decode.json"
  run = subprocess.run([sys.executable, "-m", "deed_jax.bench.decode", "--decoder_layers=3",
                        "--fixed_layers=4", f"--output={output}"], capture_output=True, text=True)
  assert run.returncode != 0 and "--fixed_layers has 4, outside 1..3" in run.stderr
  assert not output.exists()
