r"""Evaluate a trained or converted workdir: the speed/accuracy trade-off of early exit, as a report.

  python -m deed_jax.evaluate --workdir workdirs/forms_vqa_normalised_local
  python -m deed_jax.evaluate --workdir workdirs/forms_vqa_normalised_local --calibrate --max_drop 0.5
  python -m deed_jax.evaluate --workdir workdirs/bart --config configs/forms_text.py  # no task stored

Decodes `--split` greedily under static decoding, every fixed exit, copy (CALM's baseline) and DEED
over a grid of thresholds (and lossless speculative decoding at each `--speculative` d:k), at batch 1
and at `--batch_size`, and writes `W/evaluation/`: report.json (one row per setting), report.md
(tables and the calibration's guarantee) and PNG plots (the metric against decoder latency, the
metric per exit layer, where tokens exit, a few answers coloured by exit layer). The task (dataset,
tokenizer, metric) is the config the workdir was trained with, or `--config`.

`--calibrate` first decodes `--calibration_split` and picks the fastest exit policy (confidence,
first exit layer, threshold; `--confidence` and `--min_exit_layer` list the choices) whose drop in the
metric against static decoding stays within `--max_drop` points with probability >= 1 - `--delta`
(`deed_jax.evaluation.policy_search`), stores it with what it was calibrated on in
`W/decode_config.json` (what `deed_jax.workdir.workdir_decode_config(W)` returns from then on) and
marks it in the report beside the fixed exits that reach its metric. Without `--calibrate` a policy
stored earlier for this checkpoint is evaluated and marked as well.

Everything a user can get wrong is checked before anything is decoded or written; the report
directory is replaced only once the new one is complete.
"""

from __future__ import annotations

import os

import jax
from absl import flags, logging
from ml_collections import config_flags

from deed_jax import cli
from deed_jax.decoding.config import DecodeConfig
from deed_jax.evaluation.evaluator import (
  DEFAULT_THRESHOLDS,
  EvaluateOptions,
  evaluate,
  markdown,
  parse_layers,
  parse_speculative,
  parse_thresholds,
)
from deed_jax.workdir import EVALUATION_DIR

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "The task's training config (configs/*.py[:arg]); default: the workdir's own."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "A trained or converted deed-jax workdir.")
_SPLIT = flags.DEFINE_string("split", "test", "The split to evaluate.")
_CALIBRATION_SPLIT = flags.DEFINE_string(
  "calibration_split", "calibration", "The split --calibrate chooses the threshold on."
)
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 500, "Examples of --split (0: all).")
_NUM_CALIBRATION = flags.DEFINE_integer(
  "num_calibration_examples", 0, "Examples of --calibration_split (0: all)."
)
_THRESHOLDS = flags.DEFINE_list(
  "thresholds",
  [str(t) for t in DEFAULT_THRESHOLDS],
  "DEED / copy thresholds, comma-separated, each in [0, 1].",
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "The second batch size evaluated (besides 1).")
_CONFIDENCE = flags.DEFINE_list(
  "confidence",
  [],
  "max_prob | margin | entropy | state | classifier; with --calibrate, a comma-separated list to "
  "choose among (default max_prob; without --calibrate, the calibrated policy's, else max_prob).",
)
_MIN_EXIT_LAYER = flags.DEFINE_list(
  "min_exit_layer",
  [],
  "DEED and copy exit early only from this decoder layer on; with --calibrate, a comma-separated "
  "list to choose among (default every layer 1..L-1; without --calibrate, the calibrated "
  "policy's, else 1).",
)
_BACKFILL_CHUNK = flags.DEFINE_integer(
  "backfill_chunk",
  DecodeConfig.backfill_chunk,
  "DEED: the widest block a skipped layer is backfilled in.",
)
_CALIBRATE = flags.DEFINE_boolean(
  "calibrate", False, "Choose and store a threshold with a guarantee."
)
_MAX_DROP = flags.DEFINE_float(
  "max_drop", 0.5, "Calibration: the largest drop allowed, metric points."
)
_DELTA = flags.DEFINE_float(
  "delta", 0.1, "Calibration: the guarantee holds with probability 1 - delta."
)
_STEP = flags.DEFINE_integer("step", None, "The checkpoint step (default: the newest).")
_SPECULATIVE = flags.DEFINE_list(
  "speculative",
  [],
  "Lossless speculative decoding settings to add, draft_exit_layer:max_draft each (e.g. 4:4).",
)


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  options = EvaluateOptions(
    split=_SPLIT.value,
    calibration_split=_CALIBRATION_SPLIT.value,
    num_examples=_NUM_EXAMPLES.value,
    num_calibration_examples=_NUM_CALIBRATION.value,
    thresholds=parse_thresholds(_THRESHOLDS.value),
    batch_size=_BATCH_SIZE.value,
    confidences=tuple(_CONFIDENCE.value),
    min_exit_layers=parse_layers(_MIN_EXIT_LAYER.value),
    backfill_chunk=_BACKFILL_CHUNK.value,
    calibrate=_CALIBRATE.value,
    max_drop=_MAX_DROP.value,
    delta=_DELTA.value,
    step=_STEP.value,
    speculative=parse_speculative(_SPECULATIVE.value),
  )
  report = evaluate(_WORKDIR.value, _CONFIG.value, options)
  print(markdown(report).split("## Plots")[0].rstrip())
  print(f"\nReport and plots: {os.path.join(_WORKDIR.value, EVALUATION_DIR)}/")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  jax.config.config_with_absl()
  cli.run(main)
