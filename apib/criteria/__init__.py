"""Channel importance criteria: L1, FPGM, HRank, CHIP, random (APIB lives in apib.pruning).

Every criterion scores the C output channels of one prunable layer; higher = more important = kept.
Scores are (C,) float64. Inputs, by `CRITERIA[name].needs`:
  "weight"  the producer conv's weight (C, C_in, k, k)          l1_scores, fpgm_scores
  "fmaps"   its post-activation maps (N, C, H, W) (the next     hrank_scores, chip_scores; over several
            conv's input)                                       batches HRankAccumulator, ChipAccumulator
  "none"    only the channel count C                            random_scores
`keep_indices(scores, n_keep)` turns scores into the channels to keep.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from apib.criteria._common import MODES, MeanAccumulator
from apib.criteria.chip import ChipAccumulator, chip_scores
from apib.criteria.fpgm import fpgm_scores
from apib.criteria.hrank import HRankAccumulator, hrank_scores
from apib.criteria.l1 import l1_scores
from apib.criteria.random import random_scores
from apib_kernels.validation import check_finite as _check_finite
from apib_kernels.validation import check_int
from apib_kernels.validation import check_tensor as _check_tensor


@dataclass(frozen=True)
class Criterion:
    """A registered criterion: what it reads ("weight", "fmaps" or "none"), its scoring function, and
    for feature-map criteria the accumulator class that averages over batches."""

    name: str
    needs: str
    fn: Callable[..., torch.Tensor]
    accumulator: type[MeanAccumulator] | None = None


CRITERIA = {
    c.name: c
    for c in (
        Criterion("l1", "weight", l1_scores),
        Criterion("fpgm", "weight", fpgm_scores),
        Criterion("hrank", "fmaps", hrank_scores, HRankAccumulator),
        Criterion("chip", "fmaps", chip_scores, ChipAccumulator),
        Criterion("random", "none", random_scores),
    )
}


def keep_indices(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """scores: (C,) real. Returns (n_keep,) int64 on scores' device: the indices of the n_keep highest
    scores in ascending index order; equal scores favour the lower index, so the choice is deterministic.
    """
    _check_tensor(scores, "scores")
    if scores.dim() != 1 or scores.numel() == 0:
        raise ValueError(f"scores must have shape (C,) with C >= 1, got shape {tuple(scores.shape)}")
    _check_finite(scores, "scores")
    c = scores.numel()
    n_keep = check_int(n_keep, "n_keep", 1)
    if n_keep > c:
        raise ValueError(f"n_keep must be in [1, {c}] (the number of scores), got {n_keep}")
    # A stable descending sort keeps equal scores in index order, so ties go to the lower index.
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:n_keep].sort().values


__all__ = [
    "CRITERIA",
    "MODES",
    "ChipAccumulator",
    "Criterion",
    "HRankAccumulator",
    "chip_scores",
    "fpgm_scores",
    "hrank_scores",
    "keep_indices",
    "l1_scores",
    "random_scores",
]
