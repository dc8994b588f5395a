"""Export and verify Keras Applications families on a small folder dataset (issue 26).

For each family: build the model with ``weights=None`` at a small input size, train it for a
few steps on Fashion-MNIST garments written as RGB PNG folders, save it as ``.keras`` (or
``.h5``), then run the user's commands in fresh interpreters: ``edgekit export`` (with the
family's preprocessing as ``--input-range``), ``edgekit verify`` and ``edgekit predict --json``
on every artifact. Records wall times, sizes and parity into a JSON file.

    .venv/bin/python scripts/architectures.py --families all --output docs/architectures.json

The slow test ``tests/test_architectures.py::test_every_family`` runs the same function.
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
ARTIFACTS = ("model_fp32.tflite", "model_fp16.tflite", "model_dynamic.tflite",
             "model_int8.tflite", "model_fp32.onnx", "model_int8.onnx")
FASHION_CLASSES = {"T-shirt": 0, "Trouser": 1, "Sneaker": 7}

# family -> (keras.applications constructor, --input-range its preprocess_input means)
FAMILIES: dict[str, tuple[str, str]] = {
    "mobilenet_v2": ("MobileNetV2", "-1-1"),
    "mobilenet_v3_small": ("MobileNetV3Small", "0-255"),
    "mobilenet_v3_large": ("MobileNetV3Large", "0-255"),
    "efficientnet_b0": ("EfficientNetB0", "0-255"),
    "efficientnet_v2_b0": ("EfficientNetV2B0", "0-255"),
    "resnet50": ("ResNet50", "caffe"),
    "resnet50_v2": ("ResNet50V2", "-1-1"),
    "densenet121": ("DenseNet121", "torch"),
    "vgg16": ("VGG16", "caffe"),
    "convnext_tiny": ("ConvNeXtTiny", "0-255"),
}


def edgekit(*arguments: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *arguments], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def garment_folder(root: Path, size: int, per_class: int = 40) -> Path:
    """Fashion-MNIST test garments of three classes as RGB PNGs of ``size`` pixels."""
    from PIL import Image

    from edgekit.device import datasets

    test = datasets.load_test()
    for name, label in FASHION_CLASSES.items():
        for number, index in enumerate(np.flatnonzero(test.labels == label)[:per_class]):
            path = root / name / f"{number:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            grey = Image.fromarray(test.images[index, :, :, 0]).resize((size, size))
            grey.convert("RGB").save(path)
    return root


def build(family: str, size: int, classes: int) -> Any:
    import keras

    constructor = getattr(keras.applications, FAMILIES[family][0])
    return constructor(input_shape=(size, size, 3), weights=None, classes=classes)


def keras_inputs(pixels: np.ndarray, input_range: str) -> np.ndarray:
    from edgekit.workstation import preprocessing

    return preprocessing.reference_preprocess(pixels, input_range)


def run_family(family: str, work: Path, size: int = 32, epochs: int = 3,
               model_format: str = "keras", explanations: bool = True) -> dict[str, Any]:
    """Build, briefly train, save, export, verify and predict one family; the record."""
    import keras

    from edgekit.device import datasets

    input_range = FAMILIES[family][1]
    data = garment_folder(work / "data", size)
    prepared = datasets.open_dataset(data, size=(size, size))
    keras.utils.set_random_seed(0)
    model = build(family, size, len(FASHION_CLASSES))
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    train = prepared.train
    model.fit(keras_inputs(train.images, input_range), train.labels, batch_size=16,
              epochs=epochs, verbose=0)
    path = work / "trained" / f"{family}.{model_format}"
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    record: dict[str, Any] = {"family": family, "input_size": size, "input_range": input_range,
                              "explanations": explanations,
                              "parameters": int(model.count_params()), "format": model_format}
    release = work / "release"
    started = time.perf_counter()
    exported = edgekit("export", "--model", str(path), "--data", str(data), "--input-range",
                       input_range, "--output-dir", str(release), "--calibration-size", "60",
                       *([] if explanations else ["--no-explanations"]))
    record["export_seconds"] = round(time.perf_counter() - started, 1)
    record["export_exit"] = exported.returncode
    record["export_output"] = (exported.stdout + exported.stderr)[-2000:]
    if exported.returncode != 0:
        return record
    started = time.perf_counter()
    verified = edgekit("verify", str(release), "--data", str(data))
    record["verify_seconds"] = round(time.perf_counter() - started, 1)
    record["verify_exit"] = verified.returncode
    manifest = json.loads((release / "manifest.json").read_text())
    record["artifacts"] = {entry["file"]: {
        "bytes": entry["bytes"],
        "agreement": (entry.get("metrics") or {}).get("agreement"),
        "accuracy": (entry.get("metrics") or {}).get("accuracy"),
        "passed": (entry.get("metrics") or {}).get("parity_passed"),
        "max_abs_diff": (entry.get("metrics") or {}).get("max_abs_diff"),
    } for entry in manifest["artifacts"]}
    # predict --json on each artifact, one test image; the fp32 TFLite top-1 must be Keras' own.
    image = data / manifest["dataset"]["files"]["test"][manifest["labels"][0]][0]
    from PIL import Image

    pixels = np.asarray(Image.open(image).convert("RGB").resize((size, size)), np.float32)[None]
    keras_top = manifest["labels"][int(np.argmax(model.predict(keras_inputs(pixels, input_range),
                                                               verbose=0)[0]))]
    record["keras_top1"] = keras_top
    record["predict"] = {}
    for artifact in ARTIFACTS:
        answer = edgekit("predict", "--json", str(image), "--model", str(release / artifact))
        label = json.loads(answer.stdout)["results"][0]["predictions"][0]["label"] \
            if answer.returncode == 0 else f"exit {answer.returncode}: {answer.stderr[-300:]}"
        record["predict"][artifact] = label
    return record


def markdown(records: list[dict[str, Any]]) -> str:
    """The table docs/own-data.md shows, from the records."""
    def size(record: dict[str, Any], name: str) -> str:
        entry = record.get("artifacts", {}).get(name)
        return f"{entry['bytes'] / 2**20:.1f}" if entry else "—"

    def agreement(record: dict[str, Any], name: str) -> str:
        entry = record.get("artifacts", {}).get(name) or {}
        value = entry.get("agreement")
        return "—" if value is None else f"{value:.0%}" + ("" if entry.get("passed") else " ✗")

    rows = ["| family | input range | parameters | export s | verify s | fp32 / int8 TFLite MB "
            "| test accuracy (fp32 TFLite) "
            "| agreement fp32 · fp16 · dynamic · int8 TFLite · fp32 · int8 ONNX "
            "| predict: fp32 TFLite = Keras |",
            "|---|---|---|---|---|---|---|---|---|"]
    for record in records:
        if record.get("export_exit") != 0:
            rows.append(f"| {record['family']} | {record['input_range']} | "
                        f"{record['parameters']:,} | {record['export_seconds']} | export failed: "
                        f"{record.get('export_output', '?').strip().splitlines()[-1][:120]} | | | | |")
            continue
        agreements = " · ".join(agreement(record, name) for name in ARTIFACTS)
        same = record["predict"]["model_fp32.tflite"] == record["keras_top1"]
        rows.append(f"| {record['family']} | {record['input_range']} | {record['parameters']:,} | "
                    f"{record['export_seconds']} | {record['verify_seconds']} | "
                    f"{size(record, 'model_fp32.tflite')} / {size(record, 'model_int8.tflite')} | "
                    f"{record['artifacts']['model_fp32.tflite']['accuracy']:.0%} | {agreements} | "
                    f"{'yes' if same else 'NO'} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="all", help="comma-separated, or all")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("runs/architectures"))
    parser.add_argument("--markdown", type=Path, default=None,
                        help="print the table of an earlier --output file and stop")
    parser.add_argument("--no-explanations", action="store_true",
                        help="export without the explanation reference (conversions only)")
    arguments = parser.parse_args()
    if arguments.markdown:
        print(markdown(json.loads(arguments.markdown.read_text())))
        return
    families = list(FAMILIES) if arguments.families == "all" else arguments.families.split(",")
    records = []
    for family in families:
        started = time.perf_counter()
        record = run_family(family, arguments.work / family, size=arguments.size,
                            explanations=not arguments.no_explanations)
        record["total_seconds"] = round(time.perf_counter() - started, 1)
        records.append(record)
        print(json.dumps({k: v for k, v in record.items() if k != "export_output"}), flush=True)
        if arguments.output:
            arguments.output.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
