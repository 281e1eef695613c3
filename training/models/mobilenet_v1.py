"""MobileNetV1 (Howard et al., 2017), Table 1: a stem conv and 13 depthwise-separable blocks.

The resolution multiplier rho is simply the input size; the width multiplier
alpha scales every layer's channels.
"""

import torch
from torch import nn

from .blocks import ConvNormActivation, DepthwiseSeparable, init_weights, make_divisible

STEM_CHANNELS = 32
# (output channels, stride) of each depthwise-separable block.
STAGES: list[tuple[int, int]] = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
]


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        channels = make_divisible(STEM_CHANNELS * width_mult)
        layers: list[nn.Module] = [ConvNormActivation(3, channels, 3, stride=2)]
        for out_channels, stride in STAGES:
            out_channels = make_divisible(out_channels * width_mult)
            layers.append(DepthwiseSeparable(channels, out_channels, stride))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
