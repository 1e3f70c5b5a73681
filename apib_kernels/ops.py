"""Public kernel ops: per-channel centered Gram matrices and the HSIC statistics of a layer.

Shapes: x is (n, C, *spatial) — n samples, C channels; sample i's feature vector for channel k is
x[i, k].flatten(), of length D = prod(spatial) (D = 1 when x is (n, C)). Inputs may be float16,
bfloat16, float32 or float64 with any strides, on the CPU or a CUDA device; half-precision inputs are
computed (and returned) in float32, float64 stays float64.

`centered_gram` is here; the statistics (`hsic_matrix`, `hsic`, `output_gram`) are defined with the
accumulator they use, in `apib_kernels.statistics`, and exported here as part of the one op surface.
"""

import torch

from apib_kernels.backends import resolve_backend
from apib_kernels.kernels import KERNELS, kernel_args
from apib_kernels.statistics import hsic, hsic_matrix, output_gram
from apib_kernels.validation import features

__all__ = ["centered_gram", "hsic", "hsic_matrix", "output_gram"]


def centered_gram(x: torch.Tensor, kernel: str = "laplace", gamma: float | None = None, *, backend=None):
    """Per-channel centered kernel (Gram) matrices of a layer's feature maps.

    x: (n, C, *spatial) -> (C, n, n), K̄_k = H K_k H with H = I - 11ᵀ/n, computed in O(n²) per channel
    as K_ij - r_i - r_j + t (r the row means, t the grand mean), fused with the distances and the
    kernel function. Kernels: "laplace" exp(-γ‖x_i - x_j‖) (default γ = sqrt(0.5 / D)), "gaussian"
    exp(-γ‖x_i - x_j‖²) (default γ = 1 / D), "linear" ⟨x_i, x_j⟩ (γ unused).
    The result holds C·n² values; for the HSIC statistics of large layers use `hsic_matrix`,
    which never materialises more than a bounded block of it.
    """
    f = features(x)
    kernel, g = kernel_args(kernel, gamma, f.shape[2])
    be = resolve_backend(backend, f.device, f.shape)
    return be.centered_gram(f, KERNELS[kernel], g, 0, f.shape[0], None)
