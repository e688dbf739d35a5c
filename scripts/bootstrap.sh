#!/usr/bin/env bash
# Sets up the project environment for a fresh machine, reusing what can be reused safely.
#
# Two layers:
#   1. a dependency environment holding exactly the versions in requirements/lock.txt (re-resolved by
#      scripts/lock.sh from pyproject.toml), keyed by a hash of the lock and the Python version, kept under
#      ${SURVIVAL_MODEL_ENV_CACHE:-~/.cache/survival-model}. It is built once (torch's CUDA build is several GB
#      and takes minutes) and shared by every checkout and CI run with the same lock. A build that did not
#      finish has no `.complete` marker and is rebuilt from scratch; builds are serialised by a lock.
#   2. `.venv` in the checkout: a small virtual environment that sees the dependency environment
#      through a .pth file and holds this checkout's editable install (and the `survival-model` command).
#
# Usage: scripts/bootstrap.sh            (prints the path of the project's Python when done)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}
lock="$root/requirements/lock.txt"
bootstrap_version=2

"$py" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)' || {
  echo "bootstrap: Python 3.11 or 3.12 is required (found $("$py" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
}
[ -f "$lock" ] || { echo "bootstrap: $lock is missing (make it with scripts/lock.sh)" >&2; exit 2; }

# The key: the resolved versions (the lock's pins, not its comments), not the declarations, so the same lock always means the same
# environment; editing code or tool settings never forces a multi-minute rebuild.
key=$(grep -E '^[A-Za-z0-9]' "$lock" | sed 's/ *#.*//' | cat - <(echo "bootstrap $bootstrap_version") <("$py" -c 'import sys; print(sys.version.split()[0])') |
  "$py" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')

cache=${SURVIVAL_MODEL_ENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/survival-model}
deps="$cache/deps-$key"
mkdir -p "$cache"

step() { echo "bootstrap: [$(date +%H:%M:%S)] $*" >&2; }

build_deps() {
  step "building the dependency environment $deps from requirements/lock.txt (first time only; several minutes)"
  rm -rf "$deps"
  "$py" -m venv "$deps"
  local pip=("$deps/bin/python" -m pip --disable-pip-version-check)
  step "1/3 pip, setuptools and wheel"
  "${pip[@]}" install --upgrade --quiet pip setuptools wheel >&2
  # torch first: the largest download (a CUDA build, several GB), so it gets its own step and progress bar.
  step "2/3 $(grep -E '^torch(vision)?==' "$lock" | cut -d' ' -f1 | tr '\n' ' ')(several GB)"
  "${pip[@]}" install $(grep -E '^torch(vision)?==' "$lock" | cut -d' ' -f1) --no-deps >&2
  step "3/3 the $(grep -cE '^[A-Za-z0-9]' "$lock") locked packages"
  # one line per package as it is fetched; pip's whole output goes to the build log
  set +e +o pipefail
  "${pip[@]}" install --progress-bar off -r "$lock" 2>&1 | tee "$deps.build.log" |
    grep --line-buffered -E '^(Collecting|Installing collected|Successfully installed|ERROR)' >&2
  local pip_status=${PIPESTATUS[0]}
  set -e -o pipefail
  [ "$pip_status" = 0 ] || { step "pip failed; its whole output: $deps.build.log"; exit 1; }
  "${pip[@]}" check >&2 || step "warning: pip check reports conflicts (above)"
  "$deps/bin/python" -c 'import torch, torchvision, timm, SimpleITK, radiomics, prefect, mlflow, pandas, pyarrow, sklearn' >&2
  touch "$deps/.complete"
  step "dependency environment ready"
}

prune_old() {
  # Each dependency change builds a new multi-GB environment: keep the three most recently used.
  local old
  for old in $(ls -1dt "$cache"/deps-*/.last_used 2>/dev/null | tail -n +4); do
    old=$(dirname "$old")
    [ "$old" = "$deps" ] && continue
    (
      exec 8>"$old.lock"
      flock -n 8 || exit 0   # in use or being built: leave it
      echo "bootstrap: removing the unused dependency environment $old" >&2
      rm -rf "$old" "$old.lock"
    )
  done
}

if [ ! -f "$deps/.complete" ]; then
  exec 9>"$deps.lock"
  flock 9
  [ -f "$deps/.complete" ] || build_deps
  flock -u 9
  touch "$deps/.last_used"
  prune_old
fi
touch "$deps/.last_used"

venv="$root/.venv"
site_deps=$("$deps/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.deps" 2>/dev/null)" != "$deps" ]; then
  rm -rf "$venv"
  "$py" -m venv "$venv"
  site_venv=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # addsitedir (not a bare path) so the dependency environment's own .pth files are processed too.
  echo "import site; site.addsitedir('$site_deps')" > "$site_venv/_survival_model_deps.pth"
  echo "$deps" > "$venv/.deps"
fi
# The editable install only changes when the project metadata or its top-level packages do: skip
# pip (seconds) when neither has changed since the last install into this .venv.
stamp=$(cat "$root/pyproject.toml" <(cd "$root" && ls -1d -- */__init__.py 2>/dev/null) | "$py" -c \
  'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')
if [ "$(cat "$venv/.editable" 2>/dev/null)" != "$stamp" ] || [ ! -x "$venv/bin/survival-model" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$root" >&2
  echo "$stamp" > "$venv/.editable"
fi
echo "$venv/bin/python"
