"""The PyTorch side of the model, shared by the export, fine-tuning and their check.

`Served` is the network as Triton serves it: uint8 RGB [N,224,224,3] in, the normalisation
inside, one score per hashtag out. Fine-tuning trains the same network behind the same
`Normalise`, so it learns from exactly what it will be given. Imported only where torch is
installed (.venv-torch, or a user's machine).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torchvision.models import ResNet50_Weights, resnet50

from .standin import IMAGENET_MEAN, IMAGENET_STD

IMAGENET_WEIGHTS = ResNet50_Weights.IMAGENET1K_V2


class Normalise(torch.nn.Module):  # type: ignore[misc]
    """uint8 NHWC pixels → float NCHW, scaled and standardised with ImageNet's statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, image: Any) -> Any:
        return (image.permute(0, 3, 1, 2).float() - self.mean) / self.std


class Served(torch.nn.Module):  # type: ignore[misc]
    """Pixels in, hashtag scores out: softmax over the network's classes, summed per hashtag."""

    def __init__(self, net: Any, mapping: npt.NDArray[np.float32]) -> None:
        super().__init__()
        self.normalise = Normalise()
        self.net = net.eval()
        self.register_buffer("mapping", torch.from_numpy(mapping))

    def forward(self, image: Any) -> Any:
        return torch.softmax(self.net(self.normalise(image)), dim=1) @ self.mapping


def scores(module: Served, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    with torch.no_grad():
        return np.asarray(module.eval()(torch.from_numpy(images)).numpy(), dtype=np.float32)


def imagenet_resnet50(pretrained: bool) -> tuple[Any, list[str]]:
    """torchvision's ResNet50 with its 1000 ImageNet classes; `pretrained=False` is weights=None
    (torchvision's own initialisation, seeded by the caller): the one way to run the ImageNet
    path where the weights cannot be downloaded."""
    net = resnet50(weights=IMAGENET_WEIGHTS if pretrained else None)
    return net, list(IMAGENET_WEIGHTS.meta["categories"])


def resnet50_head(num_classes: int, init: str) -> Any:
    """ResNet50 with a fresh `num_classes` head, its backbone from `init`: "imagenet" or "none"."""
    net, _ = imagenet_resnet50(pretrained=init == "imagenet")
    net.fc = torch.nn.Linear(net.fc.in_features, num_classes)
    return net
