"""Pure-PyTorch implementation of the two kernel ops (any device, any float dtype).

This is the "torch" backend and the executable statement of the op contract in csrc/common.h:
kernels are evaluated on mean-removed features, S_ii = 0 exactly, and
out[k, i - start, j] = K_k[i, j] - r_k[i] - r_k[j] + t_k.
"""

import torch

from apib_kernels.kernels import DIRECT_MAX_D, LAPLACE, LINEAR


def _kernel_rows(xt: torch.Tensor, sq: torch.Tensor, kernel: int, gamma: float, start: int, stop: int):
    """Raw kernel rows [start, stop) of every channel: (C, stop - start, n).
    `xt` is (C, n, D), mean-removed."""
    if kernel == LINEAR:
        return torch.bmm(xt[:, start:stop], xt.transpose(1, 2))
    if xt.shape[2] <= DIRECT_MAX_D:
        s = (xt[:, start:stop, None, :] - xt[:, None, :, :]).square_().sum(-1)
    else:
        g = torch.bmm(xt[:, start:stop], xt.transpose(1, 2))
        s = (sq[:, start:stop, None] + sq[:, None, :] - 2 * g).clamp_min_(0)
    rows = torch.arange(start, stop, device=xt.device)
    s[:, rows - start, rows] = 0
    if kernel == LAPLACE:
        s.sqrt_()
    return s.mul_(-gamma).exp_()


def _prepare(x: torch.Tensor):
    # always a copy (contiguous() may return x itself, which must not be modified), laid out for bmm
    xt = x.transpose(0, 1).clone(memory_format=torch.contiguous_format)
    xt -= xt.mean(1, keepdim=True)
    return xt, torch.linalg.vector_norm(xt, dim=-1).square_()


_ROW_MEANS_BLOCK_ELEMS = 1 << 26


def kernel_row_means(x: torch.Tensor, kernel: int, gamma: float) -> torch.Tensor:
    """x (n, C, D) -> row means of each channel's kernel matrix, (C, n); at most 2^26 kernel values
    at once."""
    n, c = x.shape[:2]
    xt, sq = _prepare(x)
    step = max(1, _ROW_MEANS_BLOCK_ELEMS // (c * n))
    return torch.cat(
        [_kernel_rows(xt, sq, kernel, gamma, s, min(s + step, n)).mean(-1) for s in range(0, n, step)], dim=1
    )


def centered_gram(
    x: torch.Tensor,
    kernel: int,
    gamma: float,
    row_start: int,
    row_stop: int,
    row_means: torch.Tensor | None = None,
) -> torch.Tensor:
    """x (n, C, D) -> rows [row_start, row_stop) of the centered Grams, (C, row_stop - row_start, n)."""
    xt, sq = _prepare(x)
    k = _kernel_rows(xt, sq, kernel, gamma, row_start, row_stop)
    r = k.mean(-1) if row_means is None else row_means
    t = r.mean(-1)
    return k.sub_(r[:, row_start:row_stop, None]).sub_(r[:, None, :]).add_(t[:, None, None])
