"""Triton implementation of the two kernel ops (the "triton" backend), registered as torch.library ops.

Same contract as csrc/common.h and apib_kernels/torch_backend.py: kernels are evaluated on
mean-removed features, S_ii = 0 exactly, S from explicit differences for D <= DIRECT_MAX_D, and
out[k, i - start, j] = K_k[i, j] - r_k[i] - r_k[j] + t_k.

Kernel chain: `_centered_gram_kernel` (one program per (tile pair, channel)) -> `_launch_gram`
-> ops "apib::triton_kernel_row_means" and "apib::triton_centered_gram" (`torch.library.triton_op`,
so torch.compile traces through them) -> the public `kernel_row_means` / `centered_gram`.

- Full range (no row_means): only upper-triangle tile pairs I <= J are launched; each stores its
  tile and, off the diagonal, its transpose, and atomically adds its row (and column) sums into a
  (C, n) buffer; `_center_kernel` then centers the stored Gram in place.
- kernel_row_means: the same triangle pass without storing K.
- Row block with row_means: rectangular tiles over [row_start, row_stop) x [0, n), centered in the
  epilogue, so callers can stream row blocks with O(C * rows * n) memory.

Accuracy and determinism as csrc/common.h states them: fp32 `tl.exp` is the fast ex2.approx (about
2 ulp, within the contract's 5e-5 tolerance); the full-range passes' float atomics make the last bits
vary between runs, so they raise under torch.use_deterministic_algorithms(True). Launches happen under
the tensors' CUDA device. `launch_variants()` lists every compiled variant (scripts/compile_triton.py
compiles them all for sm_90 and sm_80 without a GPU).

On the CPU this runs under TRITON_INTERPRET=1 (how CI tests it); interpreted kernels cannot be
traced, so there the ops are registered as opaque custom ops with shape-only fake impls instead.
"""

import contextlib
import itertools
import warnings

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton
from triton.runtime.jit import JITFunction

from apib_kernels.kernels import DIRECT_MAX_D, KERNELS, LAPLACE, LINEAR

# Jit code may only read globals that are constexpr.
_LINEAR = tl.constexpr(LINEAR)
_LAPLACE = tl.constexpr(LAPLACE)


