#!/usr/bin/env bash
# Re-resolves requirements/lock.txt, the exact versions every environment installs (scripts/bootstrap.sh,
# infra/docker), from pyproject.toml's dependencies and all its extras, for Python 3.11 on x86_64 Linux.
# Run it after editing the dependencies in pyproject.toml, and commit the lock. Needs `uv` (from PyPI:
# `pip install uv`); pass UV=/path/to/uv to use another.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
uv=${UV:-uv}
"$uv" pip compile pyproject.toml --all-extras --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --constraint requirements/constraints.txt --no-header --annotation-style line -o requirements/lock.txt
