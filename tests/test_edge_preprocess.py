"""The edge preprocessing (numpy/OpenCV from model.json) reproduces the training eval transform."""

import numpy as np
import pytest

from edge.preprocess import InputSpec, Preprocessor
from training.procedural import ProceduralShapes
from training.transforms import EvalTransform


@pytest.mark.parametrize("size,crop_fraction", [(32, 0.875), (96, 1.0), (224, 0.875)])
@pytest.mark.parametrize("shape", [(20, 30), (96, 96), (480, 640), (720, 405)])
def test_edge_matches_training_within_one_level(size, crop_fraction, shape):
    rng = np.random.default_rng(size + shape[0])
    image = np.clip(ProceduralShapes(1).image(0)[0].mean() + rng.normal(0, 60, (*shape, 3)), 0, 255).astype(np.uint8)
    spec = InputSpec.for_resolution(size, crop_fraction)
    training, edge = EvalTransform(spec), Preprocessor(spec)
    pixels_training, pixels_edge = training.crop(image).astype(int), edge.crop(image).astype(int)
    assert pixels_edge.shape == (size, size, 3)
    assert np.abs(pixels_training - pixels_edge).max() <= 1
    x_training, x_edge = training(image).numpy(), edge(image)[0]
    assert x_edge.shape == (3, size, size) and x_edge.dtype == np.float32
    assert edge(image)[0].transpose(1, 2, 0).flags.c_contiguous, "NHWC memory: what exported programs read, uncopied"
    # One uint8 level, divided by the smallest std.
    assert np.abs(x_training - x_edge).max() <= 1 / 255 / min(spec.std) + 1e-5


@pytest.mark.parametrize(
    "change",
    [
        {"channel_order": "BGR"},
        {"crop": "none"},
        {"layout": "NHWC"},
        {"interpolation": "nearest"},
        {"size": 0},
        {"resize": 8},
        {"std": (1, 0, 1)},
    ],
)
def test_edge_rejects_a_spec_it_cannot_reproduce(change):
    with pytest.raises(ValueError, match="input"):
        InputSpec(**(InputSpec.for_resolution(64).to_json() | change))
