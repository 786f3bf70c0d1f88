"""The demo CNN: residual and depthwise-separable blocks, so pruning and quantization have real structure."""
from __future__ import annotations

import torch
from torch import nn


class ConvBNReLU(nn.Sequential):
    """Conv2d -> BatchNorm2d -> ReLU (the unit fusion and quantization look for)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, relu: bool = True):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout)]
        if relu:
            layers.append(nn.ReLU(inplace=False))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvBNReLU(channels, channels)
        self.conv2 = ConvBNReLU(channels, channels, relu=False)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + x)


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 then pointwise 1x1 (MobileNet's block)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.depthwise = ConvBNReLU(cin, cin, 3, stride, groups=cin)
        self.pointwise = ConvBNReLU(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class DigitsNet(nn.Module):
    """A ~100k-parameter CNN for 1x8x8 digit images, 10 classes."""

    def __init__(self, width: int = 32, num_classes: int = 10, dropout: float = 0.1):
        super().__init__()
        self.stem = ConvBNReLU(1, width)
        self.block1 = ResidualBlock(width)
        self.block2 = DepthwiseSeparable(width, 2 * width, stride=2)
        self.block3 = ResidualBlock(2 * width)
        self.block4 = DepthwiseSeparable(2 * width, 4 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block4(self.block3(self.block2(self.block1(self.stem(x)))))
        return self.fc(self.dropout(self.flatten(self.pool(x))))
