#!/usr/bin/env bash
# The main local job: set up .venv/, train a small multi-exit model on the embedded forms task on the
# CPU, evaluate it, and print per-exit validation accuracy. Rerunning resumes (or, when finished, just
# re-evaluates) the run in workdirs/forms_vqa_normalised_local (the normalised forms task; the
# earlier plain task runs with configs/forms_vqa.py:runlocal,plain, see that file).
#   usage: ./launch/local.sh [extra train flags, e.g. --config.total_steps=500]
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
python -m deed_jax.train \
  --config configs/forms_vqa.py:runlocal \
  --workdir workdirs/forms_vqa_normalised_local \
  --config.task.data_dir=data/tfds \
  "$@"
