"""Architectures: shapes, parameter counts, MACs, and the recipes."""

import pytest

from conftest import requires_tensorflow
from edgekit.config import RECIPES, Architecture, TrainConfig

pytestmark = requires_tensorflow


def test_reference_shapes_and_parameters():
    from edgekit import models

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

    from edgekit import models

    model = models.build(TrainConfig())
    ones = model(np.full((2, 28, 28, 1), 255.0, np.float32), training=False)
    assert np.allclose(np.asarray(ones).sum(axis=1), 1.0, atol=1e-5)
    assert model.get_layer("scale").scale == pytest.approx(1 / 255)


def test_edge_parameter_budget():
    from edgekit import models

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
        small = models.build(TrainConfig.for_architecture("edge", edge_widths=widths,
                                                          dense_units=units))
        assert small.count_params() < 180_000
    assert "Add" in names  # residual connections


def test_recipes_are_valid_configs():
    for architecture in Architecture:
        config = TrainConfig.for_architecture(architecture)
        assert config.architecture == architecture
        assert TrainConfig.from_dict(config.to_dict()) == config
    assert RECIPES[Architecture.EDGE]["schedule"] == "cosine"
    with pytest.raises(ValueError):
        TrainConfig.for_architecture("edge", optimizer="sgd")
