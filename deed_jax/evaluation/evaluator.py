"""The evaluator behind `python -m deed_jax.evaluate` (see that module for the command line): decode a
split under static, fixed-exit, copy and DEED settings at batch 1 and a larger batch, optionally
calibrate a threshold first, and write the report (JSON, Markdown, PNG plots) into the workdir.

Everything a user can get wrong is checked before anything is decoded or written; the report
directory is replaced only once the new one is complete, and a calibrated threshold is stored only
after it.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime
import json
import os
import sys
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
import tqdm

from deed_jax import checkpoint
from deed_jax.data import datasets, pipeline
from deed_jax.decoding.config import CONSTRAINT_FIELDS, DecodeConfig, check_threshold
from deed_jax.errors import MissingPathError, UserError
from deed_jax.evaluation import calibration, metrics, plots
from deed_jax.evaluation.report import settings_table
from deed_jax.evaluation.sweep import (
  Setting,
  SettingRun,
  decode_settings,
  exit_histogram,
  per_example_scores,
  setting_grid,
  summarise,
)
from deed_jax.machine import machine_facts
from deed_jax.models import ModelConfig
from deed_jax.staging import staged_directory
from deed_jax.task_config import scoring, validate_task
from deed_jax.workdir import (
  CHECKPOINT_DIR,
  DECODE_CONFIG_FILE,
  EVALUATION_DIR,
  TRAIN_CONFIG_FILE,
  read_json,
  read_model_config,
  stale_calibration,
  workdir_decode_config,
  write_json,
)

# Thresholds of the default grid: dense near 1, where max-prob confidences of a trained model sit.
DEFAULT_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999)
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


class Split:
  """A split as the evaluator reads it: examples in order, each one's answers, the tokenizer."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    model_config: ModelConfig,
    split: str,
    num_examples: int,
    workdir: str,
  ):
    task = config.task
    data_dir = os.path.expanduser(task.data_dir or "~/tensorflow_datasets")
    dataset_config = datasets.resolve_config(
      task.dataset, task.dataset_config, workdir, model_config.image_size
    )
    builder = datasets.prepare(task.dataset, dataset_config, data_dir, task.manual_dir)
    if split not in builder.info.splits:
      raise UserError(
        f"Split {split!r} is not in {task.dataset}/{dataset_config}; it has "
        f"{sorted(builder.info.splits)}."
      )
    self.tokenizer = pipeline.task_tokenizer(task)
    preprocess = pipeline.task_preprocess(task, model_config, self.tokenizer)
    self.name = split
    self.dataset = f"{task.dataset}/{dataset_config}"
    self.metric, answers_key = scoring(task)
    self.examples, self.answers, self.groups = pipeline.read_examples(
      builder.as_data_source(split=split), preprocess, num_examples, answers_key
    )
    unlabelled = sum(not any(a.strip() for a in answers) for answers in self.answers)
    if unlabelled:
      raise UserError(
        f"Split {split!r} of {task.dataset} holds {unlabelled} of {len(self.answers)} examples "
        f"without answers under {answers_key or task.target_key!r}: an unlabelled split cannot be "
        "scored or calibrated on (use calibration or test)."
      )
    # Every batch's prompts are laid out at the split's longest (one compiled program), and leave the
    # decoder max_target_length - prompt_width + 1 new tokens.
    self.prompt_width = max((int(e["prompt_length"]) for e in self.examples), default=1)
    self.max_new_tokens = model_config.max_target_length - self.prompt_width + 1
    # A converted model's own generation constraints (n-gram blocking, bad words, forced ids, ...),
    # for every setting alike.
    generation = workdir_decode_config(workdir, self.prompt_width, max_new_tokens=1)
    self.constraints = {k: getattr(generation, k) for k in CONSTRAINT_FIELDS}

  def batches(self, size: int) -> list[dict]:
    return [
      pipeline.stack_examples(self.examples[i : i + size])
      for i in range(0, len(self.examples), size)
    ]


