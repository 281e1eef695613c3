"""Train and eval transforms, on uint8 RGB HWC arrays, written once.

The eval transform is fully described by :class:`edge.preprocess.InputSpec`, which
is what the bundle's ``model.json`` carries to the device; its crop is the edge app's own
(``edge.preprocess``), so both sides cut and resize the same pixels.
Randomness comes from torch's RNG so DataLoader worker seeding and checkpoint
RNG restore make augmentation reproducible.
"""

import math

import numpy as np
import torch

from edge.preprocess import InputSpec, Preprocessor, resize


def to_tensor(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], jitter: float = 0.0) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    if jitter:
        x = colour_jitter(x, jitter)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def colour_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Brightness, contrast and saturation each scaled by a factor in [1 - strength, 1 + strength], as a
    camera's exposure and white balance vary; hue is kept, since a class may be told by its colour."""
    brightness, contrast, saturation = (1 + strength * (2 * torch.rand(3) - 1)).tolist()
    x = x * brightness
    x = (x - x.mean()) * contrast + x.mean()
    grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)
    return ((x - grey) * saturation + grey).clamp_(0, 1)


class EvalTransform:
    """Resize the shorter side to ``spec.resize``, then take the central ``spec.size`` square."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec, self.crop = spec, Preprocessor(spec).crop

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return to_tensor(self.crop(image), self.spec.mean, self.spec.std)


class TrainTransform:
    """Random-resized crop (scale and aspect jitter) and horizontal flip, as in the MobileNet papers, and
    ``jitter`` of colour (0: none) for photos."""

    def __init__(
        self,
        spec: InputSpec,
        scale: tuple[float, float] = (0.25, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        jitter: float = 0.0,
    ) -> None:
        self.spec, self.scale, self.log_ratio, self.hflip = spec, scale, (math.log(ratio[0]), math.log(ratio[1])), hflip
        self.jitter = jitter

    def crop_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        for _ in range(10):
            u = torch.rand(4).tolist()
            area = h * w * (self.scale[0] + u[0] * (self.scale[1] - self.scale[0]))
            aspect = math.exp(self.log_ratio[0] + u[1] * (self.log_ratio[1] - self.log_ratio[0]))
            cw, ch = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                return int(u[2] * (h - ch + 1)), int(u[3] * (w - cw + 1)), ch, cw
        side = min(h, w)
        return (h - side) // 2, (w - side) // 2, side, side

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        top, left, ch, cw = self.crop_box(*image.shape[:2])
        image = resize(image[top : top + ch, left : left + cw], self.spec.size, self.spec.size)
        if self.hflip and torch.rand(1).item() < 0.5:
            image = image[:, ::-1]
        return to_tensor(image, self.spec.mean, self.spec.std, self.jitter)
