#!/usr/bin/env bash
# The tests on a fresh machine: set up the environment (first time only), lint, type-check, test.
# Extra arguments go to pytest. pytest's exit code 5 (no tests collected) fails this script.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/bootstrap.sh" >/dev/null
cd "$root"
py="$root/.venv/bin/python"
echo "== ruff" && "$py" -m ruff check .
echo "== mypy" && "$py" -m mypy
echo "== pytest" && "$py" -m pytest "$@"
