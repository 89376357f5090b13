#!/usr/bin/env bash
# Set up the development environment and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
export QT_QPA_PLATFORM=offscreen
exec .venv/bin/python -m pytest "$@"
