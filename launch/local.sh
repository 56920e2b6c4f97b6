#!/usr/bin/env bash
# The main local job: set up .venv/, train a small multi-exit model on the embedded forms task on the
# CPU (per-exit validation accuracy printed at the end), then evaluate it: calibrate DEED's threshold
# on the calibration split and print the speed/accuracy table of static, fixed-exit, copy and DEED
# decoding on the test split (report and plots in <workdir>/evaluation/). Rerunning resumes (or, when
# finished, just re-evaluates) the run in workdirs/forms_vqa_normalised_local (the normalised forms
# task; the earlier plain task runs with configs/forms_vqa.py:runlocal,plain, see that file).
#   usage: ./launch/local.sh [extra train flags, e.g. --config.total_steps=500]
#   WORKDIR=workdirs/other ./launch/local.sh ...   trains and evaluates in another workdir
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh ""  # no extras (and not this script's arguments: a sourced script sees them)
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
WORKDIR="${WORKDIR:-workdirs/forms_vqa_normalised_local}"
python -m deed_jax.train \
  --config configs/forms_vqa.py:runlocal \
  --workdir "$WORKDIR" \
  --config.task.data_dir=data/tfds \
  "$@"
# Calibration chooses the exit policy (first exit layer and threshold) itself: its shallow exits are
# poor at low thresholds, and the policy search finds where they are safe. At this size one-position
# backfill calls beat padded blocks on a CPU. Calibration bounds the expected
# drop at 0.2 points with confidence 0.95, so that the drop measured on 500 test answers (which moves
# by ~0.3 points at such rates) stays within 0.5. Five thresholds, all 5000 calibration
# examples and batch 1 only keep the job within 20 minutes (docs/evaluation.md). Lossless speculative
# decoding (drafts of 4 tokens at exit 2, verified by the full model) is one more row of the report.
python -m deed_jax.evaluate --workdir "$WORKDIR" --calibrate --max_drop 0.2 --delta 0.05 \
  --backfill_chunk 1 --thresholds 0.7,0.8,0.9,0.95,0.99 \
  --num_calibration_examples 0 --batch_size 1 --speculative 2:4
