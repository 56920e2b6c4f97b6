#!/usr/bin/env bash
# Sampled vs full deep supervision on the forms task: local.sh's run (every exit supervised) beside
# the same run supervising 1 and 2 random intermediate exits per step (config.loss.exits_per_step),
# each trained for local.sh's 2000 steps and evaluated as local.sh evaluates (calibrated policy, test
# split); then one table of per-exit validation exact match, training time and the calibrated DEED
# point (python -m deed_jax.bench.exit_sampling). A run whose workdir already holds an evaluation
# report is reused as it is.
#   usage: ./launch/exit_sampling_study.sh [output JSON, default bench_results/exit_sampling.json]
set -euo pipefail
cd "$(dirname "$0")/.."
OUTPUT="${1:-bench_results/exit_sampling.json}"
runs=""
for k in 0 1 2; do
  if [ "$k" = 0 ]; then name=all; workdir=workdirs/forms_vqa_normalised_local
  else name="k$k"; workdir="workdirs/forms_exits_per_step_$k"; fi
  if [ ! -f "$workdir/evaluation/report.json" ]; then
    WORKDIR="$workdir" ./launch/local.sh --config.loss.exits_per_step=$k
  fi
  runs="${runs:+$runs,}$name=$workdir"
done
source launch/setup_env.sh ""  # no extras (and not this script's arguments: a sourced script sees them)
python -m deed_jax.bench.exit_sampling --runs "$runs" --output "$OUTPUT"
