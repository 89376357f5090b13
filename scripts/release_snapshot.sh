#!/usr/bin/env bash
# Write a new git repository whose only commit holds this repository's HEAD, to publish in the
# Slicer Extensions Index: the Index clones the whole history and counts it against its 100 MB
# limit, and this repository's history holds several versions of the model weights.
#   scripts/release_snapshot.sh TARGET_DIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: scripts/release_snapshot.sh TARGET_DIR" >&2; exit 2; }
target=$(realpath -m "$1")
if [ -e "$target" ]; then
  echo "error: $target already exists; give a folder that does not exist yet" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
revision=$(git rev-parse HEAD)
author_name=$(git log -1 --format=%an)
author_email=$(git log -1 --format=%ae)
mkdir -p "$target"
git archive --format=tar HEAD | tar -x -C "$target"
git -C "$target" init --quiet --initial-branch=main
git -C "$target" add --all
git -C "$target" -c user.name="$author_name" -c user.email="$author_email" \
  commit --quiet --message "SlicerBreastUS release of commit $revision"
bytes=$(find "$target" -type f -printf '%s\n' | awk '{ total += $1 } END { print total + 0 }')
echo "wrote $target: one commit of $revision, $(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }') MiB with its .git"
