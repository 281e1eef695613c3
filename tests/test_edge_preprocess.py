"""The edge preprocessing (numpy/OpenCV from model.json) reproduces the training eval transform."""

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import run_module

from edge.images import MAX_PIXELS
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


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with a few rows of data: a few hundred bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * (1 + 3 * min(width, 4096)) * 2)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )
    return path


def test_a_decompression_bomb_header_is_refused_before_decoding_and_the_next_file_is_labelled(tiny_bundle, tmp_path):
    bomb = png_claiming(tmp_path / "a-bomb.png", 60000, 60000)
    png_claiming(tmp_path / "b-over.png", 8001, 8000)
    assert bomb.stat().st_size < 2000 and 8001 * 8000 > MAX_PIXELS
    cv2.imwrite(str(tmp_path / "c-fine.png"), np.full((40, 50, 3), 200, np.uint8))
    result = run_module(
        "-m", "edge", "predict", str(tiny_bundle), str(tmp_path), "--jsonl", "--threads", "1", text=True
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["path"]).name for r in lines] == ["a-bomb.png", "b-over.png", "c-fine.png"]
    assert "megapixels" in lines[0]["error"] and "8001x8000" in lines[1]["error"] and "top" in lines[2]


@pytest.mark.parametrize("shape", [(1, 60000), (60000, 1), (3, 20000)])
def test_a_thin_image_is_preprocessed_in_bounded_memory(tmp_path, shape):
    """Resized on its short side first, a 1x60000 image would be 256 x 15 million pixels (11 GB)."""
    path = tmp_path / "thin.png"
    assert cv2.imwrite(str(path), np.full((*shape, 3), 90, np.uint8)) and path.stat().st_size < 50_000
    probe = (
        "import resource, sys\n"
        "from edge.images import read_bgr\nfrom edge.preprocess import InputSpec, Preprocessor\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "x = Preprocessor(InputSpec.for_resolution(224))(read_bgr(sys.argv[1]), order='BGR')\n"
        "assert x.shape == (1, 3, 224, 224), x.shape\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    result = run_module("-c", probe, str(path), text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) < 100, f"{result.stdout.strip()} MB more at the peak to preprocess a {shape} image"


def test_a_frame_wider_than_four_to_one_keeps_the_square_a_camera_frame_would(tmp_path):
    """Only the part of the long side the crop never reaches is cut: the square in the middle is the same."""
    preprocess = Preprocessor(InputSpec(size=32, resize=36))
    wide = np.zeros((40, 1000, 3), np.uint8)
    wide[:, 480:520] = 255  # a white band where the crop lands
    left, top, right, bottom = preprocess.crop_box(40, 1000)
    assert (top, bottom) == (2, 38) and 480 <= left and right <= 520, (left, top, right, bottom)
    assert preprocess.crop(wide).min() == 255
