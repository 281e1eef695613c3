import cv2
import numpy as np
import pytest


@pytest.fixture
def image_folder(tmp_path):
    """A tiny ImageFolder: 3 classes x 8 PNGs of flat colours, plus one corrupt JPEG in 'red'."""
    root = tmp_path / "folder"
    colours = {"blue": (255, 0, 0), "green": (0, 255, 0), "red": (0, 0, 255)}  # BGR on disk
    rng = np.random.default_rng(0)
    for name, bgr in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(8):
            image = np.clip(np.array(bgr) + rng.normal(0, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / name / f"{i}.png"), image)
    (root / "red" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root