def _bar(total: int, desc: str, progress: bool):
  return tqdm.tqdm(total=total, desc=desc, unit="decode", disable=not progress, dynamic_ncols=True)


class _DecodedOnDemand(collections.abc.Mapping):
  """{threshold: per-example quality [n]} over a calibration split, each threshold decoded the first
  time it is read. Calibration reads thresholds safest first and stops at the first it cannot
  certify, so the thresholds below it (and their decoding time) are never spent."""

  def __init__(
    self, decode_scores: Callable[[Setting], np.ndarray], settings: dict[float, Setting]
  ):
    self._decode_scores, self._settings, self._scores = decode_scores, settings, {}

  def __getitem__(self, threshold: float) -> np.ndarray:
    if threshold not in self._scores:
      self._scores[threshold] = self._decode_scores(self._settings[threshold])
    return self._scores[threshold]

  def __iter__(self):
    return iter(self._settings)

  def __len__(self) -> int:
    return len(self._settings)


def check_per_example_metric(metric: str) -> None:
  """Calibration scores examples one by one; a corpus metric (BLEU) has no per-example value."""
  if metric in metrics.CORPUS_METRICS:
    raise UserError(
      f"Calibration needs a per-example metric; {metric!r} is scored over a corpus "
      f"(use one of {sorted(metrics.METRICS)})."
    )


def split_quality(
  model,
  split: Split,
  setting: Setting,
  confidence: str,
  batch_size: int,
  progress: Callable[[int], None] | None = None,
) -> np.ndarray:
  """Per-example quality [n] in [0, 1], higher is better, of `setting` on `split` (decoded untimed)."""
  (run,) = decode_settings(
    model,
    split.batches(batch_size),
    [setting],
    split.max_new_tokens,
    confidence=confidence,
    timing=False,
    progress=progress,
    prompt_width=split.prompt_width,
    constraints=split.constraints,
  )
  scores = per_example_scores(run, split.metric, split.tokenizer.decode, split.answers)
  return _quality(scores, split.metric)


def run_calibration(
  model,
  split: Split,
  thresholds: list[float],
  metric: str,
  confidence: str,
  early_exit: dict,
  batch_size: int,
  max_drop: float,
  delta: float,
  progress: bool,
) -> calibration.Calibration:
  """Decode the calibration split under static, then under DEED threshold by threshold as the
  fixed-sequence test reads them (safest first, up to the first it cannot certify)."""
  check_per_example_metric(metric)
  with _bar(
    len(split.examples) * (1 + len(thresholds)), f"calibrate ({split.name})", progress
  ) as bar:
    decode = lambda setting: split_quality(
      model, split, setting, confidence, batch_size, bar.update
    )
    deed = {t: Setting("deed", threshold=t, **early_exit) for t in thresholds}
    outcome = calibration.calibrate(
      decode(Setting("static")),
      _DecodedOnDemand(decode, deed),
      max_drop,
      delta,
      groups=split.groups,
      loss=_loss_words(metric),
    )
    bar.total = bar.n  # the thresholds left untested were never decoded
  return outcome


def _quality(values: np.ndarray, metric: str) -> np.ndarray:
  """Per-example values as a score in [0, 1] where higher is better (CER is an error rate)."""
  return 1.0 - np.clip(values, 0.0, 1.0) if metric in metrics.LOWER_IS_BETTER else values


def _loss_words(metric: str) -> str:
  """What calibration bounds, in words (an error rate enters clipped at 1 per example)."""
  if metric in metrics.LOWER_IS_BETTER:
    return f"the rise in {metric} (each example's {metric} clipped at 1)"
  return f"the drop in {metric}"


