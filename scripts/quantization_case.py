"""A Keras Applications model trained for several epochs, through diagnosis and repair (issue 27).

MobileNetV2 (alpha 0.35, ``weights=None``, 32x32 RGB) is trained from scratch on a folder of
Fashion-MNIST garments written as PNGs (``train/`` and ``val/`` from Fashion-MNIST's training
images, ``test/`` from its test images), saved as ``.keras``, then taken through the user's
commands in fresh interpreters:

    edgekit export --model M --data D --input-range -1-1 --output-dir R --no-explanations
    edgekit verify R --data D
    edgekit verify R --data D --layers
    edgekit export ... --keep-float auto --output-dir R2
    edgekit verify R2 --data D
    edgekit export ... --keep-float A --keep-float B --output-dir R3   # verify's two worst
    edgekit verify R3 --data D                                          # int8 TFLite layers

About 11 minutes on 2 busy cores (training 20 epochs: about 2). It prints the numbers
docs/quantization.md shows and writes them as JSON:

    .venv/bin/python scripts/quantization_case.py --work /tmp/qcase_mnv2 \\
        --output docs/quantization_case.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
QUANTISED = ("model_int8.tflite", "model_int8.onnx", "model_dynamic.tflite")
CLASSES = {"T-shirt": 0, "Trouser": 1, "Pullover": 2, "Sneaker": 7, "Bag": 8}
INPUT_RANGE = "-1-1"  # MobileNetV2's preprocess_input


def edgekit(*arguments: str) -> subprocess.CompletedProcess[str]:
    started = time.perf_counter()
    answer = subprocess.run([sys.executable, "-m", "edgekit.cli", *arguments],
                            capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    print(f"$ edgekit {' '.join(arguments)}  # exit {answer.returncode}, "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    print((answer.stdout + answer.stderr).strip()[-4000:], flush=True)
    return answer


def write_folder(root: Path, train: int, validation: int, test: int) -> Path:
    """train/ and val/ from Fashion-MNIST's training images, test/ from its test images."""
    from PIL import Image

    from edgekit.device import datasets

    fashion = datasets.load()
    plan = {"train": (fashion.train, 0, train), "val": (fashion.train, train, validation),
            "test": (fashion.test, 0, test)}
    for split, (source, start, count) in plan.items():
        for name, label in CLASSES.items():
            chosen = np.flatnonzero(source.labels == label)[start:start + count]
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for number, index in enumerate(chosen):
                grey = Image.fromarray(source.images[index, :, :, 0]).resize((32, 32))
                grey.convert("RGB").save(folder / f"{number:04d}.png")
    return root


def train(data: Path, path: Path, epochs: int, momentum: float) -> dict[str, Any]:
    import keras

    from edgekit.device import datasets
    from edgekit.workstation import preprocessing

    prepared = datasets.open_dataset(data, size=(32, 32))
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(32, 32, 3),
                                           classes=len(CLASSES))
    # Keras' MobileNetV2 uses BatchNormalization(momentum=0.999): after a few hundred steps its
    # moving statistics are still near their initial values and the model in inference mode
    # answers one class (measured: validation accuracy 20 % after 8 epochs at 94 % training
    # accuracy; ``--bn-momentum 0.999`` reruns that). 0.9 lets them follow in this short training.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    assert prepared.validation is not None
    started = time.perf_counter()
    history = model.fit(
        preprocessing.reference_preprocess(prepared.train.images, INPUT_RANGE),
        prepared.train.labels, batch_size=32, epochs=epochs, verbose=2,
        validation_data=(preprocessing.reference_preprocess(prepared.validation.images,
                                                            INPUT_RANGE),
                         prepared.validation.labels))
    seconds = time.perf_counter() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return {"epochs": epochs, "batch_norm_momentum": momentum, "train_seconds": round(seconds, 1),
            "train_images": len(prepared.train.labels),
            "validation_images": len(prepared.validation.labels),
            "test_images": len(prepared.test.labels),
            "parameters": int(model.count_params()),
            "validation_accuracy": [round(float(v), 4) for v in history.history["val_accuracy"]]}


def parity(release: Path) -> dict[str, Any]:
    """Per quantised artifact of a verified release: agreement, interval, pass, flips, export."""
    manifest = {entry["file"]: entry
                for entry in json.loads((release / "manifest.json").read_text())["artifacts"]}
    report = json.loads((release / "reports" / "parity.json").read_text())
    result: dict[str, Any] = {"measured_on": report["measured_on"]}
    for artifact in report["artifacts"]:
        if artifact["file"] not in QUANTISED:
            continue
        measures = artifact["measures"]
        agreement = next(check for check in artifact["checks"]
                         if check["measure"] == "agreement_percent")
        export = manifest[artifact["file"]].get("export") or {}
        result[artifact["file"]] = {
            "passed": artifact["passed"], "bytes": manifest[artifact["file"]]["bytes"],
            "images": measures["images"], "agreement_percent": agreement["value"],
            "interval": agreement["interval"], "bar": agreement["bar"],
            "accuracy": measures["accuracy"], "reference_accuracy": measures["reference_accuracy"],
            "near_tie_flips": measures["near_tie_flips"],
            "confident_flips": measures["confident_flips"],
            "keep_float": export.get("keep_float"),
            "int8_macs_share": export.get("int8_macs_share"),
            "keep_float_search": export.get("keep_float_search")}
    return result


