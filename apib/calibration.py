"""Calibration: the calibration images run through a model once, each hooked module's input and output
handed to a sink as they pass."""

import logging

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def inputs_of(batch):
    """The images of a loader batch: a tensor, or the first item of a (images, labels, ...) tuple."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0], batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
    raise ValueError(
        f"calib_loader must yield tensors or (images, labels) tuples, got a {type(batch).__name__}"
    )


@torch.no_grad()
def calibrate(
    model, loader, sinks: dict, calib_size: int | None, device, progress, desc="calibration", after_batch=None
):
    """Runs the calibration images through `model`; for every batch, sinks[name](input, output) receives
    that module's input and output on the device, then after_batch(labels) (if given) the batch's labels
    on the device (None for bare images). Returns the class labels (n,), or None when the loader yields
    bare images."""

    def hook(sink):
        def call(_module, args, out) -> None:  # returns None: the output passes on unchanged
            sink(args[0].detach(), out.detach())

        return call

    hooks = [model.get_submodule(name).register_forward_hook(hook(sink)) for name, sink in sinks.items()]
    labels, seen, size = [], 0, None
    try:
        bar = tqdm(total=calib_size, desc=desc, unit="img", disable=not progress)
        for i, batch in enumerate(loader):
            images, y = inputs_of(batch)
            if calib_size is not None:
                images = images[: calib_size - seen]
                y = None if y is None else y[: calib_size - seen]
            check_images(images, i, size)
            size = images.shape[1:]
            model(images.to(device))
            y = None if y is None else y.to(device)
            if y is not None:
                labels.append(y)
            if after_batch is not None:
                after_batch(y)
            seen += images.shape[0]
            bar.update(images.shape[0])
            if calib_size is not None and seen >= calib_size:
                break
        bar.close()
    finally:
        for h in hooks:
            h.remove()
    if seen < 2:
        raise ValueError(f"calib_loader gave {seen} image(s); the statistics need at least 2")
    if calib_size is not None and seen < calib_size:
        logger.warning("calib_loader ran out after %d images (calib_size = %d)", seen, calib_size)
    return torch.cat(labels) if labels and sum(map(len, labels)) == seen else None


def check_images(images: torch.Tensor, i: int, size) -> None:
    """Batch `i` of the calibration images: finite, and of the image `size` of the batches before it
    (None for the first): every layer's inputs over all batches are concatenated."""
    if size is not None and images.shape[1:] != size:
        raise ValueError(
            f"calib_loader's batches must have the same image size: batch {i} has {tuple(images.shape[1:])}, "
            f"the batches before it {tuple(size)}"
        )
    if images.is_floating_point() and not bool(torch.isfinite(images).all()):
        raise ValueError(f"calibration images contain NaN or infinite values (batch {i} of calib_loader)")


def trace_input(loader, given, device) -> torch.Tensor:
    """One input batch for tracing and counting FLOPs: `given`, or the first calibration image."""
    if given is None:
        batch = next(iter(loader), None)
        if batch is None:
            raise ValueError("calib_loader yielded no batch: it must give at least 2 calibration images")
        given = inputs_of(batch)[0][:1]
    if not isinstance(given, torch.Tensor):
        raise ValueError(f"example_input must be a tensor (one input batch), got {type(given).__name__}")
    return given.to(device)
