"""Saving and loading pruned models: a state dict plus the width configuration, no pickled code.

A pruned file loads with `torch.load(path, weights_only=True)`. `load_pruned` rebuilds the network by
creating the unpruned architecture (from `apib.models`, or given by the caller), repeating the recorded
surgery, and loading the weights; the recorded configuration is checked against the architecture and
the stored weights first, so a damaged or mismatched file is a `ValueError` naming it, not a crash or
a huge allocation.
"""

import math

import torch
from torch import nn

from apib.io import check_state_dict, load_checkpoint, write_atomic
from apib.models import get_model
from apib.pruning import PruneResult, apply_pruning
from apib_kernels.validation import is_int

FORMAT = "apib-pruned/1"
MAX_INPUT_ELEMENTS = 1 << 24
"""The largest example input (elements) a pruned file may ask `load_pruned` to trace the model with."""


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


def load_pruned(path, model: nn.Module | None = None) -> nn.Module:
    """The pruned model saved at `path`. `model`: the unpruned architecture (weights irrelevant),
    needed when the file names no `arch`; it is pruned in place and returned."""
    return from_checkpoint(load_checkpoint(path), model, path)


def from_checkpoint(ckpt, model: nn.Module | None = None, path="the checkpoint") -> nn.Module:
    """`load_pruned` on a file already read with `load_checkpoint` (`path` names it in errors).

    Before anything is built, the recorded configuration is checked: every pruned layer exists in the
    architecture and keeps a non-empty set of distinct channel indices in range, as many as its stored
    weight has; the input shape is plausible. Without `model`, the architecture is built and pruned on
    the meta device and compared with the stored weights before any memory is allocated."""
    name = repr(str(path))
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{name} is not a pruned-model file written by apib.save_pruned")
    missing = [k for k in ("arch", "num_classes", "pruning", "state_dict") if k not in ckpt]
    if missing:
        raise ValueError(f"{name} lacks {', '.join(map(repr, missing))}: not a complete pruned-model file")
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{name}: its state_dict must map names to tensors")
    config = _check_config(ckpt["pruning"], name)
    on_meta = model is None
    if on_meta:
        if ckpt["arch"] is None:
            raise ValueError(
                f"{name} does not name its architecture: pass the unpruned model as load_pruned(path, model)"
            )
        try:
            with torch.device("meta"):
                model = get_model(ckpt["arch"], num_classes=ckpt["num_classes"])
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from err
    _check_kept(model, config["kept"], state, name)
    try:
        apply_pruning(model, config)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err
    arch = f"{ckpt['arch']} with {ckpt['num_classes']} classes" if on_meta else type(model).__name__
    check_state_dict(model, state, f"the weights in {name} (for {arch}, pruned as recorded)")
    if on_meta:
        model.to_empty(device="cpu")
    model.load_state_dict(state)
    return model.eval()


def _check_config(config, name: str) -> dict:
    """The pruning configuration of a file, with its types and input shape checked."""
    if not (isinstance(config, dict) and isinstance(config.get("kept"), dict) and "input_shape" in config):
        raise ValueError(f"{name}: its pruning configuration must hold 'input_shape' and a 'kept' dict")
    shape = config["input_shape"]
    if not (
        isinstance(shape, (list, tuple))
        and 2 <= len(shape) <= 5
        and all(is_int(d) and d >= 1 for d in shape)
        and math.prod(shape) <= MAX_INPUT_ELEMENTS
    ):
        raise ValueError(
            f"{name}: input_shape {shape!r} is not an input shape (2 to 5 positive sizes, "
            f"at most {MAX_INPUT_ELEMENTS} elements)"
        )
    for layer, kept in config["kept"].items():
        if not isinstance(layer, str) or not isinstance(kept, (list, tuple)):
            raise ValueError(f"{name}: 'kept' must map layer names to lists of channel indices")
    return config


def _check_kept(model: nn.Module, kept: dict, state: dict, name: str) -> None:
    """Each pruned layer exists in `model` (unpruned) and keeps distinct in-range channels, as many as
    its stored weight has."""
    for layer, channels in kept.items():
        try:
            weight = model.get_submodule(layer).weight
        except AttributeError:
            raise ValueError(
                f"{name}: the pruning configuration names layer {layer!r}, which "
                f"{type(model).__name__} has no weighted module of"
            ) from None
        total = weight.shape[0]
        if not channels:
            raise ValueError(f"{name}: layer {layer!r} keeps no channel")
        bad = next((i for i in channels if not (is_int(i) and 0 <= i < total)), None)
        if bad is not None:
            raise ValueError(f"{name}: layer {layer!r} keeps channel {bad!r}, not an index in [0, {total})")
        if len(set(channels)) != len(channels):
            raise ValueError(f"{name}: layer {layer!r} lists a kept channel more than once")
        stored = state.get(f"{layer}.weight")
        if stored is None or stored.dim() == 0 or stored.shape[0] != len(channels):
            found = "no weight" if stored is None else f"a weight of shape {tuple(stored.shape)}"
            raise ValueError(
                f"{name}: layer {layer!r} keeps {len(channels)} channels but the state_dict has {found}"
            )
