"""The kernel identity, defined once in Python: names, codes, default bandwidths, the direct-distance bound.

csrc/common.h defines the same codes (`enum class KernelKind`) and bound (`kDirectMaxD`) for the compiled
kernels; tests/test_kernel_identity.py checks that the two agree. Adding a kernel kind: a code and a
name here (and its default γ), the enum in common.h, and each backend's kernel function (torch_backend
`_kernel_rows`, triton_backend `_centered_gram_kernel`, the C++/CUDA element functions).
"""

import math

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
