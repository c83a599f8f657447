"""CIFAR ResNets (He et al., CVPR 2016, Sec. 4.2) as used in the CRD / RepDistiller and mdistiller tables.

``resnet{8,14,20,32,44,56,110}``: a 3x3 stem with 16 channels and three stages of ``n = (depth - 2) / 6`` basic blocks
with 16/32/64 channels (strides 1, 2, 2). ``resnet8x4`` / ``resnet32x4`` use stem 32 and stages 64/128/256.
``resnet50`` is RepDistiller's "ResNet50" for CIFAR: the ImageNet bottleneck layout [3, 4, 6, 3] with a 3x3 stride-1
stem and no max-pool.

Stage features (``kd_stages = ("layer1", "layer2", "layer3")``) are block outputs *after* the final ReLU, as in
RepDistiller, whose AT/FitNet/SP hyperparameters were tuned on these post-activation maps. The pre-activation sum
of a block is the *input* of its ``act`` module: tap ``"layer3.4.act"`` with ``FeatureTap(..., inputs=True)``.

Module names equal RepDistiller's, so its published teacher checkpoints load with
:func:`kdkit.models.load_weights` (its ``linear`` classifier of ``resnet50`` is renamed to ``fc`` on load).
"""

from __future__ import annotations

from torch import Tensor, nn

from kdkit.models.base import ClassifierNet, init_weights
from kdkit.registry import MODELS


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)). (B, C_in, H, W) -> (B, C_out, H/s, W/s)."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.act = nn.ReLU()  # its input is the pre-activation sum (tap with inputs=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.act(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4), residual add, ReLU. Shortcut named ``shortcut`` as in RepDistiller."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.shortcut = downsample if downsample is not None else nn.Sequential()
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + self.shortcut(x))


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class CifarResNet(ClassifierNet):
    """3-stage CIFAR ResNet of basic blocks. (B, C, H, W) -> (B, K); stages at H, H/2, H/4.

    Args:
        depth: 6n + 2 layers (n blocks per stage).
        widths: (stem, stage1, stage2, stage3) channels.
    """

    kd_stages = ("layer1", "layer2", "layer3")

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 10,
                 in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self._in = widths[0]
        self.layer1 = self._make_layer(widths[1], n, 1)
        self.layer2 = self._make_layer(widths[2], n, 2)
        self.layer3 = self._make_layer(widths[3], n, 2)
        self._build_head(widths[3], num_classes)
        init_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(self._in, planes, stride, _downsample(self._in, planes, stride))]
        self._in = planes
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


class CifarResNetBottleneck(ClassifierNet):
    """RepDistiller's CIFAR "ResNet50": bottleneck stages [3, 4, 6, 3] at 64..512 planes, 3x3 stride-1 stem."""

    kd_stages = ("layer1", "layer2", "layer3", "layer4")
    legacy_key_aliases = {"linear.": "fc."}

    def __init__(self, blocks: tuple[int, int, int, int] = (3, 4, 6, 3), num_classes: int = 10,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self._in = 64
        self.layer1 = self._make_layer(64, blocks[0], 1)
        self.layer2 = self._make_layer(128, blocks[1], 2)
        self.layer3 = self._make_layer(256, blocks[2], 2)
        self.layer4 = self._make_layer(512, blocks[3], 2)
        self._build_head(512 * 4, num_classes)
        init_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            s = stride if i == 0 else 1
            layers.append(Bottleneck(self._in, planes, s, _downsample(self._in, planes * 4, s)))
            self._in = planes * 4
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


_SMALL = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


def _register(name: str, depth: int, widths: tuple[int, int, int, int], params_m: float) -> None:
    def build(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
        return CifarResNet(depth, widths, num_classes, in_channels)

    build.__name__ = name
    build.__doc__ = f"CIFAR ResNet-{depth}, stage widths {widths[1:]} ({params_m:.2f}M params at 100 classes)."
    MODELS.add(name, build, build.__doc__)


for _name, _depth, _widths, _p in [
    ("resnet8", 8, _SMALL, 0.08), ("resnet14", 14, _SMALL, 0.18), ("resnet20", 20, _SMALL, 0.28),
    ("resnet32", 32, _SMALL, 0.47), ("resnet44", 44, _SMALL, 0.67), ("resnet56", 56, _SMALL, 0.86),
    ("resnet110", 110, _SMALL, 1.74), ("resnet8x4", 8, _X4, 1.23), ("resnet32x4", 32, _X4, 7.43),
]:
    _register(_name, _depth, _widths, _p)


@MODELS.register("resnet50", description="CIFAR ResNet-50 (RepDistiller 'ResNet50': bottlenecks, 3x3 stride-1 stem; "
                                         "23.71M params at 100 classes)")
def resnet50(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    return CifarResNetBottleneck((3, 4, 6, 3), num_classes, in_channels)
