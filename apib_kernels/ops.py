"""Public kernel ops: per-channel centered Gram matrices and the HSIC statistics of a layer.

Shapes: x is (n, C, *spatial) — n samples, C channels; sample i's feature vector for channel k is
x[i, k].flatten(), of length D = prod(spatial) (D = 1 when x is (n, C)). Inputs may be float16,
bfloat16, float32 or float64 with any strides, on the CPU or a CUDA device; half-precision inputs are
computed (and returned) in float32, float64 stays float64.
"""

import math

import torch

from apib_kernels.backends import resolve_backend
from apib_kernels.kernels import KERNELS, LABEL_KERNELS, Y_KERNELS, kernel_args
from apib_kernels.validation import check_finite, check_int, check_tensor, features

DEFAULT_MEMORY_LIMIT = 1 << 30
_PACK_FRACTION = 4  # Gram row blocks per pass: halves Q's FLOPs at ~n/8 rows of waste, in 4 GEMMs
_Q_BLOCK = 128  # channel block of the upper-block-triangular Q product


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
    kernel, g = kernel_args(kernel, gamma, f.shape[2], ("kernel", "gamma"))
    be = resolve_backend(backend, f.device, f.shape)
    return be.centered_gram(f, KERNELS[kernel], g, 0, f.shape[0], None)


def _label_gram(y: torch.Tensor, dtype: torch.dtype, normalized: bool) -> torch.Tensor:
    same = (y[:, None] == y[None, :]).to(dtype)
    if normalized:
        same /= same.sum(1, keepdim=True)  # row i sums to n_c, the size of y_i's class
    r = same.mean(1)
    return same - r[:, None] - r[None, :] + r.mean()


def output_gram(y, n: int, y_kernel=None, y_gamma=None, *, like: torch.Tensor, backend=None) -> torch.Tensor:
    """The centered output Gram L̄ (n, n), in `like`'s dtype and device.

    y: (n,) integer (or bool) class labels — kernel "delta" 1[y_i = y_j] by default, or "delta_norm"
    1[y_i = y_j] / n_c (n_c the size of y_i's class among these n samples, as pyHSICLasso) — or (n, *)
    floats, flattened per sample, with y_kernel (default "laplace") and y_gamma as for `centered_gram`.
    """
    return _output_gram(y, n, y_kernel, y_gamma, like, backend, scan=True)


def _output_gram(y, n: int, y_kernel, y_gamma, like, backend, scan: bool) -> torch.Tensor:
    """`output_gram`; scan=False skips the NaN/Inf scan of a y that goes through a kernel
    function, for callers that check L̄'s statistics instead (class labels are always scanned: a NaN
    label would only empty its row of L̄)."""
    check_tensor(y, "y")
    if y.dim() == 0 or y.shape[0] != n:
        raise ValueError(
            f"y must have n = {n} samples in its first dimension (like x), got shape {tuple(y.shape)}"
        )
    if y.device != like.device:
        raise ValueError(f"y must be on x's device {like.device}, got {y.device}")
    labels = not y.is_floating_point()
    if y_kernel is None:
        y_kernel = "delta" if labels else "laplace"
    if scan or y_kernel in LABEL_KERNELS:
        check_finite(y, "y")
    if y_kernel in LABEL_KERNELS:
        if y.dim() != 1:
            raise ValueError(
                f"y_kernel {y_kernel!r} needs y of shape (n,) class labels, got shape {tuple(y.shape)}"
            )
        return _label_gram(y, like.dtype, y_kernel == "delta_norm")
    if labels and y.dim() != 1:
        raise ValueError(f"integer y must be (n,) class labels, got shape {tuple(y.shape)}")
    f = y.reshape(n, 1, -1).to(like.dtype)
    y_kernel, g = kernel_args(y_kernel, y_gamma, f.shape[2], ("y_kernel", "y_gamma"), Y_KERNELS)
    return resolve_backend(backend, f.device, f.shape).centered_gram(f, KERNELS[y_kernel], g, 0, n, None)[0]


def _pack_weights(rows: int, cols: int, device, dtype) -> torch.Tensor:
    """Weights (rows, cols) selecting the upper triangle of a row block that starts on the diagonal:
    sqrt(2) above the diagonal, 1 on it, 0 below — so that sums over the full symmetric matrices
    come from one half of them."""
    i = torch.arange(rows, device=device)[:, None]
    j = torch.arange(cols, device=device)[None, :]
    w = torch.where(j > i, math.sqrt(2.0), (j == i).to(torch.float64))
    return w.to(dtype)


def _accumulate(q, b, kbar_rows, lbar_rows, start: int) -> None:
    """Adds rows [start, start + B) of the centered Grams to Q and b, using their upper triangle only."""
    c, rows, n = kbar_rows.shape
    w = _pack_weights(rows, n - start, kbar_rows.device, kbar_rows.dtype)
    m = (kbar_rows[:, :, start:] * w).reshape(c, -1)
    _add_upper_gram(q, m)
    b.addmv_(m, (lbar_rows[:, start:] * w).reshape(-1))


