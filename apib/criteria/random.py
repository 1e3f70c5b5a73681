"""Random channel scores: the baseline that any criterion must beat."""

import torch

from apib_kernels.validation import check_int


def random_scores(num_channels: int, *, seed: int = 0) -> torch.Tensor:
    """Returns (num_channels,) float64 on the CPU, uniform in [0, 1), reproducible from seed."""
    num_channels = check_int(num_channels, "num_channels", 1)
    generator = torch.Generator().manual_seed(check_int(seed, "seed", 0))
    return torch.rand(num_channels, generator=generator, dtype=torch.float64)
