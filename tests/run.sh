#!/usr/bin/env bash
# Set up .venv/ (with the test and convert extras) and run the test suite on the CPU.
#   usage: ./tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh test,convert
export JAX_PLATFORMS=cpu
# The suite is compile-bound: LLVM's -O0 codegen compiles ~35% faster and the tests run tiny models.
# (Benchmarks and launch scripts keep XLA's default optimisation.)
export XLA_FLAGS="--xla_backend_optimization_level=0 ${XLA_FLAGS:-}"
exec python -m pytest -q -n 2 "$@"  # two workers: the suite is compile-bound and single-threaded
