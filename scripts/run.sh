#!/usr/bin/env bash
# The main job on a fresh machine: set up the environment (first time only), make the default
# synthetic cohort if it is missing, run the pipeline flow, print where the results are.
# Extra arguments go to `survival-model run` (e.g. --params other.yaml --set key=value).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/bootstrap.sh" >/dev/null
cd "$root"
exec "$root/.venv/bin/survival-model" run "$@"
