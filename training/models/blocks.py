"""Building blocks shared by the MobileNet family.

Module and attribute names follow torchvision (``Conv2dNormActivation`` is a
``Sequential`` of conv, BN, activation; SE has ``fc1``/``fc2``), so that
torchvision state dicts load key-for-key.
"""

from collections.abc import Callable

import torch
from torch import nn

NormLayer = Callable[[int], nn.Module]
Activation = Callable[..., nn.Module]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor`` without losing more than 10%.

    Hardware kernels (XNNPACK included) prefer channel counts divisible by 8;
    this is the rounding used by the TF reference implementations.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvNormActivation(nn.Sequential):
    """Conv2d -> BatchNorm2d -> activation, with 'same' padding and no conv bias."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        activation: Activation | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            norm_layer(out_channels),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """Channel attention from MobileNetV3: global pool -> 1x1 ReLU -> 1x1 hard-sigmoid gate."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class DepthwiseSeparable(nn.Sequential):
    """MobileNetV1 block: 3x3 depthwise conv then 1x1 pointwise conv, each with BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            ConvNormActivation(in_channels, in_channels, 3, stride, groups=in_channels),
            ConvNormActivation(in_channels, out_channels, 1),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 block: expand 1x1 -> depthwise kxk -> [SE] -> linear 1x1 project.

    The residual is used when the block keeps both resolution and width. The
    inner ``Sequential`` is named ``conv`` in V2 and ``block`` in V3, as in
    torchvision, so pass ``container`` accordingly.
    """

    def __init__(
        self,
        in_channels: int,
        expanded_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        activation: Activation,
        use_se: bool,
        norm_layer: NormLayer,
        container: str,
    ) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expanded_channels != in_channels:
            layers.append(
                ConvNormActivation(in_channels, expanded_channels, 1, norm_layer=norm_layer, activation=activation)
            )
        layers.append(
            ConvNormActivation(
                expanded_channels,
                expanded_channels,
                kernel_size,
                stride,
                groups=expanded_channels,
                norm_layer=norm_layer,
                activation=activation,
            )
        )
        if use_se:
            layers.append(SqueezeExcitation(expanded_channels, make_divisible(expanded_channels // 4)))
        if container == "conv":
            # torchvision's V2 keeps the projection as two bare modules, not a Sequential.
            layers += [nn.Conv2d(expanded_channels, out_channels, 1, bias=False), norm_layer(out_channels)]
        else:
            layers.append(
                ConvNormActivation(expanded_channels, out_channels, 1, norm_layer=norm_layer, activation=None)
            )
        self._container = container
        setattr(self, container, nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = getattr(self, self._container)(x)
        return x + y if self.use_res_connect else y


def init_weights(model: nn.Module) -> None:
    """torchvision's MobileNet initialisation (Kaiming fan-out convs, N(0, 0.01) linears)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
