import cv2
import numpy as np
import pytest


COLOURS = {"blue": (255, 0, 0), "green": (0, 255, 0), "red": (0, 0, 255)}  # BGR on disk


def write_colour_images(root, per_class: int, seed: int = 0):
    """Noisy flat-colour PNGs, one folder per colour: a task a tiny model learns in seconds."""
    rng = np.random.default_rng(seed)
    for name, bgr in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = np.array(bgr) * rng.uniform(0.4, 1.0) + rng.normal(0, 40, (40, 48, 3))
            cv2.imwrite(str(root / name / f"{i}.png"), np.clip(image, 0, 255).astype(np.uint8))
    return root


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory):
    return write_colour_images(tmp_path_factory.mktemp("colours"), per_class=40)


@pytest.fixture
def image_folder(tmp_path):
    """A tiny ImageFolder: 3 colours x 8 PNGs, plus one corrupt JPEG in 'red'."""
    root = write_colour_images(tmp_path / "folder", per_class=8)
    (root / "red" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root
