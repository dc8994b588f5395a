#!/bin/sh
# Run a command as N workers of a multi-worker cluster on this machine (localhost ports),
# each with its TF_CONFIG; logs prefixed [worker i]; Ctrl-C or one failure stops them all.
#   scripts/local_cluster.sh 2 -- edgekit train --strategy multi-worker --limit 2000 --epochs 2
# `edgekit train --local-workers N ...` does the same for edgekit train.
# See docs/distributed.md.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
if [ -x "$here/.venv/bin/python" ] && [ -z "${PYTHON:-}" ]; then python="$here/.venv/bin/python"; fi
exec "$python" -m edgekit.workstation.local_cluster "$@"
