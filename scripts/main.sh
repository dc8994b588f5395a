#!/usr/bin/env bash
# README command 1: set up, then train -> evaluate -> export -> verify -> benchmark,
# regenerating everything in exported/. Fails if any step fails, parity included.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
VENV="${EDGEKIT_VENV:-$ROOT/.venv}"
cd "$ROOT"
EDGEKIT="$VENV/bin/edgekit"
OUT="${EDGEKIT_EXPORT_DIR:-exported}"
START=$(date +%s)
step() { printf '\n== %s\n' "$*"; }

step "dataset";   "$EDGEKIT" data
step "train";     "$EDGEKIT" train --output-dir "$OUT" "$@"
step "evaluate";  "$EDGEKIT" evaluate --model "$OUT/model.keras" --output-dir "$OUT/reports"
step "export";    "$EDGEKIT" export --model "$OUT/model.keras" --format all --output-dir "$OUT"
step "verify";    "$EDGEKIT" verify "$OUT"
if "$EDGEKIT" benchmark --help > /dev/null 2>&1; then
    step "benchmark"; "$EDGEKIT" benchmark "$OUT"
fi

END=$(date +%s)
"$VENV/bin/python" - "$OUT" "$START" "$END" <<'PY'
import json, os, platform, sys
folder, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
record = {"command": "scripts/main.sh", "wall_seconds": end - start, "cpus": os.cpu_count(),
          "machine": platform.machine(), "python": platform.python_version()}
path = os.path.join(folder, "reports", "main_run.json")
with open(path + ".tmp", "w") as stream:
    json.dump(record, stream, indent=2)
os.replace(path + ".tmp", path)
print(f"\nmain run: {end - start} s wall on {os.cpu_count()} CPUs (recorded in {path})")
PY
if [ "$OUT" = "exported" ]; then "$VENV/bin/python" "$ROOT/scripts/update_readme.py" "$OUT"; fi
echo "Next: scripts/test.sh, or edgekit predict IMAGE --model $OUT/model_int8.tflite"
