#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv.
#   scripts/setup_env.sh        runtime: the core package and its command line
#   scripts/setup_env.sh dev    also the Training package and everything the tests need
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
requirements=requirements.txt
[ "${1:-}" = "dev" ] && requirements=requirements-dev.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
if [ "${1:-}" = "dev" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e Training
fi
