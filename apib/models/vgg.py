"""VGG-16 with batch norm for CIFAR: 13 conv3×3-BN-ReLU layers, four max pools, one linear classifier.

As in the HRank and CHIP reference models, the fifth max pool is left out, so a 32×32 input reaches
the global average pool at 2×2, and the convolutions keep their biases.
"""

from torch import Tensor, nn

__all__ = ["VGG16_CFG", "VGG", "vgg16"]

# Output channels of each conv; "M" is a 2×2 max pool.
VGG16_CFG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
)


class VGG(nn.Module):
    """Plain conv net from a channel config: ``(n, 3, H, W) → (n, num_classes)`` logits, ``H, W ≥ 16``."""

    def __init__(self, cfg: tuple[int | str, ...] = VGG16_CFG, num_classes: int = 10):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        layers: list[nn.Module] = []
        in_channels = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def vgg16(num_classes: int = 10) -> VGG:
    """VGG-16-BN for CIFAR (about 14.7M parameters)."""
    return VGG(VGG16_CFG, num_classes)
