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

It prints the numbers docs/quantization.md shows and writes them as JSON:

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


def train(data: Path, path: Path, epochs: int) -> dict[str, Any]:
    import keras

    from edgekit.device import datasets
    from edgekit.workstation import preprocessing

    prepared = datasets.open_dataset(data, size=(32, 32))
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(32, 32, 3),
                                           classes=len(CLASSES))
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
    return {"epochs": epochs, "train_seconds": round(seconds, 1),
            "train_images": len(prepared.train.labels),
            "validation_images": len(prepared.validation.labels),
            "test_images": len(prepared.test.labels),
            "parameters": int(model.count_params()),
            "validation_accuracy": [round(float(v), 4) for v in history.history["val_accuracy"]]}


def parity(release: Path) -> dict[str, Any]:
    """Per quantised artifact: agreement, interval, pass, flips, from the manifest and report."""
    manifest = json.loads((release / "manifest.json").read_text())
    report = json.loads((release / "reports" / "parity.json").read_text())
    result: dict[str, Any] = {}
    for entry in manifest["artifacts"]:
        if entry["file"] not in QUANTISED:
            continue
        metrics = entry.get("metrics") or {}
        export = entry.get("export") or {}
        result[entry["file"]] = {
            "bytes": entry["bytes"], "metrics": metrics,
            "keep_float": export.get("keep_float"),
            "int8_macs_share": export.get("int8_macs_share"),
            "keep_float_search": export.get("keep_float_search"),
            "report": find(report, entry["file"])}
    return result


def find(report: Any, name: str) -> Any:
    """The part of a parity report that concerns one artifact file (its layout, whatever it is)."""
    if isinstance(report, dict):
        for key, value in report.items():
            if key == name or (isinstance(value, dict) and value.get("file") == name):
                return value
        for value in report.values():
            found = find(value, name)
            if found is not None:
                return found
    if isinstance(report, list):
        for value in report:
            found = find(value, name)
            if found is not None:
                return found
    return None


def layers(release: Path, top: int = 5) -> dict[str, Any]:
    path = release / "reports" / "layers.json"
    if not path.exists():
        return {}
    report = json.loads(path.read_text())
    return {"raw_top": json.dumps(report)[:200], "report": report, "top": top}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/qcase_mnv2"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--skip-training", action="store_true",
                        help="reuse WORK/mobilenet_v2.keras and WORK/data")
    arguments = parser.parse_args()
    work: Path = arguments.work
    data, model = work / "data", work / "mobilenet_v2.keras"
    record: dict[str, Any] = {}
    if not arguments.skip_training:
        write_folder(data, arguments.train_per_class, arguments.val_per_class,
                     arguments.test_per_class)
        record["training"] = train(data, model, arguments.epochs)
        print(json.dumps(record["training"]), flush=True)
    plain, repaired = work / "release", work / "release_auto"
    common = ["--model", str(model), "--data", str(data), "--input-range", INPUT_RANGE,
              "--no-explanations"]
    steps: dict[str, subprocess.CompletedProcess[str]] = {}
    steps["export"] = edgekit("export", *common, "--output-dir", str(plain))
    steps["verify"] = edgekit("verify", str(plain), "--data", str(data))
    record["plain"] = parity(plain)
    steps["layers"] = edgekit("verify", str(plain), "--data", str(data), "--layers")
    record["layers"] = layers(plain)
    steps["export_auto"] = edgekit("export", *common, "--keep-float", "auto",
                                   "--output-dir", str(repaired))
    if steps["export_auto"].returncode == 0:
        steps["verify_auto"] = edgekit("verify", str(repaired), "--data", str(data))
        record["auto"] = parity(repaired)
    record["exit"] = {name: answer.returncode for name, answer in steps.items()}
    record["output"] = {name: (answer.stdout + answer.stderr).strip()[-3000:]
                        for name, answer in steps.items()}
    if arguments.output:
        arguments.output.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
