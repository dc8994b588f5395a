"""Which gradient map is faithful? Deletion/insertion scores of every method, two models.

Scores Grad-CAM, HiResCAM and LayerCAM (and occlusion) with edgekit's own deletion/insertion
curves (edgekit.device.explain.faithfulness: background and mean-image fills, a random order
of patch-sized blocks as the baseline) on the release's stored sample of 200 test images, for
the released Keras model (a Flatten head) and for a small global-average-pooled CNN trained
here for a few seeded epochs. Prints a Markdown table (docs/explain.md, "Choosing the default").

    python scripts/explain_methods.py [RELEASE] [--epochs 3] [--layer conv14_relu]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras
import numpy as np

from edgekit import manifest as manifest_module
from edgekit.device import datasets
from edgekit.device.explain import compare, faithfulness, occlusion
from edgekit.device.explain import parity as explanation_parity
from edgekit.workstation import evaluation, explain_reference, gradcam


def gap_model(epochs: int, train: datasets.Split) -> keras.Model:
    """Three convolution blocks, global average pooling, one dense softmax layer."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU(name=f"relu{filters}")(x)
        if filters != 64:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train.images.astype("float32"), train.labels, epochs=epochs, batch_size=256,
              verbose=2)
    return model


def score_model(name: str, model: keras.Model, images: np.ndarray, fills: dict[str, np.ndarray],
                layers: list[str | None], patch: int) -> dict[str, np.ndarray]:
    predict = explain_reference.keras_predict(model)
    made = occlusion.occlusion_maps(predict, images, 0, occlusion.Settings(patch, patch // 2))
    maps: dict[str, np.ndarray] = {"occlusion": made.maps}
    for layer_name in layers:
        layer = gradcam.find_layer(model, layer_name)
        for method in gradcam.METHODS:
            maps[f"{method} @ {layer.name}"] = gradcam.class_maps(model, images, made.classes,
                                                                  layer, method)
    scores = faithfulness.score(predict, images, made.classes, maps, fills, patch)
    print(f"\n{name}: mean AUC over {len(images)} images (deletion: lower is better; "
          "insertion: higher); difference from random +/- 2 standard errors\n")
    print("| map | fill | deletion | vs random | insertion | vs random | beats random |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for method in maps:
        for fill in fills:
            result = faithfulness.beats_random(
                faithfulness.Scores({f: {m: scores.deletion[f][m] for m in (method, "random")}
                                     for f in fills},
                                    {f: {m: scores.insertion[f][m] for m in (method, "random")}
                                     for f in fills}, scores.steps), method)[fill]
            deletion, insertion = result["deletion"], result["insertion"]
            print(f"| {method} | {fill} | {deletion['value']:.3f} | "
                  f"{deletion['difference']:+.3f} ± {2 * deletion['standard_error']:.3f} | "
                  f"{insertion['value']:.3f} | {insertion['difference']:+.3f} ± "
                  f"{2 * insertion['standard_error']:.3f} | {'yes' if result['passed'] else 'no'} |")
    for fill in fills:
        print(f"| random blocks | {fill} | {scores.deletion[fill]['random'].mean():.3f} | | "
              f"{scores.insertion[fill]['random'].mean():.3f} | | |")
    return maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("release", nargs="?", default="exported", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--layer", action="append", default=[],
                        help="also read this layer of the release's model (repeatable)")
    arguments = parser.parse_args()
    folder = arguments.release
    manifest = manifest_module.load(folder)
    reference = explanation_parity.load_reference_maps(folder, manifest)
    images, mean = explanation_parity.sample_images(folder, manifest, reference, None)
    contract = manifest_module.contract_of(manifest, folder)
    fills = {fill: faithfulness.fill_images(fill, contract.background, mean, contract.shape)
             for fill in faithfulness.FILLS}
    patch = reference.settings.patch
    released = evaluation.load_keras_model(folder / "model.keras")
    score_model(f"released model ({folder}/model.keras, Flatten head)", released, images, fills,
                [None, *arguments.layer], patch)
    model = gap_model(arguments.epochs, datasets.load().train)
    maps = score_model(f"global-average-pooled CNN ({arguments.epochs} epochs)", model, images,
                       fills, [None], patch)
    mask = np.ones(images.shape[:3], dtype=bool)
    layer = gradcam.find_layer(model).name
    agreement = compare.agreement(maps[f"gradcam @ {layer}"], maps[f"hirescam @ {layer}"], mask)
    difference = np.abs(maps[f"gradcam @ {layer}"] - maps[f"hirescam @ {layer}"]).max()
    print(f"\nGAP model: Grad-CAM against HiResCAM, mean rank correlation "
          f"{agreement.mean_rank_correlation:.4f}, largest difference {difference:.2e}")


if __name__ == "__main__":
    main()