def layers(release: Path, top: int = 5) -> dict[str, Any]:
    """The ``top`` worst layers of ``verify --layers`` per quantised artifact."""
    report = json.loads((release / "reports" / "layers.json").read_text())
    keys = ("layer", "group", "score", "introduced_nsr", "sqnr_db", "worst_channel_sqnr_db",
            "local_worst_channel_sqnr_db")
    return {artifact["file"]: [{key: row.get(key) for key in keys}
                               for row in artifact["ranked"][:top]]
            for artifact in report["artifacts"]}


def summary(record: dict[str, Any]) -> str:
    """The lines the doc's table is made from."""
    lines = []
    for stage in ("plain", "auto", "keep"):
        for name, entry in (record.get(stage) or {}).items():
            if name == "measured_on":
                continue
            low, high = entry["interval"] or (None, None)
            lines.append(
                f"{stage:5} {name:21} agreement {entry['agreement_percent']:.2f} % "
                f"({low:.1f}-{high:.1f}, bar {entry['bar']}) passed={entry['passed']} "
                f"near-tie flips {entry['near_tie_flips']} confident {entry['confident_flips']} "
                f"accuracy {entry['accuracy']:.4f} (Keras {entry['reference_accuracy']:.4f}) "
                f"bytes {entry['bytes']:,} keep_float={entry['keep_float']} "
                f"int8 MACs {entry['int8_macs_share']}")
    search: dict[str, Any] = (((record.get("auto") or {}).get("model_int8.tflite") or {})
                              .get("keep_float_search") or {})
    for number, found in enumerate(search.get("steps", [])):
        measured = "; ".join(
            f"{name} {entry['agreement_percent']:.2f} % ({entry['interval'][0]:.1f}-"
            f"{entry['interval'][1]:.1f}) flips {entry['near_tie_flips']}+"
            f"{entry['confident_flips']}" for name, entry in found["artifacts"].items())
        lines.append(f"auto step {number} keep {found['keep_float'] or 'nothing'} on "
                     f"{search['images']} {search['split']} images: {measured} "
                     f"passed={found['passed']}")
    for name, rows in (record.get("layers") or {}).items():
        worst = ", ".join(f"{row['layer']} ({row['score']:.3g})" for row in rows)
        lines.append(f"layers {name}: {worst}")
    return "\n".join(lines)


def worst_layers(release: Path, artifact: str = "model_int8.tflite", count: int = 2) -> list[str]:
    """The ``count`` worst layers ``verify --layers`` names for one artifact."""
    report = json.loads((release / "reports" / "layers.json").read_text())
    ranked = next(entry for entry in report["artifacts"] if entry["file"] == artifact)["ranked"]
    return [row["layer"] for row in ranked[:count]]


def measure(work: Path, data: Path, model: Path) -> dict[str, int]:
    """The user's commands (plain, diagnosis, auto repair, the two worst layers kept by hand)."""
    common = ["--model", str(model), "--data", str(data), "--input-range", INPUT_RANGE,
              "--no-explanations"]
    exits: dict[str, int] = {}

    def step(name: str, *arguments: str) -> int:
        answer = edgekit(*arguments)
        exits[name] = answer.returncode
        (work / f"{name}.log").write_text(answer.stdout + answer.stderr)
        return answer.returncode

    if step("export", "export", *common, "--output-dir", str(work / "release")) != 0:
        return exits
    step("verify", "verify", str(work / "release"), "--data", str(data))
    if step("layers", "verify", str(work / "release"), "--data", str(data), "--layers") != 0:
        return exits
    if step("export_auto", "export", *common, "--keep-float", "auto",
            "--output-dir", str(work / "release_auto")) == 0:
        step("verify_auto", "verify", str(work / "release_auto"), "--data", str(data))
    kept = [argument for layer in worst_layers(work / "release")
            for argument in ("--keep-float", layer)]
    if step("export_keep", "export", *common, *kept,
            "--output-dir", str(work / "release_keep")) == 0:
        step("verify_keep", "verify", str(work / "release_keep"), "--data", str(data))
    return exits


def collect(work: Path) -> dict[str, Any]:
    """The record, from the folders a run left in ``work``."""
    record: dict[str, Any] = json.loads((work / "run.json").read_text())
    record["plain"] = parity(work / "release")
    record["layers"] = layers(work / "release")
    for stage in ("auto", "keep"):
        if record["exit"].get(f"verify_{stage}") is not None:
            record[stage] = parity(work / f"release_{stage}")
        elif (work / f"export_{stage}.log").exists():
            record[f"{stage}_output"] = (work / f"export_{stage}.log").read_text().strip()[-2000:]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/qcase_mnv2"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--bn-momentum", type=float, default=0.9,
                        help="BatchNormalization momentum while training (Keras' own: 0.999)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--collect-only", action="store_true",
                        help="only read the numbers a finished run left in WORK")
    arguments = parser.parse_args()
    work: Path = arguments.work
    data, model = work / "data", work / "mobilenet_v2.keras"
    if not arguments.collect_only:
        write_folder(data, arguments.train_per_class, arguments.val_per_class,
                     arguments.test_per_class)
        run: dict[str, Any] = {"training": train(data, model, arguments.epochs, arguments.bn_momentum)}
        print(json.dumps(run["training"]), flush=True)
        (work / "run.json").write_text(json.dumps(run))
        run["exit"] = measure(work, data, model)
        (work / "run.json").write_text(json.dumps(run))
    record = collect(work)
    print(summary(record))
    if arguments.output:
        arguments.output.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
