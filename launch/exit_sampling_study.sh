#!/usr/bin/env bash
# Sampled vs full deep supervision on the forms task: local.sh's run (every exit supervised) beside
# the same run supervising 1 and 2 random intermediate exits per step (config.loss.exits_per_step),
# each trained for local.sh's 2000 steps and evaluated as local.sh evaluates (calibrated policy, test
# split); then the sampled schedules again at equal wall-clock time: as many steps as fit in the time
# the every-exit run took, at each schedule's measured seconds per step. One table of per-exit
# validation exact match, training time and the calibrated DEED point follows
# (python -m deed_jax.bench.exit_sampling). A run whose workdir already holds an evaluation report is
# reused as it is.
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
for k in 1 2; do
  workdir="workdirs/forms_equal_time_k$k"
  if [ ! -f "$workdir/evaluation/report.json" ]; then
    steps=$(python -c "from deed_jax.bench.finished_runs import equal_time_steps as e
print(e('workdirs/forms_vqa_normalised_local', 'workdirs/forms_exits_per_step_$k'))")
    WORKDIR="$workdir" ./launch/local.sh --config.loss.exits_per_step=$k --config.total_steps="$steps"
  fi
  runs="$runs,k$k-time=$workdir"
done
python -m deed_jax.bench.exit_sampling --runs "$runs" --output "$OUTPUT"
