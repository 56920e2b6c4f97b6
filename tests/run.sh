#!/usr/bin/env bash
# Set up .venv/ (with the test and convert extras) and run the test suite on the CPU.
#   usage: ./tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh test,convert
export JAX_PLATFORMS=cpu
exec python -m pytest -q -n 2 "$@"  # two workers: the suite is compile-bound and single-threaded
