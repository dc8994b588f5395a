"""Facts every artifact shares: the labels and the input contract (device-safe)."""

from __future__ import annotations

LABELS: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(LABELS)
IMAGE_SIZE = 28
INPUT_SHAPE: tuple[int, int, int] = (IMAGE_SIZE, IMAGE_SIZE, 1)

INPUT_CONTRACT: dict[str, object] = {
    "layout": "NHWC",
    "shape": [None, IMAGE_SIZE, IMAGE_SIZE, 1],
    "dtype": "uint8",
    "range": [0, 255],
    "background": 0,
    "description": (
        "Raw Fashion-MNIST pixels: uint8, 0 = background, light garment on black. "
        "Float artifacts take these values cast to float32 (scaling to [0, 1] is inside the "
        "model); integer artifacts take them quantised with the input tensor's own scale and "
        "zero point. edgekit.device.runtime applies both."
    ),
}
