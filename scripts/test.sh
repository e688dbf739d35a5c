#!/usr/bin/env bash
# The tests on a fresh machine: set up the environment (first time only), lint, type-check, test.
# Extra arguments go to pytest. pytest's exit code 5 (no tests collected) fails this script.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# System packages the tests start or call for real: PostgreSQL's server (tests/production) and docker-compose
# (tests/test_infra.py validates infra/docker/docker-compose.yml with it). Installed from Debian when missing.
need=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null || need+=(postgresql)
command -v docker-compose >/dev/null || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing ${need[*]} (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "== missing system packages: ${need[*]} (install them: the tests that need them fail without)" >&2
  fi
fi
"$root/scripts/bootstrap.sh" >/dev/null
cd "$root"
py="$root/.venv/bin/python"
echo "== ruff" && "$py" -m ruff check .
echo "== mypy" && "$py" -m mypy
# import-linter's contracts (pyproject.toml, [tool.importlinter]); its console script lives in the shared
# dependency environment, so it is called through the project's Python
echo "== import layers" && "$py" -c 'from importlinter.cli import lint_imports_command; lint_imports_command()' --no-cache
echo "== pytest" && "$py" -m pytest --durations=25 "$@"
