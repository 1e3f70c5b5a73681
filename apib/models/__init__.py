"""Reference architectures: CIFAR ResNet-20/56/110, VGG-16, GoogLeNet; torchvision ResNet-50.

``get_model(name, num_classes, pretrained_path)`` builds one by name and optionally loads its weights.
"""

from collections.abc import Callable
from pathlib import Path

import torchvision
from torch import nn

from apib.io import check_state_dict, load_checkpoint
from apib_kernels.validation import check_int

from .cifar_resnet import resnet20, resnet56, resnet110
from .googlenet import googlenet
from .vgg import vgg16

__all__ = [
    "MODELS",
    "get_model",
    "model_names",
    "load_state_dict",
    "resnet20",
    "resnet56",
    "resnet110",
    "vgg16",
    "googlenet",
    "resnet50",
]


def resnet50(num_classes: int = 1000) -> nn.Module:
    """torchvision's ImageNet ResNet-50 (bottleneck blocks, about 25.6M parameters), untrained."""
    return torchvision.models.resnet50(weights=None, num_classes=num_classes)


# name → constructor taking num_classes; each returns an untrained model.
MODELS: dict[str, Callable[[int], nn.Module]] = {
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "vgg16": vgg16,
    "googlenet": googlenet,
    "resnet50": resnet50,
}

# Training scripts commonly save {"net": ...} (kuangliu), {"state_dict": ...} or {"model": ...}.
_WRAPPER_KEYS = ("state_dict", "net", "model")


def model_names() -> list[str]:
    """The names ``get_model`` accepts."""
    return list(MODELS)


def load_state_dict(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights saved with ``torch.save`` into ``model`` (strictly: every key must match) and return it.

    Accepts a plain state dict or one wrapped under ``state_dict``/``net``/``model``, with or without
    the ``module.`` prefix that ``nn.DataParallel`` adds. Only tensors and plain containers are
    unpickled (``weights_only=True``). Weights of another architecture or class count raise
    ``ValueError`` listing the keys that differ.
    """
    state = load_checkpoint(path)
    if isinstance(state, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ValueError(
            f"pretrained_path {str(path)!r} does not hold a state dict (got {type(state).__name__})"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    check_state_dict(model, state, f"the weights in {str(path)!r}")
    model.load_state_dict(state)
    return model


def get_model(name: str, num_classes: int = 10, pretrained_path: str | Path | None = None) -> nn.Module:
    """Build the model ``name`` (see ``model_names()``) with ``num_classes`` outputs.

    The CIFAR models take ``(n, 3, 32, 32)`` inputs (any size ≥ 16 works), ResNet-50 ``(n, 3, 224, 224)``;
    all return ``(n, num_classes)`` logits. With ``pretrained_path``, its weights are loaded on the CPU.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(MODELS)}")
    model = MODELS[name](check_int(num_classes, "num_classes", 1))
    if pretrained_path is not None:
        load_state_dict(model, pretrained_path)
    return model
