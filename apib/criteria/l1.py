"""L1-norm filter pruning (Li et al., ICLR 2017): a filter's score is the sum of its absolute weights."""

import torch

from apib.criteria._common import check_weight


def l1_scores(weight: torch.Tensor) -> torch.Tensor:
    """weight: (C_out, C_in, *kernel) of the producer conv (any ≥2-D layout with C_out first).

    Returns (C_out,) float64 on weight's device: Σ|W| over each output filter, summed in float64 so the
    order of near-equal filters does not depend on float32 rounding.
    """
    check_weight(weight)
    return weight.detach().flatten(1).abs().sum(1, dtype=torch.float64)
