#!/usr/bin/env bash
# Set up the runtime environment and segment the bundled sample frames.
# Results (mask, probability map, overlay figure per frame) go to output/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
samples=BreastUSSegment/Resources/Samples
.venv/bin/breastus-segment "$samples/breastus_sample_benign.png" "$samples/breastus_sample_malignant.png" \
  --output output/demo --overwrite "$@"
echo "Outputs written to $(pwd)/output/demo"
