"""CIFAR ResNets with basic blocks (He et al., 2016, §4.2): ResNet-20, -56 and -110.

Three stages of 16, 32 and 64 channels, each of ``n`` basic blocks, depth ``6n + 2``. Where a block
changes the shape, its shortcut is a strided 1×1 convolution with batch norm (option B) rather than the
paper's zero-padding (option A): a real layer traces cleanly through torch-pruning's dependency graph,
and costs about 3k parameters.
"""

from torch import Tensor, nn

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet56", "resnet110"]


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a residual shortcut: ``(n, in_planes, H, W) → (n, planes, H/s, W/s)``.

    APIB prunes the block's inner channels (``conv1``'s filters = ``conv2``'s inputs); the residual
    stream, shared by every block of a stage, stays whole.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet of depth ``6n + 2`` for small images: ``(n, 3, H, W) → (n, num_classes)`` logits.

    Built for 32×32 inputs; the global average pool makes any ``H, W ≥ 8`` work (two stride-2 stages).
    """

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 (3 blocks per stage, about 0.27M parameters)."""
    return CifarResNet(20, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 (9 blocks per stage, about 0.86M parameters)."""
    return CifarResNet(56, num_classes)


def resnet110(num_classes: int = 10) -> CifarResNet:
    """ResNet-110 (18 blocks per stage, about 1.7M parameters)."""
    return CifarResNet(110, num_classes)
