#!/usr/bin/env bash
# Write a new git repository whose only commit holds this repository's HEAD, to publish in the
# Slicer Extensions Index: the Index clones the whole history and counts it against its 100 MB
# limit, and this repository's history holds several versions of the model weights.
#   scripts/release_snapshot.sh TARGET_DIR
# The commit keeps HEAD's author and dates, so the same HEAD always gives the same commit id.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: scripts/release_snapshot.sh TARGET_DIR" >&2; exit 2; }
case "$1" in
  /*) target=$1 ;;
  *) target=$PWD/$1 ;;
esac
if [ -e "$target" ]; then
  echo "error: $target already exists; give a folder that does not exist yet" >&2
  exit 2
fi
cd "$(git -C "$(dirname -- "$0")" rev-parse --show-toplevel)"
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "warning: uncommitted changes are not in the snapshot; it holds HEAD only" >&2
fi
revision=$(git rev-parse HEAD)
export GIT_AUTHOR_NAME GIT_AUTHOR_EMAIL GIT_AUTHOR_DATE GIT_COMMITTER_NAME GIT_COMMITTER_EMAIL GIT_COMMITTER_DATE
GIT_AUTHOR_NAME=$(git log -1 --format=%an) GIT_AUTHOR_EMAIL=$(git log -1 --format=%ae)
GIT_AUTHOR_DATE=$(git log -1 --format=%aI) GIT_COMMITTER_DATE=$(git log -1 --format=%cI)
GIT_COMMITTER_NAME=$GIT_AUTHOR_NAME GIT_COMMITTER_EMAIL=$GIT_AUTHOR_EMAIL

mkdir -p "$target"
trap 'rm -rf -- "$target"' ERR  # a failed run leaves nothing behind to block the next one
git archive --format=tar HEAD | tar -x -C "$target"
git -C "$target" init --quiet
git -C "$target" symbolic-ref HEAD refs/heads/main
git -C "$target" add --all --force  # tracked files that match .gitignore are still HEAD's files
git -C "$target" -c commit.gpgsign=false commit --quiet --no-verify --message "SlicerBreastUS release of commit $revision"
trap - ERR
bytes=$(find "$target" -type f -exec cat {} + | wc -c)
echo "wrote $target: one commit of $revision, $(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }') MiB with its .git"
