"""Write a stand-in "folder of photos": Fashion-MNIST test images as RGB JPEGs, one sub-folder
per class, upscaled and tinted, for trying `edgekit train --arch <backbone>` offline.

    python scripts/make_photo_folder.py /tmp/photos --classes 3 --per-class 100 --size 96

(docs/own-data.md, "Fine-tune a Keras Applications backbone".)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from edgekit.device import datasets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=96)
    arguments = parser.parse_args()
    test = datasets.load_test()
    rng = np.random.default_rng(0)
    labels = datasets.FASHION_MNIST.labels
    for label in range(arguments.classes):
        folder = arguments.folder / labels[label].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        for count, index in enumerate(np.flatnonzero(test.labels == label)[:arguments.per_class]):
            grey = test.images[index, :, :, 0].astype(np.float32) / 255.0
            tint = rng.uniform(0.3, 1.0, 3)  # a garment of some colour on a light background
            rgb = 255.0 - grey[..., None] * (255.0 * (1.0 - tint))
            image = Image.fromarray(rgb.astype(np.uint8)).resize(
                (arguments.size, arguments.size), Image.Resampling.BILINEAR)
            image.save(folder / f"{count:04d}.jpg", quality=90)
    print(f"wrote {arguments.classes * arguments.per_class} images into {arguments.folder}")


if __name__ == "__main__":
    main()
