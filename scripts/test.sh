#!/usr/bin/env bash
# Sets up .venv if needed, then runs the test suite; other arguments go to pytest.
#
# Usage: scripts/test.sh [--all] [pytest arguments]  (--all may come anywhere)
#
# It runs the quick tier: every test but those listed in tests/slow_tests.txt
# (the cases that took 6 s or more, except the fastest case of each
# parametrized test; scripts/slow_tests.py writes the list from measured
# times). It runs every selected test instead with --all (as CI, .ci/run,
# does), with a marker expression of your own (-m), or with test ids
# (file.py::test...), which name the tests to run.
#
# The suite runs on FEDTFF_TEST_WORKERS pytest-xdist workers (default 3 on the
# 2-core machines it targets: a worker waiting on a subprocess or a TFF worker
# leaves its core to the third, docs/performance.md; 0 runs it in this
# process). Each test file
# runs whole on one worker (--dist loadfile), so its module-scoped fixtures,
# the TFF processes the tests share, are built once.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TIER=(-m "not slow")
PYTEST_ARGS=()
for arg in "$@"; do
  case "$arg" in
    --all) TIER=() ;;
    -m | -m* | *::*) TIER=(); PYTEST_ARGS+=("$arg") ;;
    *) PYTEST_ARGS+=("$arg") ;;
  esac
done
WORKERS="${FEDTFF_TEST_WORKERS:-3}"
if [[ ! "$WORKERS" =~ ^[0-9]+$ ]]; then
  echo "scripts/test.sh: error: FEDTFF_TEST_WORKERS must be a whole number of workers, got '$WORKERS'" >&2
  exit 2
fi
"$ROOT/scripts/setup.sh"
cd "$ROOT"
if [[ ${#TIER[@]} -gt 0 ]]; then  # Runs with --all, -m or test ids say nothing.
  echo "[test] quick tier: the tests listed in tests/slow_tests.txt are left out; scripts/test.sh --all runs them" >&2
fi
if [[ "$WORKERS" == 0 ]]; then
  exec "$ROOT/.venv/bin/python" -m pytest ${TIER[@]+"${TIER[@]}"} ${PYTEST_ARGS[@]+"${PYTEST_ARGS[@]}"}
fi
exec "$ROOT/.venv/bin/python" -m pytest -n "$WORKERS" --dist loadfile ${TIER[@]+"${TIER[@]}"} ${PYTEST_ARGS[@]+"${PYTEST_ARGS[@]}"}
