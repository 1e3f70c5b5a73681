"""File input and output shared by the pipeline: atomic writes, and checkpoints read without running code.

A leaf module (it imports nothing from `apib`), so that `apib.checkpoint` and `apib.models` can both
use it without importing each other.
"""

import os
import secrets
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn


@contextmanager
def atomic_path(path, suffix: str = ".tmp"):
    """Yields a temporary file name next to `path`; on success it is renamed to `path`, so a crash never
    leaves a torn file behind. `suffix` keeps writers that infer the format from the name happy. The
    file is created with the user's umask, as `open` would create `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield str(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(obj, path) -> None:
    """torch.save(obj, path), atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path) -> dict:
    """torch.load(path, weights_only=True) on the CPU. A missing file is a FileNotFoundError; a file that
    is not a checkpoint, or holds anything but tensors and plain containers, a ValueError naming it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # torch.load raises many types for a file that is not a checkpoint
        # A refusal of weights_only says why after this marker, below a paragraph about the option.
        _, marker, reason = str(err).partition("WeightsUnpickler error:")
        lines = [ln.strip() for ln in (reason if marker else str(err)).splitlines() if ln.strip()]
        detail = lines[0] if lines else ""
        raise ValueError(
            f"{str(path)!r} is not a checkpoint that loads with torch.load(weights_only=True): "
            f"{type(err).__name__}{': ' + detail if detail else ''}"
        ) from err


def check_state_dict(model: nn.Module, state: dict, what: str) -> None:
    """Raises ValueError, in one line, unless `state` has exactly `model`'s keys, each with its shape.
    `what` names the weights in the message (a file, and the architecture they were meant for)."""

    def shape(v):
        return tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__

    expected = {k: shape(v) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {shape(state[k])} where the model has {s}"
        for k, s in expected.items()
        if k in state and shape(state[k]) != s
    ]
    problems = [
        f"{len(items)} {label} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mismatched", wrong))
        if items
    ]
    if problems:
        raise ValueError(f"{what} do not fit the model: " + "; ".join(problems))
