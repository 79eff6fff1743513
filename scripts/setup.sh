#!/usr/bin/env bash
# Creates .venv from requirements.lock. Idempotent: a stamp of the lock and pyproject
# makes a second call return in well under a second when nothing changed.
#   scripts/setup.sh          set up .venv
#   scripts/setup.sh --lock   regenerate requirements.lock and kubeflow/requirements-gpu.lock
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION="0.13.*"
TOOLS=.cache/tools
# kfp-kubernetes releases whose protos the tests parse the compiled Kubernetes executor
# configs with (tests/kubeflow/kfp_kubernetes.py), one per KFP backend generation: 1.0.0 has
# the proto of backend 2.0.x, 1.2.0 that of 2.2. Each goes into its own folder
# (.venv/kfp-kubernetes/<version>): both define the same module name and proto file.
KFP_KUBERNETES=(
  "1.0.0 sha256:39c93df10b3467385639a355b80b95c4e340dd245b421cdbc595a0b2d3c5e18c"
  "1.2.0 sha256:5f1bf4e7a3b768e36f865e429535ef5362e8cdc59cc2941007033361e4d67fa1"
)

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
  "$UV" pip compile pyproject.toml --extra test --python-version 3.10 \
    --python-platform x86_64-unknown-linux-gnu --generate-hashes -o requirements.lock
  # The GPU image's CUDA wheels: TensorFlow's and-cuda extra within requirements.lock's
  # versions, listing only what requirements.lock does not already have.
  say "resolving kubeflow/requirements-gpu.in into kubeflow/requirements-gpu.lock"
  locked=$(grep -oE '^[A-Za-z0-9][A-Za-z0-9._-]*==' requirements.lock | sed 's/==$//')
  exec "$UV" pip compile kubeflow/requirements-gpu.in -c requirements.lock \
    --python-version 3.10 --python-platform x86_64-unknown-linux-gnu --generate-hashes \
    --custom-compile-command 'make lock' \
    $(printf -- '--no-emit-package %s ' $locked) -o kubeflow/requirements-gpu.lock
fi

install_kfp_kubernetes() {
  local item version hash target
  for item in "${KFP_KUBERNETES[@]}"; do
    read -r version hash <<< "$item"
    target=.venv/kfp-kubernetes/$version
    [ -f "$target/kfp/kubernetes/kubernetes_executor_config_pb2.py" ] && continue
    say "installing kfp-kubernetes $version into $target (its protos, for the tests)"
    rm -rf "$target"
    "$UV" pip install -q --python .venv/bin/python --no-deps --require-hashes \
      --target "$target" -r <(echo "kfp-kubernetes==$version --hash=$hash")
  done
}

stamp=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ "$(cat .venv/.lock-stamp 2>/dev/null)" = "$stamp" ]; then
  install_kfp_kubernetes
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
install_kfp_kubernetes
echo "$stamp" > .venv/.lock-stamp
say "ready: .venv ($(.venv/bin/python --version 2>&1))"
