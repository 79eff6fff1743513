#!/usr/bin/env bash
# Creates .venv from requirements.lock. Idempotent: a stamp of the lock and pyproject
# makes a second call return in well under a second when nothing changed.
#   scripts/setup.sh          set up .venv
#   scripts/setup.sh --lock   regenerate requirements.lock with uv's resolver
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION="0.13.*"
TOOLS=.cache/tools

say() { printf '[setup] %s\n' "$*" >&2; }

runs() { [ -n "$1" ] && "$1" --version >/dev/null 2>&1; }

is_py310() { [ -x "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; }

find_python310() {
  local c
  for c in "${MNIST_PYTHON:-}" "$(command -v python3.10 2>/dev/null || true)" \
           "$(command -v python3 2>/dev/null || true)"; do
    [ -n "$c" ] && is_py310 "$c" && { echo "$c"; return; }
  done
  local roots=()
  command -v pyenv >/dev/null 2>&1 && roots+=("$(pyenv root)")
  roots+=("${PYENV_ROOT:-$HOME/.pyenv}")
  for r in "${roots[@]}"; do
    for c in "$r"/versions/3.10*/bin/python3.10; do
      is_py310 "$c" && { echo "$c"; return; }
    done
  done
  for c in /usr/bin/python3.10 /usr/local/bin/python3.10; do
    is_py310 "$c" && { echo "$c"; return; }
  done
  if runs "$(command -v uv 2>/dev/null || true)"; then
    c=$(uv python find 3.10 2>/dev/null || true)
    [ -n "$c" ] && is_py310 "$c" && { echo "$c"; return; }
  fi
}

find_uv() {
  # `command -v` is not enough: a pyenv shim named uv exists as soon as any pyenv
  # version has uv installed, and fails when the active version has not.
  local c
  c=$(command -v uv 2>/dev/null || true)
  if runs "$c"; then echo "$c"; return; fi
  if ! runs "$TOOLS/bin/uv"; then
    local bootstrap
    bootstrap=$(command -v python3 || command -v python || true)
    [ -n "$bootstrap" ] || { say "no python3 to bootstrap uv with"; exit 1; }
    say "installing uv ($UV_VERSION) into $TOOLS"
    "$bootstrap" -m venv "$TOOLS" && "$TOOLS/bin/python" -m pip install -q "uv==$UV_VERSION"
  fi
  echo "$TOOLS/bin/uv"
}

UV=$(find_uv)

if [ "${1:-}" = "--lock" ]; then
  say "resolving pyproject.toml into requirements.lock"
  exec "$UV" pip compile pyproject.toml --extra test --python-version 3.10 \
    --python-platform x86_64-unknown-linux-gnu --generate-hashes -o requirements.lock
fi

stamp=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ "$(cat .venv/.lock-stamp 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi

PY=$(find_python310)
if [ -z "$PY" ]; then
  if "$UV" python install 3.10 >/dev/null 2>&1; then
    PY=$("$UV" python find 3.10)
  else
    say "ERROR: no Python 3.10 found (looked on PATH, in pyenv's versions/3.10*, /usr/bin)"
    say "and 'uv python install 3.10' could not download one (no internet?)."
    say "Install Python 3.10 (e.g. 'pyenv install 3.10' or your OS package) or set"
    say "MNIST_PYTHON=/path/to/python3.10, then run 'make setup' again."
    exit 1
  fi
fi
say "using $PY ($("$PY" --version 2>&1))"

# --seed puts pip into the venv: TFX installs user modules into Beam workers with `python -m pip`.
[ -x .venv/bin/python ] && is_py310 .venv/bin/python || "$UV" venv -q --seed --python "$PY" .venv
say "installing the locked dependency tree (requirements.lock)"
"$UV" pip sync -q --python .venv/bin/python requirements.lock
"$UV" pip install -q --python .venv/bin/python --no-deps -e .
echo "$stamp" > .venv/.lock-stamp
say "ready: .venv ($(.venv/bin/python --version 2>&1))"
