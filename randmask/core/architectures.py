"""The CIFAR architectures and their one registry: `@register_model("ResNet-18", maskable=True)` puts a body
builder under its display name; `list_models()` lists registry keys ('resnet18'), `ARCHITECTURES[key].name`
gives the display name the notation uses ('ResNet-18').

A body builder takes (in_shape, num_classes, width, masks): `masks(block, shape)` returns the module placed
after a conv's BatchNorm in that block (identity where the block is unmasked) and `masks.multiplier(block)` its
width factor (the paper's ×n). Only ResNet-18 carries masks (the paper's five blocks: the stem, four stages).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from randmask.core.fused import bn_mask_relu


class Masks(Protocol):
    def __call__(self, block: int, shape: tuple[int, int, int]) -> nn.Module: ...

    def multiplier(self, block: int) -> int: ...


@dataclass(frozen=True)
class Architecture:
    key: str  # registry key and checkpoint 'arch': 'resnet18'
    name: str  # display name in the notation: 'ResNet-18'
    build: Callable[..., nn.Module]
    maskable: bool = False  # Random Mask is defined on ResNet-18's five blocks only


ARCHITECTURES: dict[str, Architecture] = {}


def arch_key(name: str) -> str:
    """'ResNet-18' -> 'resnet18': lower case without hyphens."""
    return name.lower().replace("-", "")


def register_model(name: str, *, maskable: bool = False) -> Callable:
    """Register a body builder `fn(in_shape, num_classes, width, masks) -> nn.Module` under display `name`."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        ARCHITECTURES[arch_key(name)] = Architecture(arch_key(name), name, fn, maskable)
        return fn

    return deco


def list_models() -> list[str]:
    """Registered architectures, by registry key (e.g. 'resnet18')."""
    return sorted(ARCHITECTURES)


def _down(size: int, stride: int) -> int:
    return (size - 1) // stride + 1  # output size of a padded 3×3 (or 1×1) conv with this stride


def conv_bn(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))


