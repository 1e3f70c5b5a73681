"""The kernel identity, defined once in Python: names, codes, default bandwidths, the direct-distance bound.

csrc/common.h defines the same codes (`enum class KernelKind`) and bound (`kDirectMaxD`) for the compiled
kernels; tests/test_kernel_identity.py checks that the two agree. Adding a kernel kind: a code and a
name here (and its default γ), the enum in common.h, and each backend's kernel function (torch_backend
`_kernel_rows`, triton_backend `_centered_gram_kernel`, the C++/CUDA element functions).
"""

import math

import torch

from apib_kernels.validation import check_number

LINEAR, GAUSSIAN, LAPLACE = 0, 1, 2
"""The op's `kernel` codes (csrc/common.h KernelKind)."""

KERNELS = {"linear": LINEAR, "gaussian": GAUSSIAN, "laplace": LAPLACE}
"""Kernel names -> codes, for feature maps and float outputs."""

LABEL_KERNELS = ("delta", "delta_norm")
"""Kernels on (n,) class labels: "delta" 1[y_i = y_j]; "delta_norm" 1[y_i = y_j] / n_c, n_c the number of
samples of y_i's class among the Gram's n (pyHSICLasso's classification kernel)."""

Y_KERNELS = (*KERNELS, *LABEL_KERNELS)
"""Kernels an output y may take."""

DIRECT_MAX_D = 8
"""Up to this many features per sample, distances come from explicit differences rather than the norm
expansion (csrc/common.h kDirectMaxD; the op contract there says why)."""


def default_gamma(kernel: str, dim: int) -> float:
    """The reference code's bandwidths: Laplace sqrt(0.5 / D), Gaussian 1 / D (D = features per sample);
    1 for kernels without one."""
    if kernel == "laplace":
        return math.sqrt(0.5 / dim)
    if kernel == "gaussian":
        return 1.0 / dim
    return 1.0


def kernel_args(kernel, gamma, dim: int, names: tuple[str, str] = ("kernel", "gamma"), allowed=KERNELS):
    """(kernel, γ) checked: kernel one of `allowed`, γ a positive number or None for the default of D = dim
    features. `names` are the arguments' names in the messages."""
    kname, gname = names
    if kernel not in allowed:
        raise ValueError(f"{kname} must be one of {tuple(allowed)}, got {kernel!r}")
    if gamma is None:
        return kernel, default_gamma(kernel, dim)
    return kernel, check_number(gamma, gname, positive=True)


def median_scales(x: torch.Tensor, kernel: str) -> torch.Tensor:
    """The median heuristic as feature scales: (C,) float64 factors s such that `kernel` with its fixed
    default γ (`default_gamma` of the D features per sample) on channel k scaled by s_k is channel k's
    own median-heuristic kernel, exp(−d/m_k) (Laplace) or exp(−d²/(2·m_k²)) (Gaussian): s_k = 1/(γ·m_k)
    and 1/(m_k·√(2γ)). d is the Euclidean distance between two samples of the channel, and m_k the
    median (the lower one for an even count) of its n(n−1)/2 pairwise distances in x (n, C, *spatial),
    or of its non-zero ones where that is 0 (a channel equal on most samples, as a ReLU map off on most
    images); a channel identical in every sample gets 1 (its centered Gram is zero whatever its scale).
    """
    if kernel not in ("laplace", "gaussian"):
        raise ValueError(
            f"the median heuristic sets a bandwidth: kernel must be 'laplace' or 'gaussian', got {kernel!r}"
        )
    n, c = x.shape[:2]
    if n < 2:
        raise ValueError(f"the median heuristic needs at least 2 samples, got {n}")
    f = x.detach().reshape(n, c, -1).transpose(0, 1).double()
    gamma = default_gamma(kernel, f.shape[2])
    i, j = torch.triu_indices(n, n, 1, device=f.device)
    d = torch.cdist(f, f, compute_mode="donot_use_mm_for_euclid_dist")[:, i, j]
    m = d.median(1).values
    m = torch.where(m > 0, m, d.masked_fill(d == 0, math.nan).nanmedian(1).values).nan_to_num(0.0)
    s = 1 / (gamma * m) if kernel == "laplace" else 1 / (m * math.sqrt(2 * gamma))
    return torch.where(m > 0, s, 1.0)
