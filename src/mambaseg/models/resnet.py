"""ResNet-18 / ResNet-50 encoder with a plain transposed-convolution decoder (no skips).

The encoder is torchvision's ResNet without avgpool and fc (stride 32). The decoder is four
ConvTranspose2d(kernel 4, stride 2, padding 1) with ReLU between them (x16), and the logits are
upsampled bilinearly to the input size. ``pretrained=True`` initialises the encoder with
torchvision's ImageNet weights, read from the local torch hub cache only (never downloaded here).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.errors import MambasegError
from mambaseg.models.base import SegModel
from mambaseg.models.registry import register_model

_ENCODERS = {
    # name: (torchvision builder, weights enum name, encoder output width, decoder widths)
    "resnet18": ("resnet18", "ResNet18_Weights", 512, (256, 128, 64)),
    "resnet50": ("resnet50", "ResNet50_Weights", 2048, (512, 256, 128)),
}


def imagenet_weights_path(arch: str) -> tuple[Path, str]:
    """Where torchvision caches the ImageNet weights of ``arch``, and their download URL."""
    import torch.hub
    import torchvision.models as tvm

    weights = getattr(tvm, _ENCODERS[arch][1]).IMAGENET1K_V1
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename, weights.url


def _load_imagenet(resnet: nn.Module, arch: str) -> None:
    path, url = imagenet_weights_path(arch)
    if not path.is_file():
        raise MambasegError(
            f"pretrained=True needs torchvision's ImageNet weights for {arch}, which are not in the "
            f"torch hub cache ({path}); mambaseg never downloads them. On a machine with network "
            f"access run: python -c \"import torchvision; torchvision.models.{arch}(weights='IMAGENET1K_V1')\" "
            f"(or download {url} to {path}), or use pretrained=False")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        resnet.load_state_dict(state)
    except Exception as exc:
        raise MambasegError(f"cannot load ImageNet weights for {arch} from {path}: {exc}; delete the "
                            f"file and fetch it again") from exc


class ResNetSeg(SegModel):
    family = "resnet"
    size_multiple = 32
    min_size = 64

    def __init__(self, in_channels: int = 3, num_classes: int = 1, arch: str = "resnet18",
                 pretrained: bool = False):
        super().__init__(in_channels, num_classes)
        import torchvision.models as tvm

        if arch not in _ENCODERS:
            raise MambasegError(f"unknown ResNet encoder {arch!r}; valid: {', '.join(_ENCODERS)}")
        builder, _, width, dec_widths = _ENCODERS[arch]
        resnet = getattr(tvm, builder)(weights=None)
        if pretrained:
            _load_imagenet(resnet, arch)
        if in_channels != 3:
            old = resnet.conv1
            resnet.conv1 = nn.Conv2d(in_channels, old.out_channels, kernel_size=7, stride=2, padding=3,
                                     bias=False)
            if pretrained:  # keep the ImageNet filters, averaged over the RGB channels (as timm does)
                with torch.no_grad():
                    mean = old.weight.mean(dim=1, keepdim=True)
                    resnet.conv1.weight.copy_(mean.repeat(1, in_channels, 1, 1) * (3 / in_channels))
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        self.encoder = nn.Sequential(OrderedDict((n, getattr(resnet, n)) for n in names))
        layers, prev = [], width
        for w in dec_widths:
            layers += [nn.ConvTranspose2d(prev, w, kernel_size=4, stride=2, padding=1), nn.ReLU(inplace=True)]
            prev = w
        layers.append(nn.ConvTranspose2d(prev, num_classes, kernel_size=4, stride=2, padding=1))
        self.decoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        logits = self.decoder(self.encoder(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_model(family="resnet")
def resnet18(in_channels: int = 3, num_classes: int = 1, pretrained: bool = False) -> ResNetSeg:
    """ResNet-18 encoder, 4 transposed convs 512-256-128-64, bilinear upsampling; no skips."""
    return ResNetSeg(in_channels, num_classes, "resnet18", pretrained)


@register_model(family="resnet")
def resnet50(in_channels: int = 3, num_classes: int = 1, pretrained: bool = False) -> ResNetSeg:
    """ResNet-50 encoder, 4 transposed convs 2048-512-256-128, bilinear upsampling; no skips."""
    return ResNetSeg(in_channels, num_classes, "resnet50", pretrained)
