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
# import-linter's contracts (pyproject.toml, [tool.importlinter]); its console script lives in the shared
# dependency environment, so it is called through the project's Python
echo "== import layers" && "$py" -c 'from importlinter.cli import lint_imports_command; lint_imports_command()' --no-cache
echo "== pytest" && "$py" -m pytest --durations=25 "$@"
