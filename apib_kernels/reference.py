"""Float64 reference: the definitions, written for clarity, not speed. Every kernel is tested against it.

Deliberately independent of the fast paths: explicit pairwise differences (no norm expansion, no
mean removal) and explicit centering with H = I - 11^T/n. The default bandwidths are a convention, not
a computation to check, so the oracle takes them from `apib_kernels.kernels` with the fast paths (a
second copy could not catch a wrong convention; tests/test_kernel_identity.py pins the values).
"""

import torch

from apib_kernels.kernels import default_gamma


def kernel_matrix(f: torch.Tensor, kernel: str, gamma: float | None = None) -> torch.Tensor:
    """f (n, D) float64 features -> (n, n) kernel matrix; kernels "delta" and "delta_norm" take (n,)
    labels (delta_norm: 1[y_i = y_j] / n_c, n_c the size of y_i's class among the n samples)."""
    if kernel in ("delta", "delta_norm"):
        same = (f[:, None] == f[None, :]).double()
        if kernel == "delta":
            return same
        counts = torch.stack([(f == f[i]).sum() for i in range(len(f))]).double()
        return same / counts[:, None]
    f = f.double()
    if kernel == "linear":
        return f @ f.T
    gamma = default_gamma(kernel, f.shape[1]) if gamma is None else gamma
    sq = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
    if kernel == "gaussian":
        return torch.exp(-gamma * sq)
    if kernel == "laplace":
        return torch.exp(-gamma * sq.sqrt())
    raise ValueError(f"unknown kernel {kernel!r}")


def center(k: torch.Tensor) -> torch.Tensor:
    n = k.shape[-1]
    h = torch.eye(n, dtype=torch.float64, device=k.device) - 1.0 / n
    return h @ k @ h


def centered_gram(x: torch.Tensor, kernel: str = "laplace", gamma: float | None = None) -> torch.Tensor:
    """x (n, C, *spatial) -> (C, n, n) float64 centered Grams."""
    n, c = x.shape[:2]
    f = x.detach().double().reshape(n, c, -1)
    return torch.stack([center(kernel_matrix(f[:, k], kernel, gamma)) for k in range(c)])


def output_gram(y: torch.Tensor, kernel: str | None = None, gamma: float | None = None) -> torch.Tensor:
    """y (n,) integer labels (delta kernel) or (n, *) floats -> (n, n) float64 centered Gram."""
    if kernel is None:
        kernel = "delta" if not y.is_floating_point() else "laplace"
    f = y if kernel in ("delta", "delta_norm") else y.detach().double().reshape(y.shape[0], -1)
    return center(kernel_matrix(f, kernel, gamma))


def hsic_matrix(x, y, kernel="laplace", y_kernel=None, gamma=None, y_gamma=None):
    """-> Q (C, C) = <K_k, K_l>_F, b (C,) = <K_k, L>_F, c = ||L||_F^2 with centered Grams, float64."""
    if y_kernel is None and y.is_floating_point():
        y_kernel = kernel
    k = centered_gram(x, kernel, gamma)
    ell = output_gram(y, y_kernel, y_gamma)
    q = torch.einsum("kij,lij->kl", k, k)
    b = torch.einsum("kij,ij->k", k, ell)
    return q, b, (ell * ell).sum()


def hsic(x, y, **kwargs) -> torch.Tensor:
    """Biased HSIC of each channel with y: tr(K_k H L H) / n^2 = b / n^2."""
    _, b, _ = hsic_matrix(x, y, **kwargs)
    return b / x.shape[0] ** 2