# ----------------------------------------------------------------------------------------- ResNet-18 / 50
_NO_MASK = nn.Identity()  # for the units that carry no masks (Bottleneck, SENet)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, hw: tuple[int, int], masks: Masks,
                 block: int) -> None:
        super().__init__()
        shape = (planes, *hw)
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.mask1 = masks(block, shape)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False), nn.BatchNorm2d(planes)
        self.mask2 = masks(block, shape)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(*conv_bn(cin, planes, 1, stride), masks(block, shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = bn_mask_relu(self.conv1(x), self.bn1, self.mask1)
        shortcut = x
        if len(self.shortcut):  # conv, BatchNorm, mask
            shortcut = bn_mask_relu(self.shortcut[0](x), self.shortcut[1], self.shortcut[2], relu=False)
        return bn_mask_relu(self.conv2(out), self.bn2, self.mask2, residual=shortcut)  # masked before the addition


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, hw: tuple[int, int], masks: Masks,
                 block: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != out:
            self.shortcut = conv_bn(cin, out, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = bn_mask_relu(self.conv1(x), self.bn1, _NO_MASK)
        y = bn_mask_relu(self.conv2(y), self.bn2, _NO_MASK)
        shortcut = x
        if len(self.shortcut):  # conv, BatchNorm
            shortcut = bn_mask_relu(self.shortcut[0](x), self.shortcut[1], _NO_MASK, relu=False)
        return bn_mask_relu(self.conv3(y), self.bn3, _NO_MASK, residual=shortcut)


class ResNet(nn.Module):
    """CIFAR ResNet: block 0 = 3×3 stem conv, blocks 1-4 = the four stages (strides 1, 2, 2, 2)."""

    def __init__(self, unit: type, counts: list[int], in_shape: tuple[int, int, int], num_classes: int,
                 width: int, masks: Masks) -> None:
        super().__init__()
        c, h, w = in_shape
        stem = width * masks.multiplier(0)
        self.conv1, self.bn1 = nn.Conv2d(c, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem)
        self.mask1 = masks(0, (stem, h, w))
        cin, hw = stem, (h, w)
        stages = []
        for i, (n, stride) in enumerate(zip(counts, (1, 2, 2, 2), strict=True)):
            block = i + 1
            planes = width * 2**i * masks.multiplier(block)
            units = []
            for s in [stride] + [1] * (n - 1):
                hw = (_down(hw[0], s), _down(hw[1], s))
                units.append(unit(cin, planes, s, hw, masks, block))
                cin = planes * unit.expansion
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = bn_mask_relu(self.conv1(x), self.bn1, self.mask1)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@register_model("ResNet-18", maskable=True)
def resnet18(in_shape, num_classes, width, masks) -> nn.Module:
    return ResNet(BasicBlock, [2, 2, 2, 2], in_shape, num_classes, width, masks)


@register_model("ResNet-50")
def resnet50(in_shape, num_classes, width, masks) -> nn.Module:
    return ResNet(Bottleneck, [3, 4, 6, 3], in_shape, num_classes, width, masks)


# ------------------------------------------------------------------------------------------ DenseNet-121
class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(4 * growth), nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # eager on purpose: with randmask.core.fused a DenseNet-121 training step measured slower (932 vs 899 ms at
        # 1 thread, beside two training lanes); why was not examined
        y = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([y, x], 1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    def __init__(self, counts: list[int], growth: int, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels = 2 * growth
        self.conv1 = nn.Conv2d(in_shape[0], channels, 3, 1, 1, bias=False)
        stages: list[nn.Module] = []
        for i, n in enumerate(counts):
            for _ in range(n):
                stages.append(DenseLayer(channels, growth))
                channels += growth
            if i < len(counts) - 1:
                out = channels // 2  # compression 0.5
                stages.append(Transition(channels, out))
                channels = out
        self.features = nn.Sequential(*stages)
        self.bn, self.linear = nn.BatchNorm2d(channels), nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.features(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@register_model("DenseNet-121")
def densenet121(in_shape, num_classes, width, masks) -> nn.Module:
    return DenseNet([6, 12, 24, 16], max(4, round(32 * width / 64)), in_shape, num_classes)


# ------------------------------------------------------------------------------------------------ VGG-19
class VGG(nn.Module):
    def __init__(self, plan: list, in_shape: tuple[int, int, int], num_classes: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, size = in_shape[0], in_shape[1]
        for item in plan:
            if item == "M":
                if size >= 2:  # MNIST's 28×28 runs out of resolution before the fifth pool
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
            else:
                cout = max(4, item * width // 64)
                layers += [*conv_bn(cin, cout, 3, 1), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


VGG19_PLAN = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"]


@register_model("VGG-19")
def vgg19(in_shape, num_classes, width, masks) -> nn.Module:
    return VGG(VGG19_PLAN, in_shape, num_classes, width)


# ---------------------------------------------------------------------------------------------- SENet-18
class SEPreActBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != planes:
            self.shortcut = nn.Conv2d(cin, planes, 1, stride, bias=False)
        squeeze = max(1, planes // 16)
        self.fc1, self.fc2 = nn.Conv2d(planes, squeeze, 1), nn.Conv2d(squeeze, planes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = bn_mask_relu(x, self.bn1, _NO_MASK)
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(bn_mask_relu(self.conv1(out), self.bn2, _NO_MASK))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(out, 1)))))
        return out * gate + skip


class SENet(nn.Module):
    def __init__(self, counts: list[int], in_shape: tuple[int, int, int], num_classes: int, width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_shape[0], width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        cin, stages = width, []
        for i, (n, stride) in enumerate(zip(counts, (1, 2, 2, 2), strict=True)):
            units = []
            for s in [stride] + [1] * (n - 1):
                units.append(SEPreActBlock(cin, width * 2**i, s))
                cin = width * 2**i
            stages.append(nn.Sequential(*units))
        self.layers = nn.Sequential(*stages)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(bn_mask_relu(self.conv1(x), self.bn1, _NO_MASK))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(F.relu(out), 1), 1))


@register_model("SENet-18")
def senet18(in_shape, num_classes, width, masks) -> nn.Module:
    return SENet([2, 2, 2, 2], in_shape, num_classes, width)


