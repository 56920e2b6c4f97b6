"""The HF-vs-deed-jax benchmark runs end to end on a tiny model: full-depth variants give HF's tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="the HF-vs-deed-jax benchmark runs PyTorch (the pytorch extra)")
pytest.importorskip("transformers", reason="the HF-vs-deed-jax benchmark needs the convert extra")


def test_hf_generate_benchmark_writes_its_table_and_json(tmp_path):
  output = tmp_path / "hf_generate.json"
  command = [
    sys.executable,
    "-m",
    "deed_jax.bench.hf_generate",
    "--decoder_layers=2",
    "--d_model=32",
    "--num_heads=4",
    "--d_ff=48",
    "--vocab_size=97",
    "--source_length=8",
    "--max_new_tokens=6",
    "--batch_sizes=1,3",
    "--num_beams=2",
    "--repeats=1",
    f"--output={output}",
  ]
  run = subprocess.run(
    command,
    capture_output=True,
    text=True,
    check=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "1"},
  )
  assert (
    "vs HF greedy" in run.stdout and "Our static greedy vs HF eager greedy at batch 1" in run.stdout
  )
  assert "Weight-streaming floor" in run.stdout
  result = json.loads(output.read_text())
  rows = {(r["batch"], r["variant"]): r for r in result["rows"]}
  for batch in (1, 3):
    assert rows[batch, "hf greedy (torch eager)"]["speedup_vs_hf_greedy"] == 1.0
    # Full depth, ours against HF: the same tokens, exactly.
    for name in ("ours static", "ours deed tau>1", "ours beam 2 static"):
      assert rows[batch, name]["token_agreement"] == 1.0, name
    assert rows[batch, "ours deed tau>1"]["mean_exit_layer"] == 2.0
    for row in (r for (b, _), r in rows.items() if b == batch):
      assert row["ms_per_sample"] > 0 and len(row["repeats_ms"]) == 1
  summary = result["summary"]
  assert summary["speedup_vs_hf_greedy"] == rows[1, "ours static"]["speedup_vs_hf_greedy"]
  # The floor reads at least every decoder layer's matrices (self and cross attention 8 d^2, MLP
  # 2 d d_ff) and the tied head (V d), float32; the rest (biases, norms, the last exit's d x d
  # adapter, the caches) is about a quarter of that at this tiny width.
  d, d_ff, vocab, layers = 32, 48, 97, 2
  matrices = 4 * (layers * (8 * d * d + 2 * d * d_ff) + vocab * d)
  assert matrices <= summary["bytes_per_token"] <= 1.5 * matrices
  assert summary["memory_bandwidth_gb_s"] > 0
  # (static_over_floor is a difference of two timings over the floor: at this size and one repeat it
  # can come out at or below 0 on a busy machine, so only its definition is checked.)
  assert summary["static_over_floor"] == pytest.approx(
    summary["static_decoder_ms_per_token"] / summary["floor_ms_per_token"]
  )
  assert (
    abs(
      summary["floor_ms_per_token"]
      - 1e3 * summary["bytes_per_token"] / (1e9 * summary["memory_bandwidth_gb_s"])
    )
    < 1e-9
  )
