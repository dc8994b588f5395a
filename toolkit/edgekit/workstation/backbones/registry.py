"""The Keras Applications families ``edgekit train --arch`` fine-tunes, as data.

Pure data (no Keras import), so the command line can list the families without TensorFlow.
Each family names its ``keras.applications`` constructor, the input preprocessing its
ImageNet weights expect (the modes of ``keras.applications.imagenet_utils.preprocess_input``),
the smallest input side its constructor accepts, and where its "top blocks" — the layers
unfrozen in the fine-tuning phase — begin.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgekit import errors

# The preprocessing modes, as keras.applications.imagenet_utils.preprocess_input names them,
# plus "none": the model scales its own 0..255 input (MobileNetV3's Rescaling, EfficientNet's
# Rescaling and Normalization).
MODES = ("tf", "caffe", "torch", "none")


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    module: str  # keras.applications.<module>: its preprocess_input is the family's own
    constructor: str  # an attribute of keras.applications
    preprocessing: str  # one of MODES: what the ImageNet weights expect of 0..255 RGB pixels
    min_size: int  # the constructor's smallest input side (include_top=False)
    top_block: str  # the name prefix of the first layer of the top blocks (fine-tune phase)
    # Extra constructor arguments. include_preprocessing=False where Keras would put a
    # Normalization layer inside the model: tf2onnx turns a Normalization's mean and variance
    # into graph inputs (issue 26), so edgekit adds the same arithmetic as a fixed 1x1
    # convolution instead (preprocessing.py) — numerically the same mode.
    arguments: tuple[tuple[str, Any], ...] = ()
    note: str = ""

    @property
    def default_size(self) -> int:
        """The input side a run uses unless told otherwise: the smallest the family accepts.

        Every family here downsamples by 32, so at 32x32 the last feature map is 1x1; larger
        inputs (``--image-size`` on a folder of photos) keep more of a pretrained backbone's
        accuracy at a higher cost per image.
        """
        return self.min_size


FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family("mobilenet_v2", "mobilenet_v2", "MobileNetV2", "tf", 32, "block_14_",
           note="ImageNet weights exist for 96-224; other sizes load the 224 weights"),
    Family("mobilenet_v3_small", "mobilenet_v3", "MobileNetV3Small", "none", 32, "expanded_conv_9_",
           note="own Rescaling to -1..1 (include_preprocessing)"),
    Family("mobilenet_v3_large", "mobilenet_v3", "MobileNetV3Large", "none", 32, "expanded_conv_12_",
           note="own Rescaling to -1..1 (include_preprocessing)"),
    Family("efficientnet_b0", "efficientnet", "EfficientNetB0", "none", 32, "block7a_",
           note="own Rescaling and Normalization (cannot be switched off in Keras)"),
    Family("efficientnet_v2_b0", "efficientnet_v2", "EfficientNetV2B0", "torch", 32, "block6f_",
           (("include_preprocessing", False),),
           note="Keras' in-model preprocessing is the torch mode; edgekit's layer replaces it"),
    Family("resnet50", "resnet", "ResNet50", "caffe", 32, "conv5_block1_"),
    Family("resnet50_v2", "resnet_v2", "ResNet50V2", "tf", 32, "conv5_block1_"),
    Family("densenet121", "densenet", "DenseNet121", "torch", 32, "conv5_block9_"),
    Family("vgg16", "vgg16", "VGG16", "caffe", 32, "block5_conv1"),
    Family("convnext_tiny", "convnext", "ConvNeXtTiny", "torch", 32, "convnext_tiny_stage_3_",
           (("include_preprocessing", False),),
           note="Keras' in-model preprocessing is the torch mode; edgekit's layer replaces it"),
)}

TRAINED_HERE = ("reference", "edge")  # edgekit's own small CNNs
ARCHITECTURES = (*TRAINED_HERE, *FAMILIES)


def is_backbone(architecture: str) -> bool:
    return architecture in FAMILIES


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown backbone family {name!r}: one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def check_weights(weights: str) -> None:
    """``--weights``: imagenet, none, or an existing file (else one clear error)."""
    if weights in ("imagenet", "none"):
        return
    if not Path(weights).is_file():
        raise errors.ModelError(f"--weights {weights}: no such file. Pass a weights file saved "
                                "from this family (backbone.save_weights('x.weights.h5')), "
                                "imagenet, or none.")