def _token_examples(run: SettingRun, split: Split, count: int) -> list:
  decode = split.tokenizer.decode
  out = []
  for tokens, layers, answers in list(zip(run.tokens, run.exit_layers, split.answers))[:count]:
    emitted = [(decode([int(t)]) or "EOS", int(l)) for t, l in zip(tokens, layers) if l > 0]
    out.append(([s for s, _ in emitted], [l for _, l in emitted], answers[0]))
  return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluateOptions:
  """What `evaluate` decodes and how (the command line's flags, `python -m deed_jax.evaluate`)."""

  split: str = "test"
  calibration_split: str = "calibration"
  num_examples: int = 500  # of `split`; 0: all
  num_calibration_examples: int = 0  # of `calibration_split`; 0: all
  thresholds: Sequence[float] = DEFAULT_THRESHOLDS
  batch_size: int = 8  # the second batch size evaluated, besides 1
  confidence: str = "max_prob"
  min_exit_layer: int = 1
  backfill_chunk: int = DecodeConfig.backfill_chunk
  calibrate: bool = False
  max_drop: float = 0.5  # calibration: the largest drop allowed, metric points
  delta: float = 0.1  # calibration: the guarantee holds with probability 1 - delta
  step: int | None = None  # the checkpoint step; None: the newest
  speculative: Sequence[tuple[int, int]] = ()  # (draft_exit_layer, max_draft) settings to add

  @property
  def early_exit(self) -> dict:
    """The DecodeConfig fields DEED and copy exit early with."""
    return dict(min_exit_layer=self.min_exit_layer, backfill_chunk=self.backfill_chunk)


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

  chosen, result_calibration = _threshold(
    model, workdir, calibration_data, thresholds, options, checkpoint_id, progress
  )
  grid = thresholds if chosen is None else sorted(set(thresholds) | {chosen})
  sizes = [1] if options.batch_size == 1 else [1, options.batch_size]
  rows, histograms, token_examples = _decode_grid(
    model, evaluation_split, grid, sizes, chosen, metric, options, progress
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
    "confidence": options.confidence,
    **options.early_exit,
    "thresholds": grid,
    "batch_sizes": sizes,
    "calibrated_threshold": chosen,
    "prompt_width": evaluation_split.prompt_width,
    "generation_constraints": {
      k: v for k, v in evaluation_split.constraints.items() if v not in (None, 0)
    },
    "settings": rows,
    "exit_histograms": histograms,
    "machine": machine_facts(),
  }
  if result_calibration is not None:
    report["calibration"] = result_calibration
  _write_report(report, workdir, model_config.decoder_layers, histograms, token_examples)
  if options.calibrate:  # stored last: only a complete evaluation changes it
    _store_choice(workdir, options, chosen, result_calibration)
  return report


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
  # DEED and copy exit early with these; the confidence must be known and usable by this model,
  # min_exit_layer within 1..L, backfill_chunk >= 1 (DecodeConfig checks).
  Setting("deed", threshold=0.5, **options.early_exit).decode_config(
    model_config.max_target_length, options.confidence
  ).resolve(model_config)
  return model_config, thresholds, config


def _store_choice(
  workdir: str, options: EvaluateOptions, chosen: float | None, result_calibration: dict
) -> None:
  """decode_config.json: the calibrated DEED settings, or full depth when no threshold was certified
  (an earlier choice no longer holds for this model)."""
  choice = {"exit_mode": "static"}
  if chosen is not None:
    choice = {"exit_mode": "deed", "confidence": options.confidence, "threshold": chosen}
    choice.update(options.early_exit)
  write_json(
    workdir,
    DECODE_CONFIG_FILE,
    {
      **choice,
      "calibrated_for": result_calibration["calibrated_for"],
      "calibration": result_calibration,
    },
  )


