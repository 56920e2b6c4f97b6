#!/usr/bin/env bash
# Set up .venv/ (with the test, convert and pytorch extras) and run the test suite on the CPU.
#   usage: ./tests/run.sh [pytest args]      e.g. -m slow, -k convert
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh test,convert,pytorch
export JAX_PLATFORMS=cpu
# The suite is compile-bound: LLVM's -O0 codegen compiles ~35% faster and the tests run tiny models.
# (Benchmarks and launch scripts keep XLA's default optimisation.)
export XLA_FLAGS="--xla_backend_optimization_level=0 ${XLA_FLAGS:-}"
# Two workers (the suite is compile-bound and single-threaded); each test file stays on one worker, so
# its expensive session fixtures (trained HF models, prepared datasets) are built once, not twice.
# Tests marked `slow` (more seeds and option combinations of rules the default run already covers) are
# left out; `./tests/run.sh -m slow` runs just them, `-m "slow or not slow"` everything (a later -m wins).
exec python -m pytest -q -n 2 --dist loadfile -m "not slow" "$@"