def _add_upper_gram(q: torch.Tensor, m: torch.Tensor) -> None:
    """q += m mᵀ on and above the diagonal blocks only (q (C, C), m (C, P)): Q is symmetric, so each
    block row of _Q_BLOCK channels starts at its diagonal block — about half the FLOPs of one `addmm`.
    Mirror with `_mirror_upper` once all terms are in."""
    for i in range(0, m.shape[0], _Q_BLOCK):
        q[i : i + _Q_BLOCK, i:].addmm_(m[i : i + _Q_BLOCK], m[i:].T)


def _mirror_upper(q: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix with q's upper triangle (GEMM rounding breaks exact symmetry otherwise)."""
    return q.triu() + q.triu(1).T


def hsic_matrix(
    x,
    y,
    kernel: str = "laplace",
    y_kernel: str | None = None,
    gamma: float | None = None,
    y_gamma: float | None = None,
    *,
    backend: str | None = None,
    memory_limit: int | None = None,
):
    """The Gram-form HSIC statistics of a layer: everything the HSIC Lasso needs.

    x: (n, C, *spatial) feature maps; y: (n, *) float outputs or (n,) integer class labels (see
    `output_gram`). Returns (Q, b, c):
      Q (C, C) = ⟨K̄_k, K̄_l⟩_F (channel-channel redundancy), b (C,) = ⟨K̄_k, L̄⟩_F (channel-output
      relevance), c = ‖L̄‖²_F (0-dim tensor), in float32 (float64 for float64 x).
    Both Gram and Q are symmetric: only the upper triangle of each Gram is reduced.

    Memory: when the C·n² centered Grams fit in `memory_limit` bytes (default 1 GiB) they are built
    in one fused pass; otherwise the row means are computed first and the Grams are built and reduced
    in blocks of rows, so the extra memory stays about 2·memory_limit (plus the O(n·D + C²) inputs
    and outputs), at the cost of a second Gram pass.
    """
    # NaN/Inf in x or y reach Q, b or c in every backend, so those outputs are checked instead of
    # scanning all of x (a fifth of the whole call on large layers) and y; they are scanned only to explain.
    f = features(x, scan=False)
    n, c, d = f.shape
    kernel, g = kernel_args(kernel, gamma, d, ("kernel", "gamma"))
    if y_kernel is None and isinstance(y, torch.Tensor) and y.is_floating_point():
        y_kernel = kernel
    if memory_limit is not None:
        check_int(memory_limit, "memory_limit (bytes)", 1)
    be = resolve_backend(backend, f.device, f.shape)
    lbar = _output_gram(y, n, y_kernel, y_gamma, f, backend, scan=False)
    code = KERNELS[kernel]
    q = f.new_zeros(c, c)
    b = f.new_zeros(c)
    row_bytes = c * n * f.element_size()
    pack = -(-n // _PACK_FRACTION)
    if row_bytes * n <= (memory_limit or DEFAULT_MEMORY_LIMIT):
        kbar = be.centered_gram(f, code, g, 0, n, None)
        for s in range(0, n, pack):
            _accumulate(q, b, kbar[:, s : s + pack], lbar[s : s + pack], s)
    else:
        rows = max(1, min(pack, (memory_limit or DEFAULT_MEMORY_LIMIT) // row_bytes))
        means = be.kernel_row_means(f, code, g)
        for s in range(0, n, rows):
            e = min(n, s + rows)
            _accumulate(q, b, be.centered_gram(f, code, g, s, e, means), lbar[s:e], s)
    q = _mirror_upper(q)
    cc = (lbar * lbar).sum()
    if not bool(torch.isfinite(q).all() & torch.isfinite(b).all() & torch.isfinite(cc)):
        check_finite(f, "x")
        check_finite(y, "y")
        # Q comes from x alone and c from y alone; b from both.
        culprit = "x or y"
        if not bool(torch.isfinite(q).all()):
            culprit = "x"
        elif not bool(torch.isfinite(cc)):
            culprit = "y"
        raise ValueError(f"the HSIC statistics overflowed in {f.dtype}: {culprit} has values too large")
    return q, b, cc


def hsic(
    x, y, kernel: str = "laplace", y_kernel=None, gamma=None, y_gamma=None, *, backend=None, memory_limit=None
) -> torch.Tensor:
    """Each channel's biased HSIC with y: HSIC_b(x_k, y) = tr(K_k H L H) / n² = b_k / n², shape (C,).

    (Gretton et al.'s biased estimator with the 1/n² normalisation; the unnormalised b is what
    `hsic_matrix` returns.) Arguments as for `hsic_matrix`.
    """
    _, b, _ = hsic_matrix(x, y, kernel, y_kernel, gamma, y_gamma, backend=backend, memory_limit=memory_limit)
    return b / x.shape[0] ** 2
