"""MobileNetV3-Small/Large (Howard et al., 2019), Tables 1 and 2, laid out as torchvision's."""

from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from .blocks import ConvNormActivation, InvertedResidual, init_weights, make_divisible

# The TF reference (and torchvision's checkpoints) use these BN settings; QAT must keep them.
BN_EPS = 0.001
BN_MOMENTUM = 0.01


class Bneck(NamedTuple):
    """One row of the paper's table: input, kernel, expansion, output, SE, activation, stride."""

    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    use_se: bool
    activation: str  # "RE" (ReLU) or "HS" (hard-swish)
    stride: int


LARGE: list[Bneck] = [
    Bneck(16, 3, 16, 16, False, "RE", 1),
    Bneck(16, 3, 64, 24, False, "RE", 2),
    Bneck(24, 3, 72, 24, False, "RE", 1),
    Bneck(24, 5, 72, 40, True, "RE", 2),
    Bneck(40, 5, 120, 40, True, "RE", 1),
    Bneck(40, 5, 120, 40, True, "RE", 1),
    Bneck(40, 3, 240, 80, False, "HS", 2),
    Bneck(80, 3, 200, 80, False, "HS", 1),
    Bneck(80, 3, 184, 80, False, "HS", 1),
    Bneck(80, 3, 184, 80, False, "HS", 1),
    Bneck(80, 3, 480, 112, True, "HS", 1),
    Bneck(112, 3, 672, 112, True, "HS", 1),
    Bneck(112, 5, 672, 160, True, "HS", 2),
    Bneck(160, 5, 960, 160, True, "HS", 1),
    Bneck(160, 5, 960, 160, True, "HS", 1),
]
SMALL: list[Bneck] = [
    Bneck(16, 3, 16, 16, True, "RE", 2),
    Bneck(16, 3, 72, 24, False, "RE", 2),
    Bneck(24, 3, 88, 24, False, "RE", 1),
    Bneck(24, 5, 96, 40, True, "HS", 2),
    Bneck(40, 5, 240, 40, True, "HS", 1),
    Bneck(40, 5, 240, 40, True, "HS", 1),
    Bneck(40, 5, 120, 48, True, "HS", 1),
    Bneck(48, 5, 144, 48, True, "HS", 1),
    Bneck(48, 5, 288, 96, True, "HS", 2),
    Bneck(96, 5, 576, 96, True, "HS", 1),
    Bneck(96, 5, 576, 96, True, "HS", 1),
]
# Width of the classifier's hidden layer.
LAST_CHANNELS = {"large": 1280, "small": 1024}
ACTIVATIONS = {"RE": nn.ReLU, "HS": nn.Hardswish}


class MobileNetV3(nn.Module):
    def __init__(
        self,
        variant: str = "large",
        num_classes: int = 1000,
        width_mult: float = 1.0,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        table = {"large": LARGE, "small": SMALL}[variant]
        norm_layer = partial(nn.BatchNorm2d, eps=BN_EPS, momentum=BN_MOMENTUM)

        def scaled(channels: int) -> int:
            return make_divisible(channels * width_mult)

        layers: list[nn.Module] = [
            ConvNormActivation(
                3, scaled(table[0].in_channels), 3, stride=2, norm_layer=norm_layer, activation=nn.Hardswish
            )
        ]
        for row in table:
            layers.append(
                InvertedResidual(
                    scaled(row.in_channels),
                    scaled(row.expanded),
                    scaled(row.out_channels),
                    row.kernel,
                    row.stride,
                    activation=ACTIVATIONS[row.activation],
                    use_se=row.use_se,
                    norm_layer=norm_layer,
                    container="block",
                )
            )
        last_conv = 6 * scaled(table[-1].out_channels)
        layers.append(
            ConvNormActivation(
                scaled(table[-1].out_channels), last_conv, 1, norm_layer=norm_layer, activation=nn.Hardswish
            )
        )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        hidden = scaled(LAST_CHANNELS[variant])
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, hidden),
            nn.Hardswish(inplace=True),
            nn.Dropout(dropout, inplace=True),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
