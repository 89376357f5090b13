#!/usr/bin/env bash
# Set up the development environment and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
# pydicom 2.4.4, as Slicer 5.8 and 5.10 bundle it, beside the venv's: Testing/test_dicomio.py reads DICOM with it too.
[ -d .venv/pydicom-2.4 ] || .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
  --target .venv/pydicom-2.4 pydicom==2.4.4
export QT_QPA_PLATFORM=offscreen
exec .venv/bin/python -m pytest "$@"
