"""Input checks shared by the criteria, and the per-image mean that HRank and CHIP accumulate."""

import torch

from apib.streaming import sum_over_processes
from apib_kernels.validation import check_finite as _check_finite
from apib_kernels.validation import check_int
from apib_kernels.validation import check_tensor as _check_tensor

MODES = ("fast", "faithful")
# Elements per batched linalg call when batch_size is None: 128 MiB of float64, a few times that in
# LAPACK/cuSOLVER workspace.
CHUNK_ELEMENTS = 1 << 24


def check_float_tensor(t, name: str, min_dim: int, max_dim: int | None, shape: str) -> None:
    """ValueError naming `name` unless t is a non-empty, finite floating-point tensor of the given rank."""
    _check_tensor(t, name)
    if t.dim() < min_dim or (max_dim is not None and t.dim() > max_dim):
        raise ValueError(f"{name} must have shape {shape}, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    _check_finite(t, name)


def check_weight(weight) -> None:
    check_float_tensor(weight, "weight", 2, None, "(C_out, C_in, *kernel) with at least 2 dims")


def check_fmaps(fmaps) -> None:
    check_float_tensor(fmaps, "fmaps", 4, 4, "(N, C, H, W)")


def check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def linalg_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype both modes compute in: float64 stays, everything else (as in HRank) is float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def chunk_size(batch_size: int | None, elements_per_matrix: int) -> int:
    """Matrices per batched call: batch_size, or as many as fit in CHUNK_ELEMENTS."""
    return batch_size if batch_size is not None else max(1, CHUNK_ELEMENTS // max(1, elements_per_matrix))


class MeanAccumulator:
    """Per-channel mean over images of a per-image score, fed one batch of feature maps at a time.

    Subclasses define `_batch_sum(fmaps) -> (C,)`, the score summed over the batch's images on fmaps'
    device. Sums are exact (int64) or float64, so any split of the images into batches gives the same
    scores up to float64 rounding.
    """

    def __init__(self, *, mode: str = "fast", batch_size: int | None = None):
        self.mode = check_mode(mode)
        self.batch_size = None if batch_size is None else check_int(batch_size, "batch_size", 1)
        self.num_images = 0
        self._sum: torch.Tensor | None = None

    def update(self, fmaps: torch.Tensor) -> "MeanAccumulator":
        """Adds a batch of maps (N, C, H, W); C must match earlier batches. Returns self."""
        check_fmaps(fmaps)
        if self._sum is not None and fmaps.shape[1] != self._sum.numel():
            raise ValueError(
                f"fmaps must have the {self._sum.numel()} channels of the earlier batches, "
                f"got shape {tuple(fmaps.shape)}"
            )
        with torch.no_grad():
            batch = self._batch_sum(fmaps.detach())
        self._sum = batch if self._sum is None else self._sum + batch.to(self._sum.device)
        self.num_images += fmaps.shape[0]
        return self

    def scores(self) -> torch.Tensor:
        """(C,) float64 mean score per channel, on the device of the first batch."""
        if self._sum is None:
            raise RuntimeError("no feature maps accumulated yet: call update(fmaps) first")
        return self._sum.to(torch.float64) / self.num_images

    def _batch_sum(self, fmaps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def sum_accumulators_over_processes(accumulators: list[MeanAccumulator]) -> None:
    """Adds the sums and image counts of every process of the torch.distributed group into each of
    `accumulators` (the same layers, in the same order, on every process), with one all_reduce: their
    scores become the means over all processes' images, as one process calibrating on all of them
    would give (to float64 rounding; HRank's integer sums exactly)."""
    n = len(accumulators)
    counts = [torch.tensor([float(acc.num_images)], dtype=torch.float64) for acc in accumulators]
    summed = sum_over_processes([acc._sum for acc in accumulators] + counts)
    for acc, total, count in zip(accumulators, summed[:n], summed[n:], strict=True):
        acc._sum, acc.num_images = total, int(count.item())
