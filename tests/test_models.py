"""Architectures: shapes, parameter counts, MACs, and the recipes."""

import pytest

from conftest import requires_tensorflow
from edgekit.workstation.config import RECIPES, Architecture, TrainConfig

pytestmark = requires_tensorflow


def test_reference_shapes_and_parameters():
    from edgekit.workstation import models

    model = models.build(TrainConfig())
    assert model.input_shape == (None, 28, 28, 1)
    assert model.output_shape == (None, 10)
    # conv1 3*3*1*32+32, conv2 3*3*32*64+64, dense 7*7*64*256+256, head 256*10+10
    assert model.count_params() == 320 + 18_496 + 803_072 + 2_570
    layer_types = [type(layer).__name__ for layer in model.layers]
    assert layer_types.count("Conv2D") == 2 and layer_types.count("MaxPooling2D") == 2
    assert {"Rescaling", "Flatten", "Dense", "Dropout"} <= set(layer_types)
    assert models.count_macs(model) == 28 * 28 * 32 * 9 + 14 * 14 * 64 * 9 * 32 + 3136 * 256 + 2560


def test_reference_takes_raw_pixels():
    import numpy as np

    from edgekit.workstation import models

    model = models.build(TrainConfig())
    ones = model(np.full((2, 28, 28, 1), 255.0, np.float32), training=False)
    assert np.allclose(np.asarray(ones).sum(axis=1), 1.0, atol=1e-5)
    assert model.get_layer("scale").scale == pytest.approx(1 / 255)


def test_edge_parameter_budget():
    from edgekit.workstation import models

    config = TrainConfig.for_architecture("edge")
    model = models.build(config)
    assert model.output_shape == (None, 10)
    # int8 weights: parameters ~ bytes; the released int8 file must stay under 200 KB.
    assert model.count_params() < 180_000
    assert models.count_macs(model) < 15_000_000
    names = [type(layer).__name__ for layer in model.layers]
    assert "BatchNormalization" in names and "Flatten" in names  # the positional head
    # Every width and head choice of `edgekit tune` stays within the 200 KB budget too.
    for widths, units in (((16, 32, 32), 64), ((24, 48, 48), 96), ((32, 64, 64), 96)):
        for stem in ("pool", "stride2"):  # the 5x5 stem is the larger one
            small = models.build(TrainConfig.for_architecture("edge", edge_widths=widths,
                                                              dense_units=units, edge_stem=stem))
            assert small.count_params() < 180_000
    assert "Add" in names  # residual connections


def test_edge_stem_and_blocks():
    from edgekit.workstation import models

    widths = (32, 64, 64)  # the arithmetic below is for a 32-channel stem
    pooled = models.build(TrainConfig.for_architecture("edge", edge_stem="pool", edge_blocks=1,
                                                       edge_widths=widths))
    strided = models.build(TrainConfig.for_architecture("edge", edge_stem="stride2", edge_blocks=0,
                                                        edge_widths=widths))
    assert strided.output_shape == (None, 10)
    # stride2: a 5x5 conv straight to 14x14 replaces the 3x3 conv at 28x28 and its max-pool.
    stem = strided.get_layer("stem_conv")
    assert stem.strides == (2, 2) and stem.kernel_size == (5, 5)
    assert stem.output.shape[1:3] == (14, 14)
    assert "pool28" not in [layer.name for layer in strided.layers]
    # No residual block: one 3x3 64->64 conv at 7x7 (and its batch norm) fewer.
    assert "Add" not in [type(layer).__name__ for layer in strided.layers]
    assert models.count_macs(pooled) - models.count_macs(strided) == (
        7 * 7 * 64 * 9 * 64 + 28 * 28 * 32 * 9 - 14 * 14 * 32 * 25)
    assert pooled.count_params() - strided.count_params() == (
        9 * 64 * 64 + 4 * 64 - (25 - 9) * 32)
    two = models.build(TrainConfig.for_architecture("edge", edge_blocks=2))
    assert [type(layer).__name__ for layer in two.layers].count("Add") == 2
    with pytest.raises(ValueError, match="edge stem"):
        TrainConfig.for_architecture("edge", edge_stem="patchify")
    with pytest.raises(ValueError, match="edge blocks"):
        TrainConfig.for_architecture("edge", edge_blocks=-1)


def test_recipes_are_valid_configs():
    for architecture in Architecture:
        config = TrainConfig.for_architecture(architecture)
        assert config.architecture == architecture
        assert TrainConfig.from_dict(config.to_dict()) == config
    assert RECIPES[Architecture.EDGE]["schedule"] == "cosine"
    with pytest.raises(ValueError):
        TrainConfig.for_architecture("edge", optimizer="sgd")
