#!/usr/bin/env bash
# Make sure .venv/ exists in the repo root and holds deed-jax (editable) with the given extras.
# Sourced by launch/local.sh and tests/run.sh. Idempotent: reinstalls only when pyproject.toml or the
# extras change, so a second call takes a second.
#   usage: source launch/setup_env.sh [extras]     e.g. "test"
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PYTHON_BIN="${PYTHON:-python3}"
EXTRAS="${1:-}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "deed-jax needs Python >= 3.11; $PYTHON_BIN is $("$PYTHON_BIN" --version)." >&2; exit 1; }
  echo "Creating $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi

STAMP="$VENV/.deed_jax_install"
WANT="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1) extras=$EXTRAS"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "Installing deed-jax${EXTRAS:+[$EXTRAS]} into $VENV (first run: a minute or two)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -e "$REPO${EXTRAS:+[$EXTRAS]}" 2> >(grep -v "^WARNING: Location" >&2)
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