@triton.jit
def _triangle_tile(p):
    """Linear index p -> tile pair (ti, tj), ti <= tj, enumerated as p = tj * (tj + 1) / 2 + ti."""
    # The float estimate can be off by one either way (rounding, approximate sqrt); fix it exactly,
    # in int64 since tj * (tj + 1) passes 2^31 long before p does.
    p = p.to(tl.int64)
    tj = ((tl.sqrt(8.0 * p.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int64)
    tj = tl.where(tj * (tj + 1) // 2 > p, tj - 1, tj)
    tj = tl.where((tj + 1) * (tj + 2) // 2 <= p, tj + 1, tj)
    return (p - tj * (tj + 1) // 2).to(tl.int32), tj.to(tl.int32)


@triton.jit
def _centered_gram_kernel(
    x_ptr,
    mu_ptr,
    gamma_ptr,
    out_ptr,
    rowsum_ptr,
    r_ptr,
    t_ptr,
    n,
    D,
    row_start,
    n_rows,
    tiles_j,
    stride_xn,
    stride_xc,
    stride_xd,
    KERNEL: tl.constexpr,
    ROW_BLOCK: tl.constexpr,
    STORE_K: tl.constexpr,
    DIRECT: tl.constexpr,
    IS_FP64: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # ROW_BLOCK: rectangle of row tiles x all column tiles, centered with the given r, t.
    # Otherwise: upper triangle of tile pairs, K (if STORE_K) and row sums into rowsum_ptr.
    pid = tl.program_id(0)
    c = tl.program_id(1).to(tl.int64)
    if ROW_BLOCK:
        ti = pid // tiles_j
        tj = pid % tiles_j
        offs_i = row_start + ti * BLOCK + tl.arange(0, BLOCK)
        valid_i = offs_i < row_start + n_rows
    else:
        ti, tj = _triangle_tile(pid)
        offs_i = ti * BLOCK + tl.arange(0, BLOCK)
        valid_i = offs_i < n
    offs_j = tj * BLOCK + tl.arange(0, BLOCK)
    valid_j = offs_j < n
    dtype = x_ptr.dtype.element_ty

    # int64 offsets: C * n * n and x's extent can pass 2^31 elements.
    x_c = x_ptr + c * stride_xc
    a_rows = x_c + offs_i.to(tl.int64) * stride_xn
    b_rows = x_c + offs_j.to(tl.int64) * stride_xn
    mu_c = mu_ptr + c * D
    if DIRECT:
        # Few features: explicit differences, as the contract asks, since the norm expansion's
        # cancellation (amplified by the Laplace sqrt) would dominate the error for close pairs.
        s = tl.zeros((BLOCK, BLOCK), dtype=dtype)
        for d in range(D):
            mu = tl.load(mu_c + d)
            a = tl.load(a_rows + d * stride_xd, mask=valid_i, other=0.0) - mu
            b = tl.load(b_rows + d * stride_xd, mask=valid_j, other=0.0) - mu
            diff = a[:, None] - b[None, :]
            s += diff * diff
    else:
        g = tl.zeros((BLOCK, BLOCK), dtype=dtype)
        sq_a = tl.zeros((BLOCK,), dtype=dtype)
        sq_b = tl.zeros((BLOCK,), dtype=dtype)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            valid_d = offs_d < D
            mu = tl.load(mu_c + offs_d, mask=valid_d, other=0.0)
            mask_a = valid_i[:, None] & valid_d[None, :]
            mask_b = valid_d[:, None] & valid_j[None, :]
            # Padding must be 0 after mean removal too, so it adds nothing to g or the norms.
            a = tl.load(a_rows[:, None] + offs_d[None, :] * stride_xd, mask=mask_a, other=0.0)
            a = tl.where(mask_a, a - mu[None, :], 0.0)
            b = tl.load(b_rows[None, :] + offs_d[:, None] * stride_xd, mask=mask_b, other=0.0)
            b = tl.where(mask_b, b - mu[:, None], 0.0)
            # Not tf32: ||a||^2 + ||b||^2 - 2<a, b> cancels, so <a, b> needs full fp32 precision.
            # out_dtype explicit: triton 3.6 defaults it to float32 and rejects a float64 accumulator.
            g = tl.dot(a, b, g, input_precision="ieee", out_dtype=dtype)
            if KERNEL != _LINEAR:
                sq_a += tl.sum(a * a, 1)
                sq_b += tl.sum(b * b, 0)
        if KERNEL != _LINEAR:
            # NaN must survive the clamp (as in torch's clamp_min): NaN/Inf in x are detected downstream.
            s = tl.maximum(sq_a[:, None] + sq_b[None, :] - 2.0 * g, 0.0, propagate_nan=tl.PropagateNan.ALL)

    if KERNEL == _LINEAR:
        k = g
    else:
        s = tl.where(offs_i[:, None] == offs_j[None, :], 0.0, s)
        if KERNEL == _LAPLACE:
            # sqrt_rn is fp32-only; fp64 sqrt is always correctly rounded.
            if IS_FP64:
                s = tl.sqrt(s)
            else:
                s = tl.sqrt_rn(s)
        k = tl.exp(-tl.load(gamma_ptr) * s)
    valid = valid_i[:, None] & valid_j[None, :]
    k = tl.where(valid, k, 0.0)

    if ROW_BLOCK:
        r_c = r_ptr + c * n
        r_i = tl.load(r_c + offs_i, mask=valid_i, other=0.0)
        r_j = tl.load(r_c + offs_j, mask=valid_j, other=0.0)
        # Same operation order as the torch backend: ((K - r_i) - r_j) + t.
        k = k - r_i[:, None] - r_j[None, :] + tl.load(t_ptr + c)
        out_c = out_ptr + c * n_rows * n
        rows = (offs_i - row_start).to(tl.int64)
        tl.store(out_c + rows[:, None] * n + offs_j[None, :], k, mask=valid)
    else:
        rowsum_c = rowsum_ptr + c * n
        tl.atomic_add(rowsum_c + offs_i, tl.sum(k, 1), mask=valid_i, sem="relaxed")
        if STORE_K:
            out_c = out_ptr + c * n * n
            tl.store(out_c + offs_i.to(tl.int64)[:, None] * n + offs_j[None, :], k, mask=valid)
        if ti != tj:
            # The mirrored tile (tj, ti) is never launched: its row sums are this tile's column sums.
            tl.atomic_add(rowsum_c + offs_j, tl.sum(k, 0), mask=valid_j, sem="relaxed")
            if STORE_K:
                tl.store(
                    out_c + offs_j.to(tl.int64)[:, None] * n + offs_i[None, :],
                    tl.trans(k),
                    mask=valid_j[:, None] & valid_i[None, :],
                )


@triton.jit
def _center_kernel(out_ptr, r_ptr, t_ptr, n, tiles_j, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    c = tl.program_id(1).to(tl.int64)
    offs_i = (pid // tiles_j) * BLOCK + tl.arange(0, BLOCK)
    offs_j = (pid % tiles_j) * BLOCK + tl.arange(0, BLOCK)
    valid_i = offs_i < n
    valid_j = offs_j < n
    valid = valid_i[:, None] & valid_j[None, :]
    r_c = r_ptr + c * n
    r_i = tl.load(r_c + offs_i, mask=valid_i, other=0.0)
    r_j = tl.load(r_c + offs_j, mask=valid_j, other=0.0)
    ptrs = out_ptr + c * n * n + offs_i.to(tl.int64)[:, None] * n + offs_j[None, :]
    k = tl.load(ptrs, mask=valid, other=0.0)
    tl.store(ptrs, k - r_i[:, None] - r_j[None, :] + tl.load(t_ptr + c), mask=valid)


# TRITON_INTERPRET=1 makes @triton.jit return an InterpretedFunction, which torch cannot trace
# (wrap_triton hands it back unwrapped, so a fake or functional trace would launch it on fake
# tensors). Interpreted, the ops are therefore registered opaque, with shape-only fake impls.
_INTERPRETED = not isinstance(_centered_gram_kernel, JITFunction)


def _wrap(kernel):
    return kernel if _INTERPRETED else wrap_triton(kernel)


def _register(name: str, fake):
    """triton_op(name) on a GPU; under the interpreter an opaque custom_op with `fake` as its fake impl."""

    def register(fn):
        if not _INTERPRETED:
            return triton_op(name, mutates_args=())(fn)
        op = torch.library.custom_op(name, fn, mutates_args=())
        op.register_fake(fake)
        return op

    return register


def _check_args(x: torch.Tensor, kernel: int, gamma: float) -> None:
    """Python mirror of apib::check_args (csrc/common.h), same messages, plus this backend's limits."""
    if x.dim() != 3:
        raise ValueError(f"apib: x must have shape (n, C, D), got {x.dim()} dimensions")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"apib: x must be float32 or float64, got {x.dtype}")
    if x.shape[0] < 1 or x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"apib: x must have n >= 1, C >= 1 and D >= 1, got shape {tuple(x.shape)}")
    if kernel not in KERNELS.values():
        kinds = ", ".join(f"{code} ({name})" for name, code in KERNELS.items())
        raise ValueError(f"apib: kernel must be one of {kinds}, got {kernel}")
    if kernel != LINEAR and not gamma > 0:
        raise ValueError(f"apib: gamma must be > 0, got {gamma}")
    if x.device.type == "cpu" and not _INTERPRETED:
        raise ValueError(
            "apib: the triton backend needs x on a GPU (CPU tensors only with TRITON_INTERPRET=1)"
        )
    if x.shape[1] > 65535:
        raise ValueError(
            f"apib: x has C = {x.shape[1]} channels; the triton backend's grid allows at most 65535"
        )


def _check_rows(x: torch.Tensor, row_start: int, row_stop: int, row_means: torch.Tensor | None) -> None:
    """Python mirror of apib::check_rows (csrc/common.h), same messages."""
    n = x.shape[0]
    if not (0 <= row_start < row_stop <= n):
        raise ValueError(f"apib: need 0 <= row_start < row_stop <= n = {n}, got [{row_start}, {row_stop})")
    if row_means is None:
        if row_start != 0 or row_stop != n:
            raise ValueError(
                "apib: without row_means the row range must be the full [0, n); pass row_means "
                "from apib::kernel_row_means to compute a row block"
            )
        return
    if row_means.dim() != 2 or row_means.shape[0] != x.shape[1] or row_means.shape[1] != n:
        raise ValueError(
            f"apib: row_means must have shape (C, n) = ({x.shape[1]}, {n}), got {tuple(row_means.shape)}"
        )
    if row_means.dtype != x.dtype:
        raise TypeError(f"apib: row_means must have x's dtype {x.dtype}, got {row_means.dtype}")
    if row_means.device != x.device:
        raise ValueError(f"apib: row_means must be on x's device {x.device}, got {row_means.device}")


def _blocks(n: int, D: int, dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK, BLOCK_D): tl.dot needs every block dim >= 16; small n or D get small (masked) tiles."""
    block = 16 if n <= 16 else 32 if n <= 32 else 64
    block_d = 16 if D <= 16 or dtype == torch.float64 else 32
    return block, block_d


def _gram_constexprs(kernel: int, n: int, D: int, dtype: torch.dtype, row_block: bool, store_k: bool) -> dict:
    """The compile-time arguments of `_centered_gram_kernel` for one launch (one compiled variant each)."""
    block, block_d = _blocks(n, D, dtype)
    return dict(
        KERNEL=kernel,
        ROW_BLOCK=row_block,
        STORE_K=store_k,
        DIRECT=kernel != LINEAR and D <= DIRECT_MAX_D,
        IS_FP64=dtype == torch.float64,
        BLOCK=block,
        BLOCK_D=block_d,
    )


# (ROW_BLOCK, STORE_K) of kernel_row_means, full-range centered_gram, row-block centered_gram
_MODES = ((False, False), (False, True), (True, True))


def launch_variants():
    """Every (kernel function, dtype, constexprs) the launchers below can compile, for offline compiles
    (scripts/compile_triton.py): each kernel kind, dtype, mode, direct/product path and block size."""
    seen = []
    for dtype, kernel, (row_block, store_k) in itertools.product(
        (torch.float32, torch.float64), KERNELS.values(), _MODES
    ):
        # n picks BLOCK, D the direct/product path and BLOCK_D: one representative of each choice
        for n, D in itertools.product((16, 32, 64), (DIRECT_MAX_D, 16, 17)):
            variant = _gram_constexprs(kernel, n, D, dtype, row_block, store_k)
            if variant not in seen:
                seen.append(variant)
                yield _centered_gram_kernel, dtype, variant
    for dtype, n in itertools.product((torch.float32, torch.float64), (16, 32, 64)):
        yield _center_kernel, dtype, {"BLOCK": _blocks(n, 1, dtype)[0]}


def _device_guard(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' own for the launch."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _alert_atomics(op: str) -> None:
    """Honours torch.use_deterministic_algorithms: the full-range passes add row sums with float atomics,
    so their last bits depend on the order the tiles finish in."""
    if torch.are_deterministic_algorithms_enabled():
        msg = (
            f"{op} adds row sums with float atomics and is not deterministic; with "
            "torch.use_deterministic_algorithms(True), use backend='torch' (the automatic choice does)"
        )
        if not torch.is_deterministic_algorithms_warn_only_enabled():
            raise RuntimeError(msg)
        warnings.warn(msg, stacklevel=3)


def _launch_gram(x, kernel, gamma, *, row_block, store_k, out=None, rowsum=None, r=None, t=None, row_start=0):
    """One launch of `_centered_gram_kernel`; returns (BLOCK, number of column tiles).

    Buffers the mode does not touch get a distinct placeholder, never an alias of a used one:
    torch.compile's functional kernel wrapper clones every tensor argument separately, so an
    aliased argument could hand back a copy without the kernel's writes.
    """
    n, C, D = x.shape
    n_rows = out.shape[1] if row_block else n
    unused = x.new_empty(1)
    constexprs = _gram_constexprs(kernel, n, D, x.dtype, row_block, store_k)
    block = constexprs["BLOCK"]
    tiles = triton.cdiv(n, block)
    if row_block:
        grid = (triton.cdiv(n_rows, block) * tiles, C)
    else:
        grid = (tiles * (tiles + 1) // 2, C)
    mu = x.mean(0)
    # A tensor, not a Python float: compiled Triton would pass a float argument as fp32.
    gamma_t = torch.full((1,), gamma, dtype=x.dtype, device=x.device)
    _wrap(_centered_gram_kernel)[grid](
        x,
        mu,
        gamma_t,
        unused if out is None else out,
        unused if rowsum is None else rowsum,
        unused if r is None else r,
        unused if t is None else t,
        n,
        D,
        row_start,
        n_rows,
        tiles,
        x.stride(0),
        x.stride(1),
        x.stride(2),
        **constexprs,
        num_warps=4,
    )
    return block, tiles


def _kernel_row_means_fake(x: torch.Tensor, kernel: int, gamma: float) -> torch.Tensor:
    _check_args(x, kernel, gamma)
    return x.new_empty((x.shape[1], x.shape[0]))


def _centered_gram_fake(
    x: torch.Tensor,
    kernel: int,
    gamma: float,
    row_start: int,
    row_stop: int,
    row_means: torch.Tensor | None = None,
) -> torch.Tensor:
    _check_args(x, kernel, gamma)
    _check_rows(x, row_start, row_stop, row_means)
    return x.new_empty((x.shape[1], row_stop - row_start, x.shape[0]))


@_register("apib::triton_kernel_row_means", _kernel_row_means_fake)
def _kernel_row_means_op(x: torch.Tensor, kernel: int, gamma: float) -> torch.Tensor:
    _check_args(x, kernel, gamma)
    _alert_atomics("apib::triton_kernel_row_means")
    n, C, _ = x.shape
    rowsum = torch.zeros((C, n), dtype=x.dtype, device=x.device)
    with _device_guard(x.device):
        _launch_gram(x, kernel, gamma, row_block=False, store_k=False, rowsum=rowsum)
    return rowsum.div_(n)


@_register("apib::triton_centered_gram", _centered_gram_fake)
def _centered_gram_op(
    x: torch.Tensor,
    kernel: int,
    gamma: float,
    row_start: int,
    row_stop: int,
    row_means: torch.Tensor | None = None,
) -> torch.Tensor:
    _check_args(x, kernel, gamma)
    _check_rows(x, row_start, row_stop, row_means)
    n, C, _ = x.shape
    out = torch.empty((C, row_stop - row_start, n), dtype=x.dtype, device=x.device)
    if row_means is not None:
        r = row_means.contiguous()
        t = r.mean(-1)
        with _device_guard(x.device):
            _launch_gram(
                x, kernel, gamma, row_block=True, store_k=True, out=out, r=r, t=t, row_start=row_start
            )
        return out
    _alert_atomics("apib::triton_centered_gram (full range)")
    rowsum = torch.zeros((C, n), dtype=x.dtype, device=x.device)
    with _device_guard(x.device):
        block, tiles = _launch_gram(x, kernel, gamma, row_block=False, store_k=True, out=out, rowsum=rowsum)
        r = rowsum.div_(n)
        t = r.mean(-1)
        _wrap(_center_kernel)[(tiles * tiles, C)](out, r, t, n, tiles, BLOCK=block, num_warps=4)
    return out


def kernel_row_means(x: torch.Tensor, kernel: int, gamma: float) -> torch.Tensor:
    """x (n, C, D) -> row means of each channel's kernel matrix, (C, n); never holds more than a tile of K."""
    return torch.ops.apib.triton_kernel_row_means(x, kernel, gamma)


def centered_gram(
    x: torch.Tensor,
    kernel: int,
    gamma: float,
    row_start: int,
    row_stop: int,
    row_means: torch.Tensor | None = None,
) -> torch.Tensor:
    """x (n, C, D) -> rows [row_start, row_stop) of the centered Grams, (C, row_stop - row_start, n)."""
    return torch.ops.apib.triton_centered_gram(x, kernel, gamma, row_start, row_stop, row_means)
