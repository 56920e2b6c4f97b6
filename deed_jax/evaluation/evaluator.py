"""The evaluator behind `python -m deed_jax.evaluate` (see that module for the command line): decode a
split under static, fixed-exit, copy and DEED settings at batch 1 and a larger batch, optionally
calibrate DEED's exit policy first (`policy_search`), and write the report (JSON, Markdown, PNG plots)
into the workdir.

Everything a user can get wrong is checked before anything is decoded or written; the report
directory is replaced only once the new one is complete, and a calibrated policy is stored only
after it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
from collections.abc import Sequence

import ml_collections

from deed_jax import checkpoint
from deed_jax.decoding.config import DecodeConfig, check_threshold
from deed_jax.errors import MissingPathError, UserError
from deed_jax.evaluation import calibration, plots
from deed_jax.evaluation.policy_search import (
  ExitPolicy,
  PolicyCalibration,
  calibrate_policy,
  policy_grid,
)
from deed_jax.evaluation.report import settings_table
from deed_jax.evaluation.splits import Split, progress_bar
from deed_jax.evaluation.sweep import (
  SettingRun,
  decode_settings,
  exit_histogram,
  setting_grid,
  summarise,
)
from deed_jax.machine import machine_facts
from deed_jax.models import ModelConfig
from deed_jax.staging import staged_directory
from deed_jax.task_config import validate_task
from deed_jax.workdir import (
  CHECKPOINT_DIR,
  DECODE_CONFIG_FILE,
  EVALUATION_DIR,
  TRAIN_CONFIG_FILE,
  read_json,
  read_model_config,
  stale_calibration,
  write_json,
)

# Thresholds of the default grid: dense near 1, where max-prob confidences of a trained model sit.
DEFAULT_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999)
DEFAULT_CONFIDENCE = "max_prob"
NUM_TOKEN_EXAMPLES = 8  # answers drawn in the per-token exit plot
# Calibration is not timed, so it decodes in large batches whatever --batch_size is: every row takes
# its own first confident exit and DEED's features are the full model's, so a row's tokens do not
# depend on the batch (up to float rounding); on 2 CPU cores 64 rows a call decode ~3x faster than 1.
CALIBRATION_BATCH_SIZE = 64
UNLABELLED_SPLIT = "test_unlabelled"  # the VQA builders' test questions, without answers


def task_config(
  workdir: str, config: ml_collections.ConfigDict | None
) -> ml_collections.ConfigDict:
  """The training config whose task is evaluated: `config` when given, else the one the workdir was
  trained with."""
  if config is not None:
    return config
  stored = read_json(workdir, TRAIN_CONFIG_FILE)
  if stored is None:
    raise UserError(
      f"{workdir} holds no {TRAIN_CONFIG_FILE} (a converted checkpoint, or trained "
      "before configs were stored): name the task with --config configs/<task>.py."
    )
  return ml_collections.ConfigDict(stored)


def check_workdir(workdir: str, step: int | None) -> tuple[ModelConfig, int]:
  """The workdir's model config and the checkpoint step to evaluate (`step`, default the newest);
  refuses a directory without a model or checkpoint, or a step it does not hold (writes nothing)."""
  if not os.path.isdir(workdir):
    raise MissingPathError(f"--workdir {workdir} is not a directory.")
  model_config = read_model_config(workdir)
  root = os.path.join(workdir, CHECKPOINT_DIR)
  # A step is a directory; a stray file named like one is not a checkpoint.
  steps = sorted(
    int(name)
    for name in _listdir(root)
    if name.isdigit() and os.path.isdir(os.path.join(root, name))
  )
  if model_config is None or not steps:
    raise MissingPathError(
      f"--workdir {workdir} holds no checkpoint (no model_config.json or "
      f"{CHECKPOINT_DIR}/<step>/): train or convert a model into it first."
    )
  if step is not None and step not in steps:
    raise UserError(f"--step {step} is not among the checkpoints of {workdir}: {steps}.")
  return model_config, steps[-1] if step is None else step


def _listdir(path: str) -> list[str]:
  return os.listdir(path) if os.path.isdir(path) else []


def parse_thresholds(values: Sequence[str]) -> list[float]:
  """--thresholds as numbers (their range is `check_options`')."""
  try:
    return [float(v) for v in values]
  except ValueError:
    raise UserError(f"--thresholds={','.join(values)} must be numbers in [0, 1].") from None


def parse_layers(values: Sequence[str]) -> tuple[int, ...]:
  """--min_exit_layer as layer numbers (their range is checked against the model later)."""
  if not all(v.strip().isdigit() for v in values):
    raise UserError(
      f"--min_exit_layer={','.join(values)} must be decoder layer numbers (e.g. 2,3,4)."
    )
  return tuple(int(v) for v in values)


def parse_speculative(values: Sequence[str]) -> tuple[tuple[int, int], ...]:
  """--speculative as (draft_exit_layer, max_draft) pairs, from "d:k" strings (their range is
  checked against the model in `_check_inputs`)."""
  pairs = []
  for value in values:
    parts = value.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
      raise UserError(
        f"--speculative={','.join(values)}: {value!r} is not draft_exit_layer:max_draft (e.g. 4:4)."
      )
    pairs.append((int(parts[0]), int(parts[1])))
  return tuple(pairs)


def check_options(
  thresholds: Sequence[float],
  batch_size: int,
  num_examples: int,
  max_drop: float,
  delta: float,
  calibrate: bool,
) -> list[float]:
  """The threshold grid, sorted; refuses values that cannot work."""
  if not thresholds:
    raise UserError("--thresholds is empty; give at least one threshold in [0, 1].")
  for t in thresholds:
    if not 0.0 <= check_threshold(t) <= 1.0:
      raise UserError(f"--thresholds holds {t}; thresholds must be in [0, 1].")
  if batch_size < 1:
    raise UserError(f"--batch_size={batch_size} must be >= 1.")
  if num_examples < 0:
    raise UserError(f"--num_examples={num_examples} must be >= 0 (0: the whole split).")
  if max_drop < 0:
    raise UserError(f"--max_drop={max_drop} must be >= 0 metric points.")
  if calibrate:
    calibration.check_settings(max_drop, delta)
  return sorted(set(float(t) for t in thresholds))


def _token_examples(run: SettingRun, split: Split, count: int) -> list:
  decode = split.tokenizer.decode
  out = []
  for tokens, layers, answers in list(zip(run.tokens, run.exit_layers, split.answers))[:count]:
    emitted = [(decode([int(t)]) or "EOS", int(l)) for t, l in zip(tokens, layers) if l > 0]
    out.append(([s for s, _ in emitted], [l for _, l in emitted], answers[0]))
  return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluateOptions:
  """What `evaluate` decodes and how (the command line's flags, `python -m deed_jax.evaluate`).
  `confidences` and `min_exit_layers`: with `calibrate`, the exit policies it chooses among (default
  max_prob, from every layer 1..L-1); without, one each (default: the stored calibrated policy's,
  else max_prob from layer 1)."""

  split: str = "test"
  calibration_split: str = "calibration"
  num_examples: int = 500  # of `split`; 0: all
  num_calibration_examples: int = 0  # of `calibration_split`; 0: all
  thresholds: Sequence[float] = DEFAULT_THRESHOLDS
  batch_size: int = 8  # the second batch size evaluated, besides 1
  confidences: Sequence[str] = ()
  min_exit_layers: Sequence[int] = ()
  backfill_chunk: int = DecodeConfig.backfill_chunk
  calibrate: bool = False
  max_drop: float = 0.5  # calibration: the largest drop allowed, metric points
  delta: float = 0.1  # calibration: the guarantee holds with probability 1 - delta
  step: int | None = None  # the checkpoint step; None: the newest
  speculative: Sequence[tuple[int, int]] = ()  # (draft_exit_layer, max_draft) settings to add

  def policy_grid(self, num_layers: int, thresholds: Sequence[float]) -> list[ExitPolicy]:
    """The policies `calibrate` chooses among."""
    return policy_grid(
      self.confidences or (DEFAULT_CONFIDENCE,),
      self.min_exit_layers or range(1, max(num_layers, 2)),
      thresholds,
    )


def evaluate(
  workdir: str,
  config: ml_collections.ConfigDict | None = None,
  options: EvaluateOptions = EvaluateOptions(),
  *,
  progress: bool = True,
) -> dict:
  """Evaluate `workdir` (see the module docstring); -> the report as written to report.json."""
  # Everything a user can get wrong, before anything is decoded or written.
  model_config, thresholds, config = _check_inputs(workdir, config, options)
  evaluation_split = Split(config, model_config, options.split, options.num_examples, workdir)
  metric = evaluation_split.metric
  calibration_data = None
  if options.calibrate:
    calibration_data = Split(
      config, model_config, options.calibration_split, options.num_calibration_examples, workdir
    )
  step, model = checkpoint.load_step(workdir, options.step)  # default: the newest readable
  checkpoint_id = {"step": step, "params_fingerprint": checkpoint.params_fingerprint(model)}

  family, chosen, result_calibration = _policy(
    model, workdir, calibration_data, thresholds, options, checkpoint_id, progress
  )
  grid = thresholds if chosen is None else sorted(set(thresholds) | {chosen.threshold})
  sizes = [1] if options.batch_size == 1 else [1, options.batch_size]
  early_exit = dict(min_exit_layer=family.min_exit_layer, backfill_chunk=options.backfill_chunk)
  rows, histograms, token_examples = _decode_grid(
    model,
    evaluation_split,
    grid,
    sizes,
    None if chosen is None else chosen.threshold,
    family.confidence,
    early_exit,
    options.speculative,
    progress,
  )
  report = {
    "workdir": os.path.abspath(workdir),
    "step": step,
    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "dataset": evaluation_split.dataset,
    "split": options.split,
    "num_examples": len(evaluation_split.examples),
    "num_groups": len(set(evaluation_split.groups)),
    "metric_name": metric,
    "confidence": family.confidence,
    **early_exit,
    "thresholds": grid,
    "batch_sizes": sizes,
    "calibrated_threshold": None if chosen is None else chosen.threshold,
    "prompt_width": evaluation_split.prompt_width,
    "generation_constraints": {
      k: v for k, v in evaluation_split.constraints.items() if v not in (None, 0)
    },
    "settings": rows,
    "exit_histograms": histograms,
    "machine": machine_facts(),
  }
  if chosen is not None:
    report["against_fixed_exits"] = against_fixed_exits(rows, chosen.threshold)
  if result_calibration is not None:
    report["calibration"] = result_calibration
  _write_report(report, workdir, model_config.decoder_layers, histograms, token_examples)
  if options.calibrate:  # stored last: only a complete evaluation changes it
    _store_choice(workdir, options, chosen, result_calibration)
  return report


def against_fixed_exits(rows: list[dict], threshold: float) -> dict:
  """The calibrated DEED point at batch 1 beside the fixed-exit frontier: every fixed exit (static
  is the last) whose metric reaches DEED's, and DEED's speed against the fastest of them."""
  at_one = [r for r in rows if r["batch_size"] == 1]
  deed = next(r for r in at_one if r["exit_mode"] == "deed" and r["threshold"] == threshold)
  reaching = [
    {k: r[k] for k in ("setting", "metric", "mean_exit_layer", "decoder_ms_per_sample")}
    for r in at_one
    if r["exit_mode"] in ("fixed", "static") and r["metric"] >= deed["metric"]
  ]
  fastest = min(reaching, key=lambda r: r["decoder_ms_per_sample"], default=None)
  return {
    "deed": {k: deed[k] for k in ("setting", "metric", "mean_exit_layer", "decoder_ms_per_sample")},
    "fixed_reaching_it": reaching,
    "fastest_fixed": None if fastest is None else fastest["setting"],
    "deed_speedup_over_it": None
    if fastest is None
    else fastest["decoder_ms_per_sample"] / deed["decoder_ms_per_sample"],
  }


def _check_inputs(
  workdir: str, config: ml_collections.ConfigDict | None, options: EvaluateOptions
) -> tuple[ModelConfig, list[float], ml_collections.ConfigDict]:
  """-> (the workdir's model config, the threshold grid, the task's config),
  or an error naming the value that cannot work; reads only the workdir's JSON files."""
  model_config, _ = check_workdir(workdir, options.step)
  thresholds = check_options(
    options.thresholds,
    options.batch_size,
    options.num_examples,
    options.max_drop,
    options.delta,
    options.calibrate,
  )
  for draft_exit_layer, max_draft in options.speculative:
    if not 1 <= draft_exit_layer < model_config.decoder_layers or max_draft < 1:
      raise UserError(
        f"--speculative={draft_exit_layer}:{max_draft}: the draft exit must be in "
        f"1..{model_config.decoder_layers - 1} and max_draft >= 1."
      )
  for flag, split in (
    ("--split", options.split),
    ("--calibration_split", options.calibration_split),
  ):
    if split == UNLABELLED_SPLIT and (flag == "--split" or options.calibrate):
      raise UserError(
        f"{flag}={split}: its answers are not public, so it cannot be scored or calibrated on "
        "(use calibration or test)."
      )
  config = task_config(workdir, config)
  validate_task(config.task)
  if options.calibrate and options.num_calibration_examples < 0:
    raise UserError(
      f"--num_calibration_examples={options.num_calibration_examples} must be >= 0 (0: all)."
    )
  for flag, values in (
    ("--confidence", options.confidences),
    ("--min_exit_layer", options.min_exit_layers),
  ):
    if len(values) > 1 and not options.calibrate:
      raise UserError(
        f"{flag}={','.join(map(str, values))}: several values are choices for --calibrate; "
        "without it give one."
      )
  # DEED and copy exit early with these; each confidence must be known and usable by this model,
  # each min_exit_layer within 1..L, backfill_chunk >= 1 (DecodeConfig checks).
  for policy in options.policy_grid(model_config.decoder_layers, thresholds[:1]):
    policy.setting(options.backfill_chunk).decode_config(
      model_config.max_target_length, policy.confidence
    ).resolve(model_config)
  return model_config, thresholds, config


def _store_choice(
  workdir: str, options: EvaluateOptions, chosen: ExitPolicy | None, result_calibration: dict
) -> None:
  """decode_config.json: the calibrated DEED policy, or full depth when none was certified (an
  earlier choice no longer holds for this model)."""
  choice = {"exit_mode": "static"}
  if chosen is not None:
    choice = {
      "exit_mode": "deed",
      **dataclasses.asdict(chosen),
      "backfill_chunk": options.backfill_chunk,
    }
  write_json(
    workdir,
    DECODE_CONFIG_FILE,
    {
      **choice,
      "calibrated_for": result_calibration["calibrated_for"],
      "calibration": result_calibration,
    },
  )


def _policy(
  model,
  workdir: str,
  calibration_data: Split | None,
  thresholds: list[float],
  options: EvaluateOptions,
  checkpoint_id: dict,
  progress: bool,
) -> tuple[ExitPolicy, ExitPolicy | None, dict | None]:
  """(the policy family the report sweeps thresholds of, the policy to mark, its calibration
  record): calibrated now (`calibrate`), else the one stored in the workdir when it was calibrated
  for this checkpoint and fits the options (another checkpoint's is not reused: said on stderr)."""
  if options.calibrate:
    found = calibrate_policy(
      model,
      calibration_data,
      options.policy_grid(model.config.decoder_layers, thresholds),
      options.backfill_chunk,
      CALIBRATION_BATCH_SIZE,
      options.max_drop,
      options.delta,
      progress,
    )
    return (
      found.family,
      found.outcome.chosen,
      calibration_record(found, calibration_data, options, checkpoint_id),
    )
  given = ExitPolicy(
    (options.confidences or (DEFAULT_CONFIDENCE,))[0], (options.min_exit_layers or (1,))[0], 0.0
  )
  stored = read_json(workdir, DECODE_CONFIG_FILE)
  if stored is None or stored.get("exit_mode") != "deed":
    return given, None, None
  policy = ExitPolicy(stored["confidence"], stored["min_exit_layer"], stored["threshold"])
  if options.confidences and policy.confidence != options.confidences[0]:
    return given, None, None
  if options.min_exit_layers and policy.min_exit_layer != options.min_exit_layers[0]:
    return given, None, None
  stale = stale_calibration(workdir, checkpoint_id["step"], checkpoint_id["params_fingerprint"])
  if stale:
    print(f"Calibrated policy not reused: {stale}.", file=sys.stderr)
    return given, None, None
  return policy, policy, stored.get("calibration")


def calibration_record(
  found: PolicyCalibration, split: Split, options: EvaluateOptions, checkpoint_id: dict
) -> dict:
  """The calibration as report.json and decode_config.json keep it: the choice, its guarantee, every
  policy tested (and measured, where policies were ordered), and what it was calibrated for."""
  outcome, chosen = found.outcome, found.outcome.chosen
  return {
    "split": options.calibration_split,
    "policy": None if chosen is None else dataclasses.asdict(chosen),
    "threshold": None if chosen is None else chosen.threshold,
    "max_drop": options.max_drop,
    "delta": options.delta,
    "num_examples": outcome.num_examples,
    "num_groups": outcome.num_groups,
    "ordering_examples": found.ordering_examples,
    "ordering_groups": found.ordering_groups,
    "metric_name": split.metric,
    "backfill_chunk": options.backfill_chunk,
    "guarantee": outcome.guarantee(),
    "tested": [
      {**dataclasses.asdict(row["candidate"]), **{k: v for k, v in row.items() if k != "candidate"}}
      for row in outcome.tested
    ],
    "ordering": [
      {**dataclasses.asdict(row["policy"]), **{k: v for k, v in row.items() if k != "policy"}}
      for row in found.ordering
    ],
    "calibrated_for": {
      **checkpoint_id,
      "dataset": split.dataset,
      "split": options.calibration_split,
      "num_examples": len(split.examples),
      "num_groups": len(set(split.groups)),
      "metric": split.metric,
      "max_drop": options.max_drop,
      "delta": options.delta,
      "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    },
  }


def _decode_grid(
  model,
  split: Split,
  grid: list[float],
  sizes: list[int],
  marked: float | None,
  confidence: str,
  early_exit: dict,
  speculative: Sequence[tuple[int, int]],
  progress: bool,
) -> tuple[list, dict, tuple]:
  """Every setting of the grid at each batch size, DEED and copy exiting early by `confidence` with
  `early_exit` (Setting's min_exit_layer, backfill_chunk). -> (summary rows, exit histograms of a
  few DEED thresholds at batch 1, (name, per-token exits of a few answers) of the `marked`
  threshold)."""
  rows, histograms, token_examples = [], {}, None
  num_layers = model.config.decoder_layers
  for size in sizes:
    settings = setting_grid(num_layers, grid, speculative=speculative, **early_exit)
    with progress_bar(
      len(split.examples) * len(settings), f"{split.name}, batch {size}", progress
    ) as bar:
      runs = decode_settings(
        model,
        split.batches(size),
        settings,
        split.max_new_tokens,
        confidence=confidence,
        progress=bar.update,
        prompt_width=split.prompt_width,
        constraints=split.constraints,
      )
    rows += summarise(runs, split.metric, split.tokenizer.decode, split.answers)
    if size == 1:
      deed = [r for r in runs if r.setting.exit_mode == "deed"]
      shown = [r for r in deed if r.setting.threshold == marked] or deed[len(deed) // 2 :][:1]
      for run in sorted(
        {r.setting.name: r for r in _spread(deed, 3) + shown[:1]}.values(),
        key=lambda r: r.setting.threshold,
      ):
        histograms[run.setting.name] = exit_histogram(run, num_layers)
      token_examples = (shown[0].setting.name, _token_examples(shown[0], split, NUM_TOKEN_EXAMPLES))
  return rows, histograms, token_examples


def _write_report(
  report: dict, workdir: str, num_layers: int, histograms: dict, token_examples: tuple
) -> None:
  """report.json, report.md and the plots, into a staged directory that replaces `W/evaluation/`
  only once complete."""
  rows = report["settings"]
  with staged_directory(os.path.join(workdir, EVALUATION_DIR), replace=True) as out:
    report["plots"] = [
      os.path.basename(p)
      for p in (
        plots.pareto(rows, os.path.join(out, "pareto.png"), report["calibrated_threshold"]),
        plots.metric_per_layer(
          [r for r in rows if r["batch_size"] == 1],
          num_layers,
          os.path.join(out, "metric_per_layer.png"),
        ),
        plots.exit_histogram(
          histograms,
          os.path.join(out, "exit_histogram.png"),
          f"Where tokens exit (DEED, batch 1, early exits from layer {report['min_exit_layer']})",
        ),
        plots.token_exits(
          token_examples[1],
          num_layers,
          os.path.join(out, "token_exits.png"),
          f"Answer tokens coloured by exit layer ({token_examples[0]}, batch 1)",
        ),
      )
    ]
    with open(os.path.join(out, "report.json"), "w") as f:
      json.dump(report, f, indent=1)
    with open(os.path.join(out, "report.md"), "w") as f:
      f.write(markdown(report))


def _spread(runs: list, count: int) -> list:
  """`count` runs spread over the list (lowest, middle, highest threshold)."""
  if len(runs) <= count:
    return list(runs)
  return [runs[round(i * (len(runs) - 1) / (count - 1))] for i in range(count)]


def _about(num_examples: int, num_groups: int) -> str:
  """' about G documents/images' where questions share them (VQA), else nothing."""
  return f" about {num_groups} documents/images" if 0 < num_groups < num_examples else ""


def markdown(report: dict) -> str:
  """report.md: what was evaluated, the tables per batch size, the calibration and the plots."""
  lines = [
    f"# Evaluation of {report['workdir']} (step {report['step']})",
    "",
    f"{report['dataset']}, split `{report['split']}`, {report['num_examples']} examples"
    f"{_about(report['num_examples'], report['num_groups'])}; "
    f"metric `{report['metric_name']}` (0-100); DEED and copy: confidence "
    f"`{report['confidence']}`, min_exit_layer {report['min_exit_layer']}, backfill_chunk "
    f"{report['backfill_chunk']}; "
    f"greedy decoding. Latencies are medians per sample over batches, decoder time = generate "
    f"minus encoder; speedup = median per-batch ratio to static. Device: "
    f"{report['machine']['device_kind']}, {report['machine']['cpu_count']} CPUs.",
    "",
  ]
  for size in report["batch_sizes"]:
    lines += [
      f"## Batch {size}",
      "",
      "```",
      settings_table([r for r in report["settings"] if r["batch_size"] == size]),
      "```",
      "",
    ]
  if "calibration" in report:
    lines += _calibration_lines(report["calibration"])
  if "against_fixed_exits" in report:
    lines += _against_fixed_lines(report["against_fixed_exits"])
  lines += ["## Plots", ""] + [f"![{name}]({name})" for name in report["plots"]]
  return "\n".join(lines) + "\n"


def _calibration_lines(cal: dict) -> list[str]:
  """The calibration section: sizes, the guarantee, how the policies were ordered, and each tested."""
  lines = [
    "## Calibration",
    "",
    f"Split `{cal['split']}`, {cal['num_examples']} examples"
    f"{_about(cal['num_examples'], cal.get('num_groups', 0))} tested, "
    f"max drop {cal['max_drop']:g} points, delta {cal['delta']:g}. {cal['guarantee']}",
    "",
  ]
  if cal.get("ordering"):
    kept = sum(row["in_sequence"] for row in cal["ordering"])
    lines += [
      f"The {len(cal['ordering'])} policies were ordered on {cal['ordering_examples']} other "
      f"examples{_about(cal['ordering_examples'], cal['ordering_groups'])} of the split (each "
      f"decoded at batch 1 and timed); {kept} stayed in the sequence, costliest first (the rest "
      "were costlier and riskier than another).",
      "",
    ]
  lines += [
    "| confidence | first exit | threshold | empirical drop (points) | p-value | rejected |",
    "|---|---|---|---|---|---|",
  ]
  lines += [
    f"| {t.get('confidence', '')} | {t.get('min_exit_layer', '')} | {t['threshold']:g} | "
    f"{100 * t['risk']:.2f} | {t['p_value']:.3g} | {t['rejected']} |"
    for t in cal["tested"]
  ]
  return lines + [""]


def _against_fixed_lines(against: dict) -> list[str]:
  """The calibrated DEED point beside every fixed exit that reaches its metric (batch 1)."""
  deed = against["deed"]
  lines = [
    "## Calibrated DEED against fixed exits (batch 1)",
    "",
    f"{deed['setting']}: {deed['metric']:.2f} at {deed['decoder_ms_per_sample']:.3g} ms/sample "
    f"(mean exit {deed['mean_exit_layer']:.2f}). Fixed exits reaching that metric: "
    + (
      ", ".join(
        f"{r['setting']} {r['metric']:.2f} at {r['decoder_ms_per_sample']:.3g} ms"
        for r in against["fixed_reaching_it"]
      )
      or "none"
    )
    + ".",
  ]
  if against["fastest_fixed"] is not None:
    lines.append(
      f"DEED is {against['deed_speedup_over_it']:.2f}x as fast as the fastest of them "
      f"({against['fastest_fixed']})."
    )
  return lines + [""]
