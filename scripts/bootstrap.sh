#!/usr/bin/env bash
# Sets up the project environment for a fresh machine, reusing what can be reused safely.
#
# Two layers:
#   1. a dependency environment, keyed by a hash of the declared dependencies, the pinned torch build
#      and the Python version, kept under ${SURVIVAL_MODEL_ENV_CACHE:-~/.cache/survival-model}.
#      It is built once (torch's CUDA build is several GB and takes minutes) and shared by every
#      checkout and CI run whose dependency declarations are identical. A build that did not finish
#      has no `.complete` marker and is rebuilt from scratch; builds are serialised by a lock.
#   2. `.venv` in the checkout: a small virtual environment that sees the dependency environment
#      through a .pth file and holds this checkout's editable install (and the `survival-model` command).
#
# Usage: scripts/bootstrap.sh            (prints the path of the project's Python when done)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}
torch_pins="torch==2.14.1 torchvision==0.29.1"
bootstrap_version=1

"$py" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)' || {
  echo "bootstrap: Python 3.11 or 3.12 is required (found $("$py" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
}

# The key: dependency declarations only (not the rest of pyproject.toml), so editing code or tool
# settings never forces a multi-minute rebuild.
key=$("$py" - "$root/pyproject.toml" "$torch_pins" "$bootstrap_version" <<'PY'
import hashlib, json, sys, tomllib
with open(sys.argv[1], "rb") as fh:
    project = tomllib.load(fh)["project"]
payload = {
    "deps": sorted(project.get("dependencies", [])),
    "optional": {k: sorted(v) for k, v in sorted(project.get("optional-dependencies", {}).items())},
    "torch": sys.argv[2],
    "bootstrap": sys.argv[3],
    "python": sys.version.split()[0],
}
print(hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16])
PY
)

cache=${SURVIVAL_MODEL_ENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/survival-model}
deps="$cache/deps-$key"
mkdir -p "$cache"

build_deps() {
  echo "bootstrap: building the dependency environment $deps (first time only; several minutes)" >&2
  rm -rf "$deps"
  "$py" -m venv "$deps"
  local pip=("$deps/bin/python" -m pip --disable-pip-version-check)
  "${pip[@]}" install --upgrade --quiet pip setuptools wheel >&2
  # torch first, pinned: an unpinned resolution would fetch the newest CUDA build from the index.
  # shellcheck disable=SC2086
  "${pip[@]}" install --quiet $torch_pins >&2
  local reqs
  reqs=$("$py" - "$root/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as fh:
    project = tomllib.load(fh)["project"]
reqs = list(project["dependencies"])
for extra in project.get("optional-dependencies", {}).values():
    reqs.extend(extra)
print("\n".join(reqs))
PY
)
  local reqfile
  reqfile=$(mktemp)
  printf '%s\n' "$reqs" > "$reqfile"
  "${pip[@]}" install --quiet -r "$reqfile" $torch_pins >&2
  rm -f "$reqfile"
  "$deps/bin/python" -c 'import torch, torchvision, timm, SimpleITK, radiomics, prefect, mlflow, pandas, pyarrow, sklearn' >&2
  touch "$deps/.complete"
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
