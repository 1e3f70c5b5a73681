"""FPGM (He et al., CVPR 2019): filters near the layer's geometric median are the redundant ones."""

import torch

from apib.criteria._common import check_weight


def fpgm_scores(weight: torch.Tensor) -> torch.Tensor:
    """weight: (C_out, C_in, *kernel) of the producer conv (any ≥2-D layout with C_out first).

    Returns (C_out,) float64 on weight's device: the sum of Euclidean distances from each flattened
    filter to all filters of the layer (a filter close to the others, i.e. to their geometric median,
    scores low and is pruned first). Computed in float64 as the original's scipy cdist, and by direct
    differences rather than the ‖x‖² + ‖y‖² − 2xᵀy expansion, which cancels for nearby filters.
    """
    check_weight(weight)
    w = weight.detach().flatten(1).to(torch.float64)
    return torch.cdist(w, w, compute_mode="donot_use_mm_for_euclid_dist").sum(1)
