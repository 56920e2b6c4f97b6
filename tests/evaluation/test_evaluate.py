"""python -m deed_jax.evaluate on real workdirs: a trained one (orbax checkpoint, stored config) and
a model-only one like a converted checkpoint; its rows against the naive reference decoder, the
report files, calibration's stored threshold, and bad input refused before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from deed_jax import checkpoint
from deed_jax.data import datasets, pipeline
from deed_jax.data.tokenizer import get_tokenizer
from deed_jax.decode_input import decode_input
from deed_jax.decoding import DecodeConfig
from deed_jax.decoding.reference import greedy_at_exit
from deed_jax.errors import MissingPathError, UserError
from deed_jax.evaluation import policy_search
from deed_jax.evaluation.evaluator import EvaluateOptions, check_workdir, evaluate
from deed_jax.models import MultiExitEncoderDecoder, encoder_inputs
from deed_jax.workdir import DECODE_CONFIG_FILE, TRAIN_CONFIG_FILE, workdir_decode_config
from tests.checkpoint_damage import damage_step
from tests.training.configs import tiny_text_config, train_tiny

THRESHOLDS = (0.0, 0.5, 1.0)
REQUIRED = {
  "exit_mode",
  "threshold",
  "fixed_exit_layer",
  "metric",
  "metric_name",
  "mean_exit_layer",
  "decoder_ms_per_sample",
  "total_ms_per_sample",
  "batch_size",
  "min_exit_layer",
  "backfill_chunk",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tfds_dir):
  """A workdir trained for a few steps on the tiny text task (2 exits)."""
  return train_tiny(tmp_path_factory, tfds_dir, "evaluate", 20)


def _naive_exact_match(workdir, config, split, count, exit_layer):
  """Exact match (0..100) of greedy decoding at a fixed exit, by the naive reference decoder."""
  model = checkpoint.load_model(workdir)
  mc = model.config
  features = pipeline.TaskFeatures(
    encoder=mc.encoder,
    source_key=config.task.source_key,
    target_key=config.task.target_key,
    max_source_length=config.task.max_source_length,
    max_target_length=mc.max_target_length,
  )
  tokenizer = get_tokenizer(config.task.tokenizer)
  source = pipeline.data_source(
    config.task.dataset, config.task.dataset_config, split, config.task.data_dir
  )
  examples, answers, _ = pipeline.read_examples(
    source, pipeline.Preprocess(features, tokenizer), count
  )
  tokens = np.asarray(
    greedy_at_exit(
      model, encoder_inputs(pipeline.stack_examples(examples)), exit_layer, mc.max_target_length
    )
  )
  return 100 * np.mean([tokenizer.decode(t) == a[0] for t, a in zip(tokens, answers)])


def _on_validation(workdir: str, **options) -> dict:
  """A small evaluation: 3 validation examples, batch 1, the threshold 0.5 (+ the stored one)."""
  options = EvaluateOptions(
    split="validation", num_examples=3, thresholds=(0.5,), batch_size=1, **options
  )
  return evaluate(workdir, options=options, progress=False)


def test_report_rows_files_and_calibration(trained, tfds_dir):
  config = tiny_text_config(tfds_dir)
  report = evaluate(
    trained,
    options=EvaluateOptions(
      split="test",
      num_examples=6,
      thresholds=THRESHOLDS,
      batch_size=4,
      backfill_chunk=2,
      calibrate=True,
      max_drop=100.0,
      delta=0.5,
    ),
    progress=False,
  )
  out = os.path.join(trained, "evaluation")
  with open(os.path.join(out, "report.json")) as f:
    stored = json.load(f)
  assert stored["settings"] == report["settings"]
  rows = stored["settings"]
  # static, fixed exit 1, copy and deed at 3 thresholds; at batch 1 and 4.
  assert len(rows) == 2 * (1 + 1 + 3 + 3)
  for row in rows:
    assert REQUIRED <= set(row) and 0 <= row["metric"] <= 100 and row["batch_size"] in (1, 4)
    assert row["metric_name"] == "exact_match" and row["decoder_ms_per_sample"] > 0
  for size in (1, 4):
    at = {r["setting"]: r for r in rows if r["batch_size"] == size}
    # Independent references: greedy decoding at a fixed exit by the naive decoder.
    assert at["static"]["metric"] == pytest.approx(
      _naive_exact_match(trained, config, "test", 6, 2)
    )
    assert at["fixed exit 1"]["metric"] == pytest.approx(
      _naive_exact_match(trained, config, "test", 6, 1)
    )
    assert (
      at["deed tau=0"]["metric"] == at["fixed exit 1"]["metric"]
    )  # tau 0: every token at exit 1
    assert at["deed tau=0"]["mean_exit_layer"] == 1.0 and at["static"]["mean_exit_layer"] == 2.0
    assert at["deed tau=0"]["threshold"] == 0.0 and at["fixed exit 1"]["fixed_exit_layer"] == 1
  for name in ("pareto.png", "metric_per_layer.png", "exit_histogram.png", "token_exits.png"):
    with Image.open(os.path.join(out, name)) as image:
      assert image.format == "PNG" and image.width >= 400 and image.height >= 200
  markdown = open(os.path.join(out, "report.md")).read()
  assert "## Batch 1" in markdown and "## Batch 4" in markdown and "deed tau=0.5" in markdown
  # max_drop 100 points: every threshold passes (no loss can exceed it), so the lowest is chosen,
  # stored, and what decoding of this workdir uses from then on.
  assert report["calibration"]["threshold"] == 0.0 == report["calibrated_threshold"]
  assert report["calibration"]["num_examples"] == 64  # the tiny calibration split, whole
  assert "Calibration" in markdown and "probability >= 0.5" in markdown
  stored_config = workdir_decode_config(trained)
  assert (stored_config.threshold, stored_config.backfill_chunk, stored_config.exit_mode) == (
    0.0,
    2,
    "deed",
  )
  assert workdir_decode_config(trained, threshold=0.7).threshold == 0.7
  # Without --calibrate the stored threshold is evaluated and marked.
  again = _on_validation(trained)
  assert again["calibrated_threshold"] == 0.0 and again["split"] == "validation"
  assert {r["setting"] for r in again["settings"]} == {
    "static",
    "fixed exit 1",
    "copy tau=0",
    "copy tau=0.5",
    "deed tau=0",
    "deed tau=0.5",
  }
  # Calibrating again replaces the stored choice.
  _on_validation(trained, calibrate=True, max_drop=100.0, delta=0.5)
  assert workdir_decode_config(trained).threshold == 0.5
  assert workdir_decode_config(trained).backfill_chunk == DecodeConfig.backfill_chunk
  # A calibration that certifies nothing (no drop at all allowed) leaves full depth as the default.
  failed = _on_validation(trained, calibrate=True, max_drop=0.0, delta=0.5)
  assert (
    failed["calibration"]["threshold"] is None
    and "decode at full depth" in (failed["calibration"]["guarantee"])
  )
  assert workdir_decode_config(trained).exit_mode == "static"


def test_a_model_only_workdir_needs_the_task(tmp_path, tfds_dir):
  """A converted checkpoint has a model but no training config: --config names the task."""
  config = tiny_text_config(tfds_dir)
  from deed_jax.config_defaults import validate

  model = MultiExitEncoderDecoder(validate(config), rngs=nnx.Rngs(0))
  workdir = str(tmp_path / "converted")
  checkpoint.save_params(workdir, model.config, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  with pytest.raises(UserError, match=TRAIN_CONFIG_FILE):
    evaluate(workdir, progress=False)
  assert not os.path.exists(os.path.join(workdir, "evaluation"))
  report = evaluate(
    workdir,
    config,
    EvaluateOptions(split="validation", num_examples=2, thresholds=(0.9,), batch_size=1),
    progress=False,
  )
  assert len(report["settings"]) == 4 and os.path.isfile(
    os.path.join(workdir, "evaluation", "pareto.png")
  )


@pytest.mark.parametrize(
  "kwargs, config_change, error, named",
  [
    (dict(thresholds=(0.5, 1.5)), {}, UserError, "1.5"),
    (dict(thresholds=(-0.1,)), {}, UserError, "-0.1"),
    (dict(thresholds=()), {}, UserError, "--thresholds"),
    (dict(max_drop=-1.0, calibrate=True), {}, UserError, "max_drop=-1.0"),
    (dict(delta=1.5, calibrate=True), {}, UserError, "delta"),
    (dict(batch_size=0), {}, UserError, "batch_size=0"),
    (dict(step=7), {}, UserError, "--step 7"),
    (dict(confidences=("classifier",)), {}, UserError, "classifier"),
    (dict(min_exit_layers=(3,)), {}, UserError, "min_exit_layer"),
    (dict(backfill_chunk=0), {}, UserError, "backfill_chunk=0"),
    (dict(speculative=((2, 4),)), {}, UserError, "--speculative=2:4"),  # 2 layers: drafts at 1
    (dict(speculative=((1, 0),)), {}, UserError, "--speculative=1:0"),
    (dict(split="nope"), {}, UserError, "'nope'"),
    (dict(split="test_unlabelled"), {}, UserError, "--split=test_unlabelled"),
    (
      dict(calibrate=True, calibration_split="test_unlabelled"),
      {},
      UserError,
      "--calibration_split=test_unlabelled",
    ),
    (dict(confidences=("max_prob", "state")), {}, UserError, "--confidence=max_prob,state"),
    (dict(), {"metric": "rouge"}, UserError, "'rouge'"),
    (dict(), {"dataset": "forms_audio"}, UserError, "'forms_audio'"),
    (
      dict(),
      {"dataset": "docvqa", "dataset_config": "32x48_pad", "manual_dir": "/nonexistent/docvqa"},
      MissingPathError,
      "/nonexistent/docvqa",
    ),
  ],
)
def test_bad_input_is_refused_and_nothing_is_written(
  trained, tfds_dir, kwargs, config_change, error, named
):
  config = tiny_text_config(tfds_dir)
  config.task.update(config_change)
  report = os.path.join(trained, "evaluation", "report.json")
  before = open(report).read() if os.path.exists(report) else None
  decode_before = os.path.exists(os.path.join(trained, DECODE_CONFIG_FILE))
  with pytest.raises(error, match=named.replace("(", r"\(")):
    evaluate(trained, config, EvaluateOptions(**{"num_examples": 2, **kwargs}), progress=False)
  assert (open(report).read() if os.path.exists(report) else None) == before
  assert os.path.exists(os.path.join(trained, DECODE_CONFIG_FILE)) == decode_before


def test_a_workdir_without_a_checkpoint(tmp_path):
  for workdir in (tmp_path / "absent", tmp_path / "empty"):
    if workdir.name == "empty":
      workdir.mkdir()
    with pytest.raises(MissingPathError, match=str(workdir)):
      evaluate(str(workdir), progress=False)
  assert os.listdir(tmp_path) == ["empty"] and not os.listdir(tmp_path / "empty")


def test_an_empty_manual_dir_is_named(tmp_path):
  (tmp_path / "DocVQA").mkdir()
  with pytest.raises(MissingPathError, match="DocVQA"):
    datasets.check("docvqa", "32x48_pad", str(tmp_path / "DocVQA"))


def test_training_no_longer_decodes_and_older_runs_still_resume(tfds_dir):
  """The decoding comparison after training is `deed_jax.evaluate`'s job: a config asking for it is
  refused with a pointer there, and a run whose stored config still holds it resumes unchanged."""
  from deed_jax.config_defaults import run_changes, validate

  config = tiny_text_config(tfds_dir)
  stored = json.loads(json.dumps(config.to_dict()))
  assert run_changes({**stored, "decode": {"thresholds": [0.5], "num_examples": 100}}, config) == []
  with config.unlocked():
    config.decode = ml_collections.ConfigDict(dict(thresholds=(0.5,)))
  with pytest.raises(UserError, match=r"config\.decode .*python -m deed_jax\.evaluate"):
    validate(config)


def test_calibration_noise_bench(trained, tfds_dir, tmp_path):
  """python -m deed_jax.bench.calibration_noise on the trained workdir: the pooled static and tau-0
  (every token at exit 1) exact match against the naive decoder; max_drop 100 certifies every
  threshold (the lowest is chosen), max_drop 0 none (nothing is chosen, nothing drops)."""
  config = tiny_text_config(tfds_dir)
  output = tmp_path / "noise.json"
  command = [
    sys.executable,
    "-m",
    "deed_jax.bench.calibration_noise",
    f"--workdir={trained}",
    "--splits=calibration,test",
    "--thresholds=0,0.5",
    "--calibration_sizes=40,60",
    "--test_size=30",
    "--settings=100/0.5,0/0.5",
    "--trials=20",
    f"--json={output}",
  ]
  run = subprocess.run(command, capture_output=True, text=True, check=True)
  assert "test drop > 0.5" in run.stdout
  result = json.loads(output.read_text())
  assert result["pool"] == 128  # the tiny calibration and test splits, 64 each
  naive = lambda exit_layer: np.mean(
    [
      _naive_exact_match(trained, config, split, 64, exit_layer)
      for split in ("calibration", "test")
    ]
  )
  assert result["static"] == pytest.approx(naive(2))
  at_zero = next(row for row in result["pooled"] if row["threshold"] == 0.0)
  assert at_zero["drop"] == pytest.approx(naive(2) - naive(1))
  setups = {(s["calibration_size"], s["max_drop"]): s for s in result["setups"]}
  assert set(setups) == {(40, 100.0), (40, 0.0), (60, 100.0), (60, 0.0)}
  for size in (40, 60):
    assert setups[size, 100.0]["chosen"] == {"0": 20}
    assert setups[size, 0.0]["chosen"] == {"none": 20}
    assert setups[size, 0.0]["over_target"] == 0.0 == setups[size, 0.0]["mean_test_drop"]
  # Bad input is refused before anything is decoded or written.
  bad = subprocess.run(
    command[:-3] + ["--settings=0.5", "--trials=2", f"--json={tmp_path / 'bad.json'}"],
    capture_output=True,
    text=True,
  )
  assert (
    bad.returncode == 2 and "max_drop/delta" in bad.stderr and not (tmp_path / "bad.json").exists()
  )
  too_big = subprocess.run(
    command[:4] + ["--calibration_sizes=100", "--test_size=30"], capture_output=True, text=True
  )
  assert too_big.returncode == 2 and "in the 128 examples" in too_big.stderr


@pytest.mark.parametrize("name", ["model_config.json", "decode_config.json"])
def test_a_truncated_workdir_file_is_one_error_line(trained, tmp_path, name):
  """python -m deed_jax.evaluate on a workdir whose JSON file was cut short: one `error:` line naming
  the file, status 2, no report written."""
  workdir = tmp_path / "copy"
  shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns("evaluation"))
  text = (workdir / name).read_text() if (workdir / name).exists() else '{"exit_mode": "deed"}'
  (workdir / name).write_text(text[: len(text) // 2])
  command = [sys.executable, "-m", "deed_jax.evaluate", f"--workdir={workdir}", "--split=validation",
             "--num_examples=2", "--thresholds=0.5", "--batch_size=1"]  # fmt: skip
  run = subprocess.run(command, capture_output=True, text=True)
  assert run.returncode == 2, run.stderr[-2000:]
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], lines
  assert "not valid JSON" in lines[0]
  assert not (workdir / "evaluation").exists()


def test_a_stray_file_among_the_checkpoints_is_not_a_step(trained, tmp_path):
  workdir = tmp_path / "copy"
  shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns("evaluation"))
  newest = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  (workdir / "checkpoints" / str(newest + 5)).write_text("not a checkpoint")
  _, step = check_workdir(str(workdir), None)
  assert step == newest
  assert checkpoint.load_model(str(workdir)).config.decoder_layers == 2


def test_a_damaged_newest_step_is_skipped_and_a_named_one_refused(trained, tmp_path):
  """python -m deed_jax.evaluate when the newest step lost its orbax manifest: the step before is
  evaluated, after one line naming the damaged one (left as it is); `--step` naming it is one
  `error:` line. (Every kind of damage: tests/training/test_damaged_checkpoints.py.)"""
  workdir = tmp_path / "copy"
  shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns("evaluation"))
  steps = workdir / "checkpoints"
  good = max(int(p.name) for p in steps.iterdir() if p.name.isdigit())
  shutil.copytree(steps / str(good), steps / str(good + 1))  # a newer step, then damaged
  damage_step(steps / str(good + 1), "manifest_garbage")
  before = sorted(p.name for p in steps.iterdir())
  command = [sys.executable, "-m", "deed_jax.evaluate", f"--workdir={workdir}", "--split=validation",
             "--num_examples=2", "--thresholds=0.5", "--batch_size=1"]  # fmt: skip
  named = subprocess.run(command + [f"--step={good + 1}"], capture_output=True, text=True)
  lines = named.stderr.strip().splitlines()
  assert named.returncode == 2 and len(lines) == 1, named.stderr[-2000:]
  assert (
    lines[0].startswith(f"error: Checkpoint step {good + 1} (") and "cannot be read" in lines[0]
  )
  assert not (workdir / "evaluation").exists()

  run = subprocess.run(command, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-2000:]
  assert f"Checkpoint step {good + 1} (" in run.stderr and "Skipped" in run.stderr
  assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) <= 5, run.stderr
  with open(workdir / "evaluation" / "report.json") as f:
    assert json.load(f)["step"] == good
  assert sorted(p.name for p in steps.iterdir()) == before  # nothing moved


def _copy_of(trained: str, tmp_path) -> str:
  """The trained workdir, copied without its evaluation and calibration (tests that change it)."""
  workdir = str(tmp_path / "workdir")
  shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns("evaluation", DECODE_CONFIG_FILE))
  return workdir


def test_calibration_chooses_the_exit_policy_and_records_its_provenance(trained, tmp_path):
  """Two confidences: no order is known beforehand, so part of the calibration split orders the
  policies and the rest tests them; the cheapest certified is stored with what it was made for."""
  workdir = _copy_of(trained, tmp_path)
  options = EvaluateOptions(
    split="test",
    num_examples=4,
    thresholds=THRESHOLDS,
    batch_size=1,
    confidences=("max_prob", "state"),
    calibrate=True,
    max_drop=100.0,  # every policy is certified (no loss exceeds it)
    delta=0.5,
  )
  report = evaluate(workdir, options=options, progress=False)
  cal = report["calibration"]
  ordering = {(r["confidence"], r["min_exit_layer"], r["threshold"]): r for r in cal["ordering"]}
  assert set(ordering) == {(c, 1, t) for c in ("max_prob", "state") for t in THRESHOLDS}
  # The ordering part and the tested part share no example and together are the whole split.
  assert cal["ordering_examples"] + cal["num_examples"] == 64
  assert cal["ordering_examples"] >= 0.2 * 64 and cal["num_examples"] > 0
  # Kept in the sequence (recomputed): the policies no cheaper one changes strictly fewer answers
  # than, except the costliest of those that changed none beyond FALLBACKS of them.
  ms = lambda key: ordering[key]["decoder_ms_per_sample"]
  frontier = [
    key
    for key, row in ordering.items()
    if not any(ms(o) <= ms(key) and ordering[o]["changed"] < row["changed"] for o in ordering)
  ]
  unchanged = sorted((k for k in frontier if ordering[k]["changed"] == 0), key=ms)
  dropped = set(unchanged[policy_search.FALLBACKS + 1 :])
  for key, row in ordering.items():
    assert row["in_sequence"] == (key in frontier and key not in dropped)
    assert 0 <= row["risk"] <= row["changed"] <= 1  # only a changed answer can lose
  sequence = sorted((k for k in ordering if ordering[k]["in_sequence"]), key=lambda k: -ms(k))
  tested = [(t["confidence"], t["min_exit_layer"], t["threshold"]) for t in cal["tested"]]
  assert tested == sequence and all(t["rejected"] for t in cal["tested"])
  cheapest = min(sequence, key=ms)
  assert tuple(cal["policy"].values()) == cheapest
  assert (
    report["confidence"],
    report["min_exit_layer"],
    report["calibrated_threshold"],
  ) == cheapest
  with open(os.path.join(workdir, DECODE_CONFIG_FILE)) as f:
    stored = json.load(f)
  assert (stored["confidence"], stored["min_exit_layer"], stored["threshold"]) == cheapest
  assert workdir_decode_config(workdir).confidence == cheapest[0]
  made = stored["calibrated_for"]
  model = checkpoint.load_model(workdir)
  assert made["step"] == report["step"] == 20
  assert made["params_fingerprint"] == checkpoint.params_fingerprint(model)
  assert (made["dataset"], made["split"], made["num_examples"]) == (
    report["dataset"],
    "calibration",
    64,
  )
  assert (made["metric"], made["max_drop"], made["delta"]) == ("exact_match", 100.0, 0.5)
  assert made["date"][:4].isdigit() and "T" in made["date"]
  # The calibrated point beside every fixed exit (static included) that reaches its metric.
  against = report["against_fixed_exits"]
  at_one = {r["setting"]: r for r in report["settings"] if r["batch_size"] == 1}
  deed = at_one[f"deed tau={cheapest[2]:g}"]
  reaching = [
    name
    for name, r in at_one.items()
    if r["exit_mode"] in ("fixed", "static") and r["metric"] >= deed["metric"]
  ]
  assert [r["setting"] for r in against["fixed_reaching_it"]] == reaching and "static" in reaching
  fastest = min(reaching, key=lambda name: at_one[name]["decoder_ms_per_sample"])
  assert against["fastest_fixed"] == fastest
  assert against["deed_speedup_over_it"] == pytest.approx(
    at_one[fastest]["decoder_ms_per_sample"] / deed["decoder_ms_per_sample"]
  )
  markdown = open(os.path.join(workdir, "evaluation", "report.md")).read()
  assert "Calibrated DEED against fixed exits" in markdown and "were ordered on" in markdown


def test_a_retrained_checkpoint_does_not_reuse_the_calibration(trained, tmp_path, capsys):
  workdir = _copy_of(trained, tmp_path)
  calibrated = _on_validation(workdir, calibrate=True, max_drop=100.0, delta=0.5)
  assert calibrated["calibrated_threshold"] == 0.5
  # Retraining: a newer step with other parameters.
  step, model = checkpoint.load_step(workdir)
  params = jax.tree.map(lambda x: 1.01 * x, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  checkpoint.save_params(workdir, model.config, params, step=step + 1)
  capsys.readouterr()
  again = _on_validation(workdir)
  assert again["step"] == step + 1 and again["calibrated_threshold"] is None
  assert "calibration" not in again and "against_fixed_exits" not in again
  err = capsys.readouterr().err
  assert "Calibrated policy not reused" in err and f"calibrated for step {step} " in err
  # Decoding with the stored choice warns, once per workdir and step.
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(2):
      decode_input(workdir, text="a b c", repeats=1)
  stale = [w for w in caught if f"calibrated for step {step} " in str(w.message)]
  assert len(stale) == 1 and f"not for step {step + 1}" in str(stale[0].message)
  # The step it was calibrated for still reuses it, without a word.
  assert _on_validation(workdir, step=step)["calibrated_threshold"] == 0.5
  assert "not reused" not in capsys.readouterr().err


def test_exit_sampling_bench_tabulates_finished_runs(trained, tmp_path):
  """python -m deed_jax.bench.exit_sampling on a trained and calibrated workdir: its per-exit exact
  match and the report's calibrated DEED point against static, as the files hold them."""
  workdir = _copy_of(trained, tmp_path)
  report = _on_validation(workdir, calibrate=True, max_drop=100.0, delta=0.5)
  output = tmp_path / "sampling.json"
  command = [sys.executable, "-m", "deed_jax.bench.exit_sampling", f"--runs=all={workdir}"]
  run = subprocess.run(
    [*command, f"--output={output}"], capture_output=True, text=True, timeout=300
  )
  assert run.returncode == 0, run.stderr[-3000:]
  assert "Validation exact match" in run.stdout and "Calibrated DEED" in run.stdout
  (row,) = json.loads(output.read_text())["runs"]
  with open(os.path.join(workdir, "eval_results.json")) as f:
    assert row["exit_exact_match"] == json.load(f)["exit_exact_match"]
  assert (row["run"], row["exits_per_step"], row["loss_mode"]) == ("all", 0, "deed")
  assert row["training"]["seconds"] > 0 and row["training"]["logged_steps"][-1] == row["step"]
  static = next(s for s in report["settings"] if s["setting"] == "static")
  deed = report["against_fixed_exits"]["deed"]
  assert row["deed"]["static_ms"] == static["decoder_ms_per_sample"]
  assert (
    row["deed"]["deed_speedup"] == static["decoder_ms_per_sample"] / deed["decoder_ms_per_sample"]
  )
  assert row["deed"]["policy"] == report["calibration"]["policy"]
  bad = subprocess.run([*command[:-1], "--runs=x=/no/such/workdir"], capture_output=True, text=True)
  assert bad.returncode != 0 and "/no/such/workdir" in bad.stderr