def _threshold(
  model,
  workdir: str,
  calibration_data: Split | None,
  thresholds: list[float],
  options: EvaluateOptions,
  checkpoint_id: dict,
  progress: bool,
) -> tuple[float | None, dict | None]:
  """The threshold to mark in the report and its calibration record: calibrated now (`calibrate`),
  else the one stored in the workdir when it was calibrated for this checkpoint and these exits
  (another checkpoint's is not reused: said on stderr); (None, None) if none."""
  if options.calibrate:
    split = calibration_data
    outcome = run_calibration(
      model,
      split,
      thresholds,
      split.metric,
      options.confidence,
      options.early_exit,
      CALIBRATION_BATCH_SIZE,
      options.max_drop,
      options.delta,
      progress,
    )
    return outcome.threshold, {
      "split": options.calibration_split,
      "threshold": outcome.threshold,
      "max_drop": options.max_drop,
      "delta": options.delta,
      "num_examples": outcome.num_examples,
      "num_groups": outcome.num_groups,
      "metric_name": split.metric,
      "confidence": options.confidence,
      **options.early_exit,
      "guarantee": outcome.guarantee(),
      "tested": list(outcome.tested),
      "calibrated_for": {
        **checkpoint_id,
        "dataset": split.dataset,
        "split": options.calibration_split,
        "num_examples": outcome.num_examples,
        "num_groups": outcome.num_groups,
        "metric": split.metric,
        "max_drop": options.max_drop,
        "delta": options.delta,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      },
    }
  stored = read_json(workdir, DECODE_CONFIG_FILE)
  if (
    stored is not None
    and stored.get("confidence") == options.confidence
    and stored.get("min_exit_layer") == options.min_exit_layer
  ):  # exits as it was calibrated
    stale = stale_calibration(workdir, checkpoint_id["step"], checkpoint_id["params_fingerprint"])
    if stale:
      print(f"Calibrated threshold not reused: {stale}.", file=sys.stderr)
      return None, None
    return stored.get("threshold"), stored.get("calibration")
  return None, None


def _decode_grid(
  model,
  split: Split,
  grid: list[float],
  sizes: list[int],
  chosen: float | None,
  metric: str,
  options: EvaluateOptions,
  progress: bool,
) -> tuple[list, dict, tuple]:
  """Every setting of the grid at each batch size. -> (summary rows, exit histograms of a few DEED
  thresholds at batch 1, (name, per-token exits of a few answers) of the marked threshold)."""
  rows, histograms, token_examples = [], {}, None
  num_layers = model.config.decoder_layers
  for size in sizes:
    settings = setting_grid(num_layers, grid, speculative=options.speculative, **options.early_exit)
    with _bar(len(split.examples) * len(settings), f"{split.name}, batch {size}", progress) as bar:
      runs = decode_settings(
        model,
        split.batches(size),
        settings,
        split.max_new_tokens,
        confidence=options.confidence,
        progress=bar.update,
        prompt_width=split.prompt_width,
        constraints=split.constraints,
      )
    rows += summarise(runs, metric, split.tokenizer.decode, split.answers)
    if size == 1:
      deed = [r for r in runs if r.setting.exit_mode == "deed"]
      shown = [r for r in deed if r.setting.threshold == chosen] or deed[len(deed) // 2 :][:1]
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
    cal = report["calibration"]
    lines += [
      "## Calibration",
      "",
      f"Split `{cal['split']}`, {cal['num_examples']} examples"
      f"{_about(cal['num_examples'], cal.get('num_groups', 0))}, "
      f"max drop {cal['max_drop']:g} points, delta {cal['delta']:g}. {cal['guarantee']}",
      "",
      "| threshold | empirical drop (points) | p-value | rejected |",
      "|---|---|---|---|",
    ]
    lines += [
      f"| {t['threshold']:g} | {100 * t['risk']:.2f} | {t['p_value']:.3g} | {t['rejected']} |"
      for t in cal["tested"]
    ]
    lines.append("")
  lines += ["## Plots", ""] + [f"![{name}]({name})" for name in report["plots"]]
  return "\n".join(lines) + "\n"
