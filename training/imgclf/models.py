"""torchvision architectures for transfer learning: build, load ImageNet weights, swap the head."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torchvision
from torch import nn


@dataclass(frozen=True)
class Architecture:
    """How to build one torchvision model and find its classification head."""

    name: str
    weights_enum: str  # attribute of torchvision.models holding the weight enum
    head_path: str  # dotted path of the final nn.Linear, e.g. "classifier.1" or "fc"


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("mobilenet_v2", "MobileNet_V2_Weights", "classifier.1"),
        Architecture("mobilenet_v3_small", "MobileNet_V3_Small_Weights", "classifier.3"),
        Architecture("mobilenet_v3_large", "MobileNet_V3_Large_Weights", "classifier.3"),
        Architecture("resnet18", "ResNet18_Weights", "fc"),
        Architecture("resnet34", "ResNet34_Weights", "fc"),
        Architecture("resnet50", "ResNet50_Weights", "fc"),
        Architecture("resnet101", "ResNet101_Weights", "fc"),
        Architecture("efficientnet_b0", "EfficientNet_B0_Weights", "classifier.1"),
        Architecture("efficientnet_b7", "EfficientNet_B7_Weights", "classifier.1"),
    )
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailable(RuntimeError):
    """Pretrained weights are neither in the weights channel, the torch cache, nor downloadable."""


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; choose one of {', '.join(sorted(ARCHITECTURES))}"
        ) from None


def _default_weights(arch: Architecture):
    # V1 everywhere: every listed architecture has it, and it is the file available offline
    # for MobileNetV2 (docs/architecture.md, "Offline weights"); V2 recipes differ by architecture.
    return getattr(torchvision.models, arch.weights_enum).IMAGENET1K_V1


def _check_hash_prefix(path: Path) -> None:
    """torchvision file names end in the first hex digits of the file's SHA-256."""
    stem = path.stem
    if "-" not in stem:
        return
    prefix = stem.rsplit("-", 1)[1]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(prefix):
        raise WeightsUnavailable(f"{path}: SHA-256 {digest[:12]}... does not match its name's {prefix}")


def load_pretrained_state_dict(arch_name: str, weights_dir: Optional[str] = None) -> dict:
    """ImageNet weights for ``arch_name``: from ``weights_dir`` (a network-isolated job's
    ``weights`` channel) if it holds the file, else torchvision's cache / download."""
    arch = get_architecture(arch_name)
    weights = _default_weights(arch)
    file_name = os.path.basename(weights.url)
    if weights_dir:
        candidates = [Path(weights_dir) / file_name, *Path(weights_dir).rglob(file_name)]
        for path in candidates:
            if path.is_file():
                _check_hash_prefix(path)
                return torch.load(path, map_location="cpu", weights_only=True)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, hash mismatch, no network
        hub = Path(torch.hub.get_dir()) / "checkpoints" / file_name
        raise WeightsUnavailable(
            f"ImageNet weights for {arch_name} ({file_name}) are not available offline: "
            f"put the file in {hub} or in the job's 'weights' channel, or pass --pretrained false "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _replace_module(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_path, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


def build_model(
    arch_name: str,
    num_classes: int,
    pretrained: bool = True,
    weights_dir: Optional[str] = None,
    freeze_backbone: bool = False,
) -> nn.Module:
    """A torchvision model with ImageNet weights (optional) and a fresh ``num_classes`` head."""
    arch = get_architecture(arch_name)
    builder: Callable[..., nn.Module] = getattr(torchvision.models, arch.name)
    model = builder(weights=None)
    if pretrained:
        model.load_state_dict(load_pretrained_state_dict(arch_name, weights_dir))
    old_head = model.get_submodule(arch.head_path)
    _replace_module(model, arch.head_path, nn.Linear(old_head.in_features, num_classes))
    if freeze_backbone:
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith(arch.head_path + ".")
    return model
