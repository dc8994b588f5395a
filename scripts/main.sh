#!/usr/bin/env bash
# README command 1: set up, then train -> evaluate -> export -> verify -> benchmark,
# regenerating everything in exported/. Fails if any step fails, parity included.
# The released model is the compact edge network (`edgekit train --arch edge`, its recipe in
# edgekit.workstation.config.RECIPES); the reference CNN is released beside it in
# exported/reference/ and measured against it in the same benchmark run.
# Extra arguments go to `edgekit train` (e.g. scripts/main.sh --epochs 5), which trains in
# runs/main (EDGEKIT_RUN_DIR); the finished run's model and records are copied into exported/.
# EDGEKIT_FROM_RUN=DIR releases a model that `edgekit train --arch edge --output-dir DIR`
# already trained (its model, training record and history are copied; every later step runs).
# EDGEKIT_REFERENCE=train also retrains the reference CNN (about 25 min more) into
# runs/reference and releases it into exported/reference (scripts/release_reference.sh);
# otherwise exported/reference is the committed reference release, kept as it is.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${EDGEKIT_VENV:-$ROOT/.venv}"
OUT="${EDGEKIT_EXPORT_DIR:-exported}"
TIMES="$(mktemp)"
trap 'rm -f "$TIMES"' EXIT

step() {  # step NAME COMMAND...: run it, print a header, record its wall time
    local name="$1"; shift
    printf '\n== %s\n' "$name"
    local started; started=$(date +%s)
    "$@"
    echo "$name $(( $(date +%s) - started ))" >> "$TIMES"
}

EDGEKIT="$VENV/bin/edgekit"
step setup     "$ROOT/scripts/setup.sh"
step data      "$EDGEKIT" data
adopt_run() {  # adopt_run DIR: take a finished `edgekit train` run instead of training again
    local run="$1" file
    for file in model.keras train_config.json history.json; do
        [ -f "$run/$file" ] || { echo "Error: $run/$file is missing; is $run a finished edgekit train run?" >&2; exit 1; }
    done
    for file in model.keras train_config.json history.json dataset.json; do
        [ -f "$run/$file" ] || continue  # dataset.json: the data and split, from newer runs
        cp "$run/$file" "$OUT/$file.tmp" && mv "$OUT/$file.tmp" "$OUT/$file"
    done
    echo "Adopted the run in $run (trained in $("$VENV/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["train_seconds"])' "$run/train_config.json") s)"
}
mkdir -p "$OUT/reports"
if [ -n "${EDGEKIT_FROM_RUN:-}" ]; then
    step train adopt_run "$EDGEKIT_FROM_RUN"
else
    # Trained in a run folder (checkpoints, averaged weights), then adopted: exported/ keeps
    # one Keras model. `scripts/main.sh --resume` continues an interrupted run there.
    RUN="${EDGEKIT_RUN_DIR:-runs/main}"
    train_and_adopt() { "$EDGEKIT" train --arch edge --output-dir "$RUN" "$@" && adopt_run "$RUN"; }
    step train train_and_adopt "$@"
fi
if [ "${EDGEKIT_REFERENCE:-}" = "train" ]; then
    step reference "$EDGEKIT" train --arch reference --output-dir runs/reference
    step reference-release "$ROOT/scripts/release_reference.sh" runs/reference
fi
step evaluate  "$EDGEKIT" evaluate --model "$OUT/model.keras" --output-dir "$OUT/reports"
step export    "$EDGEKIT" export --model "$OUT/model.keras" --format all --output-dir "$OUT"
step verify    "$EDGEKIT" verify "$OUT" --explanations   # parity, then explanation parity
step layers    "$EDGEKIT" verify "$OUT" --layers         # where the quantised files' error comes from
COMPARE=()  # the reference CNN's release, measured in the same benchmark run
if [ -f "$OUT/reference/manifest.json" ]; then COMPARE=(--compare "$OUT/reference"); fi
step benchmark "$EDGEKIT" benchmark "$OUT" --training --sweep "${COMPARE[@]}"
if "$VENV/bin/python" -c "import fastapi, uvicorn" 2> /dev/null; then  # the serve extra
    step serve "$EDGEKIT" serve --model "$OUT/model_int8.tflite" --benchmark
fi

"$VENV/bin/python" - "$OUT" "$TIMES" <<'PY'
import json, os, platform, sys
folder, times = sys.argv[1], sys.argv[2]
steps = {name: round(float(seconds), 1) for name, seconds in
         (line.split() for line in open(times) if line.strip())}
record = {"command": "scripts/main.sh", "steps_seconds": steps,
          "wall_seconds": round(sum(steps.values()), 1), "cpus": os.cpu_count(),
          "machine": platform.machine(), "python": platform.python_version()}
if os.environ.get("EDGEKIT_FROM_RUN"):  # the train step only copied a finished run
    with open(os.path.join(folder, "train_config.json")) as stream:
        record["adopted_run"] = {"folder": os.environ["EDGEKIT_FROM_RUN"],
                                 "train_seconds": json.load(stream)["train_seconds"]}
path = os.path.join(folder, "reports", "main_run.json")
with open(path + ".tmp", "w") as stream:
    json.dump(record, stream, indent=2)
os.replace(path + ".tmp", path)
print(f"\nmain run: {record['wall_seconds']} s wall on {os.cpu_count()} CPUs: {steps}")
PY
if [ "$OUT" = "exported" ]; then "$VENV/bin/python" "$ROOT/scripts/update_readme.py" "$OUT"; fi
echo "Next: scripts/test.sh, or $EDGEKIT predict IMAGE --model $OUT/model_int8.tflite"
