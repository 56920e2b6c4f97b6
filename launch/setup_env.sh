#!/usr/bin/env bash
# Make sure .venv/ exists in the repo root and holds deed-jax (editable) with the given extras, at the
# exact versions of constraints.txt (what the tests ran with). Sourced by launch/local.sh and
# tests/run.sh. Idempotent: it installs only when pyproject.toml or constraints.txt changed or an
# extra is missing, so a second call takes a second.
#   usage: source launch/setup_env.sh [extra,...]     e.g. "test"
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PYTHON_BIN="${PYTHON:-python3}"
REQUESTED="${1:-}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "deed-jax needs Python >= 3.11; $PYTHON_BIN is $("$PYTHON_BIN" --version)." >&2; exit 1; }
  echo "Creating $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi

# The stamp holds the hash of pyproject.toml + constraints.txt the install was made from, then the
# extras installed.
STAMP="$VENV/.deed_jax_install"
HASH="$(cat "$REPO/pyproject.toml" "$REPO/constraints.txt" | sha256sum | cut -d' ' -f1)"
INSTALLED=""
if [ -f "$STAMP" ] && [ "$(head -n1 "$STAMP")" = "$HASH" ]; then
  INSTALLED="$(sed -n 2p "$STAMP")"
fi
WANTED="$(printf '%s\n' ${INSTALLED//,/ } ${REQUESTED//,/ } | sort -u | paste -sd, -)"
if [ ! -f "$STAMP" ] || [ "$(head -n1 "$STAMP")" != "$HASH" ] || [ "$WANTED" != "$INSTALLED" ]; then
  echo "Installing deed-jax${WANTED:+[$WANTED]} into $VENV (first run: a minute or two)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$REPO/constraints.txt" -e "$REPO${WANTED:+[$WANTED]}" 2> >(grep -v "^WARNING: Location" >&2)
  printf '%s\n%s\n' "$HASH" "$WANTED" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
