"""GoogLeNet (Inception v1) for CIFAR, as in kuangliu/pytorch-cifar, whose checkpoints load.

A 3×3 stem of 192 channels replaces ImageNet's 7×7 stem and its pooling, so a 32×32 input keeps full
resolution through stage 3; the "5×5" branch is two stacked 3×3 convolutions.
"""

import torch
from torch import Tensor, nn

__all__ = ["Inception", "GoogLeNet", "googlenet"]


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class Inception(nn.Module):
    """Four parallel branches concatenated on channels: ``(n, in_planes, H, W) → (n, out_planes, H, W)``.

    ``out_planes = n1x1 + n3x3 + n5x5 + pool_planes``. APIB prunes the inner (reduce) channels of the
    3×3 and 5×5 branches; the concatenated output feeds the next module and stays whole.
    """

    def __init__(
        self, in_planes: int, n1x1: int, n3x3red: int, n3x3: int, n5x5red: int, n5x5: int, pool_planes: int
    ):
        super().__init__()
        self.b1 = nn.Sequential(*_conv_bn_relu(in_planes, n1x1, 1))
        self.b2 = nn.Sequential(*_conv_bn_relu(in_planes, n3x3red, 1), *_conv_bn_relu(n3x3red, n3x3, 3))
        self.b3 = nn.Sequential(
            *_conv_bn_relu(in_planes, n5x5red, 1),
            *_conv_bn_relu(n5x5red, n5x5, 3),
            *_conv_bn_relu(n5x5, n5x5, 3),
        )
        self.b4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), *_conv_bn_relu(in_planes, pool_planes, 1)
        )
        self.out_planes = n1x1 + n3x3 + n5x5 + pool_planes

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


class GoogLeNet(nn.Module):
    """GoogLeNet for small images: ``(n, 3, H, W) → (n, num_classes)`` logits, ``H, W ≥ 4``."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.pre_layers = nn.Sequential(*_conv_bn_relu(3, 192, 3))
        self.a3 = Inception(192, 64, 96, 128, 16, 32, 32)
        self.b3 = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.a4 = Inception(480, 192, 96, 208, 16, 48, 64)
        self.b4 = Inception(512, 160, 112, 224, 24, 64, 64)
        self.c4 = Inception(512, 128, 128, 256, 24, 64, 64)
        self.d4 = Inception(512, 112, 144, 288, 32, 64, 64)
        self.e4 = Inception(528, 256, 160, 320, 32, 128, 128)
        self.a5 = Inception(832, 256, 160, 320, 32, 128, 128)
        self.b5 = Inception(832, 384, 192, 384, 48, 128, 128)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.b3(self.a3(self.pre_layers(x)))
        x = self.maxpool(x)
        x = self.e4(self.d4(self.c4(self.b4(self.a4(x)))))
        x = self.maxpool(x)
        x = self.b5(self.a5(x))
        return self.linear(self.avgpool(x).flatten(1))


def googlenet(num_classes: int = 10) -> GoogLeNet:
    """GoogLeNet for CIFAR (about 6.2M parameters)."""
    return GoogLeNet(num_classes)
