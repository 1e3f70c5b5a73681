"""Saving and loading pruned models: a state dict plus the width configuration, no pickled code.

A pruned file loads with `torch.load(path, weights_only=True)`. `load_pruned` rebuilds the network by
creating the unpruned architecture (from `apib.models`, or given by the caller), repeating the recorded
surgery, and loading the weights.
"""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from apib.pruning import PruneResult, apply_pruning

FORMAT = "apib-pruned/1"


@contextmanager
def atomic_path(path, suffix: str = ".tmp"):
    """Yields a temporary file name next to `path`; on success it is renamed to `path`, so a crash never
    leaves a torn file behind. `suffix` keeps writers that infer the format from the name happy."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_atomic(obj, path) -> None:
    """torch.save(obj, path), atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_pruned(result_or_model, path, *, arch: str | None = None, num_classes: int | None = None) -> None:
    """Writes a pruned model (a `PruneResult` or its `.model`) to `path`. With `arch` (a name known to
    `apib.models.get_model`) and `num_classes`, `load_pruned(path)` rebuilds it on its own; without,
    the caller passes the unpruned architecture to `load_pruned`."""
    model = result_or_model.model if isinstance(result_or_model, PruneResult) else result_or_model
    if not isinstance(model, nn.Module) or not hasattr(model, "apib_pruning"):
        raise ValueError("save_pruned needs a PruneResult or a model returned by apib.prune")
    write_atomic(
        {
            "format": FORMAT,
            "arch": arch,
            "num_classes": num_classes,
            "pruning": model.apib_pruning,
            "state_dict": model.state_dict(),
        },
        path,
    )


def load_checkpoint(path) -> dict:
    """torch.load(path, weights_only=True) on the CPU, with a clear error for a missing file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_pruned(path, model: nn.Module | None = None) -> nn.Module:
    """The pruned model saved at `path`. `model`: the unpruned architecture (weights irrelevant),
    needed when the file names no `arch`; it is pruned in place and returned."""
    return from_checkpoint(load_checkpoint(path), model, path)


def from_checkpoint(ckpt, model: nn.Module | None = None, path="the checkpoint") -> nn.Module:
    """`load_pruned` on a file already read with `load_checkpoint` (`path` names it in errors)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a pruned-model file written by apib.save_pruned")
    if model is None:
        if ckpt["arch"] is None:
            raise ValueError(
                f"{str(path)!r} does not name its architecture: "
                "pass the unpruned model as load_pruned(path, model)"
            )
        from apib.models import get_model

        model = get_model(ckpt["arch"], num_classes=ckpt["num_classes"])
    apply_pruning(model, ckpt["pruning"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
