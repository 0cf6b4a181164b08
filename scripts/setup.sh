#!/usr/bin/env bash
# Creates or updates .venv with fedtff's pinned TensorFlow Federated stack.
#
# Usage: scripts/setup.sh [--force]
#
# The pins live in setup.cfg. TFF 0.87 pins jaxlib==0.4.14, which some package
# registries no longer serve, so the dependency set is installed first with the
# newest jaxlib in [0.4.13, 0.4.14], then TFF itself with --no-deps (jax 0.4.14
# runs on jaxlib 0.4.13). A rerun with nothing changed only checks a stamp.
#
# Environment: FEDTFF_PYTHON picks the interpreter, FEDTFF_VENV the venv path.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FEDTFF_VENV:-$ROOT/.venv}"
STAMP="$VENV/.fedtff-setup-stamp"
STEP="starting"

step() { STEP="$1"; echo "[setup] $1" >&2; }
fail() { echo "scripts/setup.sh: error: $1" >&2; exit 1; }
trap 'echo "scripts/setup.sh: error: step \"$STEP\" failed (exit $?)" >&2' ERR

python_ok() {
  "$1" -c 'import sys; sys.exit(0 if (3, 9) <= sys.version_info[:2] <= (3, 11) else 1)' \
    >/dev/null 2>&1
}

find_python() {
  local candidate
  for candidate in ${FEDTFF_PYTHON:-} python3.11 python3.10 python3.9 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

setup_fingerprint() {
  cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1
}

requirements_without_tff() {
  "$VENV/bin/python" - "$ROOT/setup.cfg" <<'PY'
import configparser, sys
cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
lines = cfg["options"]["install_requires"].splitlines()
lines += cfg["options.extras_require"]["test"].splitlines()
for line in lines:
    line = line.split("#")[0].strip()
    if line and not line.startswith("tensorflow-federated"):
        print(line)
PY
}

tff_requirement() {
  grep -Eo 'tensorflow-federated==[0-9.]+' "$ROOT/setup.cfg" | head -n1
}

if [[ "${1:-}" != "--force" && -x "$VENV/bin/python" && -f "$STAMP" ]] \
    && [[ "$(cat "$STAMP")" == "$(setup_fingerprint)" ]] && python_ok "$VENV/bin/python"; then
  echo "[setup] $VENV is up to date" >&2
  exit 0
fi

step "find a Python 3.9-3.11 interpreter"
PYTHON="$(find_python)" || fail "no Python 3.9, 3.10 or 3.11 found (TensorFlow Federated 0.87 needs one); install one or set FEDTFF_PYTHON=/path/to/python3.11"

unusable=""
if [[ -x "$VENV/bin/python" ]] && ! python_ok "$VENV/bin/python"; then
  unusable="its Python is not 3.9-3.11"
elif [[ -x "$VENV/bin/python" ]] && ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  unusable="it has no pip: its creation was interrupted"
fi
if [[ -n "$unusable" ]]; then
  step "remove $VENV ($unusable)"
  rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  step "create $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
PIP=("$VENV/bin/python" -m pip install --quiet)
REQS="$(mktemp)"
trap 'rm -f "$REQS"' EXIT

step "read the pinned requirements from setup.cfg"
requirements_without_tff >"$REQS"

step "install the pinned TFF dependency set (jaxlib 0.4.14, or 0.4.13 where 0.4.14 is not served)"
"${PIP[@]}" -r "$REQS"

step "install $(tff_requirement) without its jaxlib pin"
"${PIP[@]}" --no-deps "$(tff_requirement)"

step "install fedtff in editable mode"
"${PIP[@]}" --no-deps -e "$ROOT"

step "check that tensorflow_federated and fedtff import"
"$VENV/bin/python" -c 'import tensorflow_federated, fedtff' >/dev/null 2>&1 \
  || "$VENV/bin/python" -c 'import tensorflow_federated, fedtff'

setup_fingerprint >"$STAMP"
echo "[setup] done: $VENV" >&2
