#!/usr/bin/env bash
# Sets up .venv if needed, then trains FedAvg on the offline digits quickstart.
# Extra arguments go to experiments/train.py, e.g. --config.total_rounds=5.
# The run directory defaults to runs/quickstart/ (override with --workdir=DIR).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" experiments/train.py \
  --config=configs/quickstart.py --workdir=runs/quickstart "$@"
