"""CHIP (Sui et al., NeurIPS 2021): channel independence measured by the nuclear norm.

For image i let A_i be the C×(H·W) matrix of its maps. Channel j scores the mean over images of
‖A_i‖_* − ‖A_i with row j zeroed‖_*: how much of the maps' "volume" only that channel carries.

- "faithful": CHIP's calculate_ci.py — for every image i and channel j, clone the whole batch, zero
  row j of image i, one CPU SVD nuclear norm of that matrix (`.item()`), subtracted from image i's full
  nuclear norm; in the maps' dtype (float32, or float64 for float64 maps). The original also rounds the
  saved maps to 4 decimals; that is a property of its storage, not of the criterion, and is not done.
- "fast": exact, without SVDs of C×HW matrices. ‖A‖_* = Σ √λ(G) for the Gram G = A Aᵀ (C×C), and
  zeroing row j leaves the spectrum of G's principal minor without row and column j. So one float64
  Gram per image, then batched `eigvalsh` of its C minors. When H·W < C the smaller H·W side is used:
  AᵀA (HW×HW) minus the outer product of row j has the same nonzero spectrum as the reduced Gram.
  Cost per image ≈ C·HW·min(C, HW) for the Gram plus C·min(C, HW)³ for the eigenvalues, against the
  faithful loop's C SVDs (C²·HW·min(C, HW) in all) and C copies of the whole batch.

Agreement (tests/test_criteria.py): fast matches a float64 SVD reference to ~1e-15 of mean_i ‖A_i‖_*
on full-rank maps; where a minor is singular, the square root of its near-zero eigenvalues' float64
rounding adds up to ~1e-8 of ‖A_i‖_*. On float32 maps faithful and fast agree within
FAITHFUL_RTOL · mean_i ‖A_i‖_* (measured ≤ 2e-7, ResNet-50 layer shapes included): the faithful difference
of two float32 nuclear norms carries their float32 rounding, so small scores can be off by a large
fraction of themselves in faithful mode, not in fast.
"""

import torch

from apib.criteria._common import MeanAccumulator, chunk_size, linalg_dtype

FAITHFUL_RTOL = 1e-5


def _sqrt_eig_sum(grams: torch.Tensor) -> torch.Tensor:
    """(..., m, m) symmetric PSD → (...) Σ √λ: the nuclear norm of any A with AᵀA or AAᵀ = gram.
    Rounding can make zero eigenvalues slightly negative; they are clamped to 0."""
    return torch.linalg.eigvalsh(grams).clamp_min(0).sqrt().sum(-1)


def _chip_fast(a: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    """a: (N, C, D) maps. Returns (N, C) float64 per-image scores, on a's device."""
    n, c, d = a.shape
    a64 = a.to(torch.float64)
    if c <= d:
        gram = a64 @ a64.mT  # (N, C, C)
        others = torch.arange(c, device=a.device).expand(c, c)
        others = others[~torch.eye(c, dtype=torch.bool, device=a.device)].view(c, c - 1)

        def reduced(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
            keep = others[j]
            return gram[i[:, None, None], keep[:, :, None], keep[:, None, :]]

        side = c - 1
    else:
        gram = a64.mT @ a64  # (N, D, D): A_{-j}ᵀA_{-j} = AᵀA − a_j a_jᵀ, smaller than the C×C minors

        def reduced(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
            row = a64[i, j]
            return gram[i] - row[:, :, None] * row[:, None, :]

        side = d
    full = _sqrt_eig_sum(gram)
    pairs = torch.arange(n * c, device=a.device)
    step = chunk_size(batch_size, side * side)
    rest = torch.cat([_sqrt_eig_sum(reduced(p // c, p % c)) for p in pairs.split(step)])
    return full[:, None] - rest.view(n, c)


def _chip_faithful(a: torch.Tensor) -> torch.Tensor:
    """a: (N, C, D) maps on the CPU. Returns (N, C) float64 per-image scores, CHIP's loop as published."""
    n, c = a.shape[:2]
    scores = torch.empty(n, c, dtype=torch.float64)
    for i in range(n):
        for j in range(c):
            copy = a.clone()  # the original copies the whole batch for every (image, channel) pair
            copy[i, j, :] = 0
            scores[i, j] = torch.linalg.matrix_norm(copy[i], ord="nuc").item()
        full = torch.linalg.matrix_norm(a[i], ord="nuc").item()
        scores[i] = full - scores[i]
    return scores


class ChipAccumulator(MeanAccumulator):
    """Mean channel independence over batches of maps: `ChipAccumulator().update(b1).update(b2).scores()`.

    batch_size: Gram minors per batched `eigvalsh` call in fast mode (None: about 2²⁴ elements per call).
    """

    def _batch_sum(self, fmaps: torch.Tensor) -> torch.Tensor:
        a = fmaps.flatten(2)
        if self.mode == "faithful":
            per_image = _chip_faithful(a.to("cpu", linalg_dtype(fmaps)))
        else:
            per_image = _chip_fast(a, self.batch_size)
        return per_image.sum(0).to(fmaps.device)


def chip_scores(fmaps: torch.Tensor, *, mode: str = "fast", batch_size: int | None = None) -> torch.Tensor:
    """CHIP channel-independence scores of one batch of maps.

    fmaps: (N, C, H, W) floating point, the layer's post-activation maps. Returns (C,) float64 on
    fmaps' device, the mean over the N images of each channel's nuclear-norm contribution (higher =
    keep). For several batches use `ChipAccumulator`.
    """
    return ChipAccumulator(mode=mode, batch_size=batch_size).update(fmaps).scores()
