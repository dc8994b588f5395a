#!/usr/bin/env bash
# Release the reference CNN beside the edge model: evaluate -> export -> verify a finished
# `edgekit train --arch reference` run into exported/reference/ (the folder that
# `edgekit benchmark exported --compare exported/reference` measures against).
#   scripts/release_reference.sh RUN_DIR     RUN_DIR holds model.keras, train_config.json,
#                                            history.json (and dataset.json)
# `EDGEKIT_REFERENCE=train scripts/main.sh` trains the reference again (about 25 min) and calls
# this. exported/ keeps one Keras model, the released one: the reference's model.keras is
# measured (its test-set outputs are stored in reference.npz, its sha256 in the manifest) and
# then left in RUN_DIR, not copied into exported/reference/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${EDGEKIT_VENV:-$ROOT/.venv}"
EDGEKIT="$VENV/bin/edgekit"
RUN="${1:?usage: scripts/release_reference.sh RUN_DIR (a finished edgekit train --arch reference run)}"
OUT="${EDGEKIT_EXPORT_DIR:-exported}/reference"

for file in model.keras train_config.json history.json; do
    [ -f "$RUN/$file" ] || { echo "Error: $RUN/$file is missing; is $RUN a finished edgekit train run?" >&2; exit 1; }
done
STAGE="$(mktemp -d "${OUT%/*}/.reference.XXXXXX")"  # built aside, then moved into place
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/reports"
for file in train_config.json history.json dataset.json; do
    [ -f "$RUN/$file" ] && cp "$RUN/$file" "$STAGE/$file"
done
"$EDGEKIT" evaluate --model "$RUN/model.keras" --output-dir "$STAGE/reports"
"$EDGEKIT" export --model "$RUN/model.keras" --format all --output-dir "$STAGE"
"$EDGEKIT" verify "$STAGE"
rm -f "$STAGE/model.keras"
rm -rf "$OUT"
mv "$STAGE" "$OUT"
trap - EXIT
echo "released the reference CNN of $RUN in $OUT"
