"""MobileNetV2 (Sandler et al., 2018), Table 2, laid out as torchvision's ``mobilenet_v2``."""

import torch
from torch import nn

from .blocks import ConvNormActivation, InvertedResidual, init_weights, make_divisible

STEM_CHANNELS = 32
LAST_CHANNELS = 1280
# (expansion t, output channels c, repeats n, first stride s), as in the paper.
STAGES: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        channels = make_divisible(STEM_CHANNELS * width_mult)
        last_channels = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvNormActivation(3, channels, 3, stride=2, activation=nn.ReLU6)]
        for t, c, n, s in STAGES:
            out_channels = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(
                    InvertedResidual(
                        channels,
                        int(round(channels * t)),
                        out_channels,
                        3,
                        s if i == 0 else 1,
                        activation=nn.ReLU6,
                        use_se=False,
                        norm_layer=nn.BatchNorm2d,
                        container="conv",
                    )
                )
                channels = out_channels
        layers.append(ConvNormActivation(channels, last_channels, 1, activation=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
