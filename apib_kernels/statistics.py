"""The Gram-form statistics of a layer, end to end: everything the HSIC Lasso needs from the data.

For feature maps x (n, C, *spatial) — channel k of sample i is x[i, k].flatten(), D features — and outputs
y (n, *) floats or (n,) class labels, with K̄_k the centered Gram of channel k and L̄ that of y:

    Q (C, C) = ⟨K̄_k, K̄_l⟩_F,   b (C,) = ⟨K̄_k, L̄⟩_F,   c = ‖L̄‖²_F,   n_rows = n²

(the Gram form of the Lasso on the n²-row design of vectorised Grams, see `apib_kernels.lasso`).

Blocks. A *block* is a set of samples whose Grams are centred together (H = I − 11ᵀ/B over its B samples).
The statistics of one block are not a sum over its samples — centring couples them all, so the Q of n
samples is not the Q of two halves added — but the statistics of independent blocks add: the block HSIC
estimator (Yamada et al. 2018) is the sum over blocks of B samples, with n_rows = Σ B². `GramStatistics`
accumulates exactly that: `add` adds one block (all the samples it is given; one block of all n is the
exact estimator), `add_blocks` the blocks of the block estimator (with permutations), `merge` another
accumulator's blocks (a later batch of images, another shard or process). Normalisation
(`normalize=True`, pyHSICLasso's Frobenius-normalised Grams K̄/‖K̄‖_F, L̄/‖L̄‖_F) applies to each block's
Grams, so it commutes with the sums.

Memory. Within a block the Grams are never all held when they exceed `memory_limit` bytes (default
DEFAULT_MEMORY_LIMIT): the row means come first and the Grams are built and reduced a block of rows at a
time, using only their upper triangle (Q and every Gram are symmetric). The block estimator builds
batches of blocks of at most `memory_limit` bytes (default DEFAULT_BLOCK_MEMORY).

Checks. Each input is checked once, when it is added: shapes and devices before any work; NaN and Inf
are not scanned for up front (on large layers a fifth of the whole call) since every backend carries them
into Q, b or c, which are checked instead — the inputs are scanned only to say which one was bad.
"""

import logging
import math
from dataclasses import dataclass

import torch

from apib_kernels.backends import resolve_backend
from apib_kernels.kernels import KERNELS, LABEL_KERNELS, Y_KERNELS, kernel_args
from apib_kernels.validation import check_finite, check_int, check_samples, features

logger = logging.getLogger("apib_kernels")

DEFAULT_MEMORY_LIMIT = 1 << 30
"""Bytes of centered Grams one block builds at once when memory_limit is None."""

DEFAULT_BLOCK_MEMORY = 32 << 20
"""Bytes of centered block Grams the block estimator builds at once when memory_limit is None. Small on
purpose: glibc maps every allocation above 32 MiB afresh and the kernel then faults in each of its
pages (an 83 MB buffer: 66 ms to fill fresh, 8 ms reused), while smaller batches reuse the heap; at
n = d = 2000 (B = 20, M = 3) 256 MiB batches took 3.6-4.5 s, 32 MiB ones 2.8-3.8 s."""

_PACK_FRACTION = 4  # Gram row blocks per pass: halves Q's FLOPs at ~n/8 rows of waste, in 4 GEMMs
_Q_BLOCK = 128  # channel block of the upper-block-triangular Q product


def default_y_kernel(y: torch.Tensor, kernel: str = "laplace") -> str:
    """The kernel y takes when none is given: "delta" for class labels (integer or bool y), else x's
    kernel."""
    return kernel if y.is_floating_point() else "delta"


# ---------------------------------------------------------------------------------------------------
# Centered output Grams


def _label_gram(y: torch.Tensor, dtype: torch.dtype, normalized: bool) -> torch.Tensor:
    same = (y[:, None] == y[None, :]).to(dtype)
    if normalized:
        same /= same.sum(1, keepdim=True)  # row i sums to n_c, the size of y_i's class
    r = same.mean(1)
    return same - r[:, None] - r[None, :] + r.mean()


def _output_gram(y, y_kernel: str, y_gamma, dtype: torch.dtype, backend, scan: bool) -> torch.Tensor:
    """L̄ (n, n) of a checked y (n, *) in `dtype`. scan=False skips the NaN/Inf scan of a y that goes
    through a kernel function, for callers that check L̄'s statistics instead (class labels are always
    scanned: a NaN label would only empty its row of L̄)."""
    n = y.shape[0]
    if scan or y_kernel in LABEL_KERNELS:
        check_finite(y, "y")
    if y_kernel in LABEL_KERNELS:
        if y.dim() != 1:
            raise ValueError(
                f"y_kernel {y_kernel!r} needs y of shape (n,) class labels, got shape {tuple(y.shape)}"
            )
        return _label_gram(y, dtype, y_kernel == "delta_norm")
    if not y.is_floating_point() and y.dim() != 1:
        raise ValueError(f"integer y must be (n,) class labels, got shape {tuple(y.shape)}")
    f = y.reshape(n, 1, -1).to(dtype)
    y_kernel, g = kernel_args(y_kernel, y_gamma, f.shape[2], ("y_kernel", "y_gamma"), Y_KERNELS)
    return resolve_backend(backend, f.device, f.shape).centered_gram(f, KERNELS[y_kernel], g, 0, n, None)[0]


def output_gram(y, n: int, y_kernel=None, y_gamma=None, *, like: torch.Tensor, backend=None) -> torch.Tensor:
    """The centered output Gram L̄ (n, n), in `like`'s dtype and device.

    y: (n,) integer (or bool) class labels — kernel "delta" 1[y_i = y_j] by default, or "delta_norm"
    1[y_i = y_j] / n_c (n_c the size of y_i's class among these n samples, as pyHSICLasso) — or (n, *)
    floats, flattened per sample, with y_kernel (default "laplace") and y_gamma as for `centered_gram`.
    """
    y = check_samples(y, n, like.device)
    kind = default_y_kernel(y) if y_kernel is None else y_kernel
    return _output_gram(y, kind, y_gamma, like.dtype, backend, scan=True)


# ---------------------------------------------------------------------------------------------------
# Reductions of centered Grams into Q and b


def _pack_weights(rows: int, cols: int, device, dtype) -> torch.Tensor:
    """Weights (rows, cols) selecting the upper triangle of a row block that starts on the diagonal:
    sqrt(2) above the diagonal, 1 on it, 0 below — so that sums over the full symmetric matrices
    come from one half of them."""
    i = torch.arange(rows, device=device)[:, None]
    j = torch.arange(cols, device=device)[None, :]
    w = torch.where(j > i, math.sqrt(2.0), (j == i).to(torch.float64))
    return w.to(dtype)


def _upper_pack(size: int, device, dtype):
    """Flat indices of the upper triangle of a size × size matrix and the weights (√2 off the diagonal,
    1 on it) that make the packed vectors' inner products equal the full Frobenius ones."""
    iu = torch.triu_indices(size, size, device=device)
    w = torch.full((iu.shape[1],), math.sqrt(2.0), dtype=dtype, device=device)
    w[iu[0] == iu[1]] = 1
    return iu[0] * size + iu[1], w


def _add_upper_gram(q: torch.Tensor, m: torch.Tensor) -> None:
    """q += m mᵀ on and above the diagonal blocks only (q (C, C), m (C, P)): Q is symmetric, so each
    block row of _Q_BLOCK channels starts at its diagonal block — about half the FLOPs of one `addmm`.
    Mirror with `_mirror_upper` once all terms are in."""
    for i in range(0, m.shape[0], _Q_BLOCK):
        q[i : i + _Q_BLOCK, i:].addmm_(m[i : i + _Q_BLOCK], m[i:].T)


def _mirror_upper(q: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix with q's upper triangle (GEMM rounding breaks exact symmetry otherwise)."""
    return q.triu() + q.triu(1).T


def _accumulate(q, b, kbar_rows, lbar_rows, start: int) -> None:
    """Adds rows [start, start + B) of the centered Grams to Q and b, using their upper triangle only."""
    c, rows, n = kbar_rows.shape
    w = _pack_weights(rows, n - start, kbar_rows.device, kbar_rows.dtype)
    m = (kbar_rows[:, :, start:] * w).reshape(c, -1)
    _add_upper_gram(q, m)
    b.addmv_(m, (lbar_rows[:, start:] * w).reshape(-1))


def _inverse(norms: torch.Tensor) -> torch.Tensor:
    """1 / norms, with 0 where a norm is 0 (an all-zero Gram stays zero under normalisation)."""
    return torch.where(norms > 0, 1 / torch.where(norms > 0, norms, 1), 0)


def _normalized(q, b, c):
    """Statistics of the Frobenius-normalised Grams K̄_k/‖K̄_k‖_F, L̄/‖L̄‖_F; zero-norm Grams stay 0."""
    diag = q.diagonal().clamp_min(0)
    inv = torch.where(diag > 0, diag.rsqrt(), 0)
    inv_c = torch.where(c > 0, c.clamp_min(torch.finfo(c.dtype).tiny).rsqrt(), 0)
    return q * inv[:, None] * inv[None, :], b * inv * inv_c, (c > 0).to(c.dtype)


# ---------------------------------------------------------------------------------------------------
# The accumulator


@dataclass(frozen=True)
class Samples:
    """A layer's samples, checked once: `Samples.check(x, y)`.

    x: (n, C, D) the features of x (n, C, *spatial) in the compute dtype (float32 for half precision);
    y: (n, *) the outputs or labels, on x's device. Values are not scanned (see the module docstring).
    """

    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def check(cls, x, y) -> "Samples":
        f = features(x, scan=False)
        return cls(f, check_samples(y, f.shape[0], f.device))


class GramStatistics:
    """Running sums of the Gram-form statistics Q, b, c and n_rows over independent blocks of samples.

    kernel, gamma: x's kernel ("laplace", "gaussian", "linear") and bandwidth (None: `default_gamma` of D);
    y_kernel, y_gamma: y's (None: `default_y_kernel`, i.e. x's kernel for float y, "delta" for labels);
    normalize: Frobenius-normalise each block's Grams; backend: the kernels' backend (None: automatic);
    memory_limit: bytes of Grams built at once (see the module docstring).

    `add(samples)` adds the n `Samples` (x, y) as one block, `add_blocks(samples, block_size, ...)` as
    the block estimator's blocks, `merge(other)` another accumulator's blocks (same settings, channels and
    features); each returns the accumulator. Read `q` (C, C) symmetric, `b` (C,), `c` (0-dim) — the
    sums, in the compute dtype (float32, or float64 for float64 x), on x's device — `n_rows` (Σ B² over
    the blocks), `constant` (C,) bool (channels identical in every sample added) and `lasso_statistics()`
    (what the HSIC Lasso solves). Every block's statistics are checked to be finite when it is added.
    """

    def __init__(
        self,
        kernel: str = "laplace",
        y_kernel: str | None = None,
        gamma: float | None = None,
        y_gamma: float | None = None,
        *,
        normalize: bool = False,
        backend: str | None = None,
        memory_limit: int | None = None,
    ):
        kernel_args(kernel, gamma, 1)  # names and bandwidths fail here, before any data
        if y_kernel is not None:  # (label kernels have no bandwidth)
            kernel_args(
                y_kernel,
                None if y_kernel in LABEL_KERNELS else y_gamma,
                1,
                ("y_kernel", "y_gamma"),
                Y_KERNELS,
            )
        if memory_limit is not None:
            check_int(memory_limit, "memory_limit (bytes)", 1)
        self.kernel, self.y_kernel, self.gamma, self.y_gamma = kernel, y_kernel, gamma, y_gamma
        self.normalize = bool(normalize)
        self.backend = backend
        self.memory_limit = memory_limit
        self.n_rows = 0
        self._q = self._b = self._c = None
        self._raw_diag = None  # Σ ‖K̄_k‖²_F before normalisation: what constant channels are told by
        self._layout = None  # (C, D, dtype, device) of the first block; later ones must match
        self._same = None  # (C,) channels identical to the first sample in every block so far ...
        self._first = None  # ... and the first sample's values of those, (their count, D)

    # --- reading ---------------------------------------------------------------------------------

    def _sums(self):
        if self._q is None:
            raise ValueError("no samples were added: the statistics need at least one block")
        return self._q, self._b, self._c

    @property
    def q(self) -> torch.Tensor:
        """(C, C) Σ ⟨K̄_k, K̄_l⟩_F over the blocks, exactly symmetric."""
        return self._sums()[0]

    @property
    def b(self) -> torch.Tensor:
        """(C,) Σ ⟨K̄_k, L̄⟩_F over the blocks."""
        return self._sums()[1]

    @property
    def c(self) -> torch.Tensor:
        """0-dim Σ ‖L̄‖²_F over the blocks."""
        return self._sums()[2]

    @property
    def constant(self) -> torch.Tensor:
        """(C,) bool: channels identical in every sample added. Their centered Grams are zero up to
        rounding, which normalisation or a small penalty could blow up into a selection. Only channels
        whose Gram norm is at rounding level in every block are compared sample by sample."""
        self._sums()
        return self._same

    def lasso_statistics(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(Q (C, C), b (C,), n_rows): the sums in float64 with the `constant` channels' rows, columns
        and relevances set to exactly 0 — the HSIC Lasso's problem (`HSICLassoProblem.from_statistics`)."""
        q, b, _ = self._sums()
        q, b = q.to(torch.float64, copy=True), b.to(torch.float64, copy=True)
        const = torch.nonzero(self._same).flatten()
        if const.numel():
            q[const, :] = 0
            q[:, const] = 0
            b[const] = 0
        return q, b, self.n_rows

    # --- adding ----------------------------------------------------------------------------------

    def _unpack(self, samples: Samples):
        """(features, y, y's kernel), after checking that the channels and features match earlier blocks."""
        if not isinstance(samples, Samples):
            raise TypeError(f"samples must be Samples.check(x, y), got {type(samples).__name__}")
        f, y = samples.x, samples.y
        if self._layout is not None and (*f.shape[1:], f.dtype) != self._layout[:3]:
            c, d, dtype, _ = self._layout
            raise ValueError(
                "x must have the channels and features of the blocks added before, "
                f"{(c, d)} in {dtype}, got {tuple(f.shape[1:])} in {f.dtype}"
            )
        y_kernel = default_y_kernel(y, self.kernel) if self.y_kernel is None else self.y_kernel
        return f, y, y_kernel

    def add(self, samples: Samples) -> "GramStatistics":
        """Adds the samples x (n, C, *spatial) against y (n, *) as one block of n samples (n_rows += n²)."""
        f, y, y_kernel = self._unpack(samples)
        n, c, d = f.shape
        kernel, g = kernel_args(self.kernel, self.gamma, d)
        be = resolve_backend(self.backend, f.device, f.shape)
        lbar = _output_gram(y, y_kernel, self.y_gamma, f.dtype, self.backend, scan=False)
        code = KERNELS[kernel]
        q = f.new_zeros(c, c)
        b = f.new_zeros(c)
        limit = self.memory_limit or DEFAULT_MEMORY_LIMIT
        row_bytes = c * n * f.element_size()
        pack = -(-n // _PACK_FRACTION)
        if row_bytes * n <= limit:
            kbar = be.centered_gram(f, code, g, 0, n, None)
            for s in range(0, n, pack):
                _accumulate(q, b, kbar[:, s : s + pack], lbar[s : s + pack], s)
        else:
            rows = max(1, min(pack, limit // row_bytes))
            means = be.kernel_row_means(f, code, g)
            for s in range(0, n, rows):
                e = min(n, s + rows)
                _accumulate(q, b, be.centered_gram(f, code, g, s, e, means), lbar[s:e], s)
        q = _mirror_upper(q)
        cc = (lbar * lbar).sum()
        _check_sums(q, b, cc, f, y)
        raw_diag = q.diagonal().clone()
        if self.normalize:
            q, b, cc = _normalized(q, b, cc)
        return self._add_block(q, b, cc, n * n, raw_diag, f)

    def add_blocks(self, samples: Samples, block_size: int, n_permutations: int = 1, seed: int = 0):
        """Adds the samples x (n, C, *spatial) against y (n, *) as the block estimator's blocks:
        samples [jB, (j+1)B) form block j (B = block_size, 2 ≤ B ≤ n; the last n mod B samples are left
        out, logged), and with several blocks the partition is repeated over n_permutations orderings —
        the given one, then random permutations from a generator seeded with `seed` — as pyHSICLasso's M
        does. Adds n_permutations · (n // B) blocks (one pass when there is a single block), n_rows B²
        each.

        Blocks are built in batches: sample j of every block in the batch is sample j of one (B, C·g, D)
        tensor, so one kernel call centres each block's Grams on their own and one matrix product adds
        the whole batch to Q, without the Python cost of one call per block.
        """
        f, y, y_kernel = self._unpack(samples)
        n, c, d = f.shape
        bs = check_int(block_size, "block_size", 2, n)
        n_permutations = check_int(n_permutations, "n_permutations", 1)
        seed = check_int(seed, "seed")
        kernel, g_x = kernel_args(self.kernel, self.gamma, d)
        code = KERNELS[kernel]
        n_blocks = n // bs
        if n % bs:
            logger.warning(
                "block_size %d does not divide n = %d: the last %d samples of each pass are unused",
                bs,
                n,
                n % bs,
            )
        passes = n_permutations if n_blocks > 1 else 1
        flat, w = _upper_pack(bs, f.device, f.dtype)
        per_block = 3 * c * bs * bs * f.element_size()
        batch = max(1, min(n_blocks, (self.memory_limit or DEFAULT_BLOCK_MEMORY) // per_block))
        chosen = {}  # the backend of each batch shape (the last batch may be smaller)
        q = f.new_zeros(c, c)
        b = f.new_zeros(c)
        c_total = f.new_zeros(())
        raw_diag = f.new_zeros(c)
        gen = torch.Generator().manual_seed(seed)
        for p in range(passes):
            order = torch.arange(n) if p == 0 else torch.randperm(n, generator=gen)
            order = order.to(f.device)
            for s in range(0, n_blocks, batch):
                g = min(batch, n_blocks - s)
                idx = order[s * bs : (s + g) * bs]
                # channel-major (k·g + j): the packed Grams come out as the (C, g·P) operand of Q's product
                xb = f.index_select(0, idx).view(g, bs, c, d).permute(1, 2, 0, 3).reshape(bs, c * g, d)
                if xb.shape not in chosen:
                    chosen[xb.shape] = resolve_backend(self.backend, f.device, xb.shape)
                kp = chosen[xb.shape].centered_gram(xb, code, g_x, 0, bs, None)
                kp = kp.view(c * g, bs * bs).index_select(1, flat).mul_(w).view(c, g, -1)
                yb = y.index_select(0, idx)
                lbar = [
                    _output_gram(
                        yb[j * bs : (j + 1) * bs], y_kernel, self.y_gamma, f.dtype, self.backend, False
                    )
                    for j in range(g)
                ]
                lp = torch.stack(lbar).view(g, bs * bs).index_select(1, flat).mul_(w)
                norms = torch.linalg.vector_norm(kp, dim=2)
                raw_diag += norms.square().sum(1)
                if self.normalize:
                    kp.mul_(_inverse(norms)[:, :, None])
                    lp.mul_(_inverse(torch.linalg.vector_norm(lp, dim=1))[:, None])
                m = kp.view(c, -1)
                _add_upper_gram(q, m)
                b.addmv_(m, lp.reshape(-1))
                c_total += (lp * lp).sum()
        q = _mirror_upper(q)
        _check_sums(q, b, c_total, f, y)
        return self._add_block(q, b, c_total, passes * n_blocks * bs * bs, raw_diag, f)

    def _add_block(self, q, b, cc, n_rows: int, raw_diag, f) -> "GramStatistics":
        """Adds one call's statistics (and, for the constant channels, its samples f (n, C, D))."""
        if self._layout is None:
            self._layout = (*f.shape[1:], f.dtype, f.device)
            self._same = torch.ones(f.shape[1], dtype=torch.bool, device=f.device)
        top = raw_diag.max().clamp_min(0)
        cand = torch.nonzero(self._same & (raw_diag <= top * torch.finfo(raw_diag.dtype).eps)).flatten()
        if self._first is None:
            first = f[0, cand]
        else:
            first = self._first[torch.searchsorted(torch.nonzero(self._same).flatten(), cand)]
        equal = (f[:, cand] == first).all(dim=2).all(dim=0)
        self._keep_same(cand[equal], first[equal])
        if self._q is None:
            self._q, self._b, self._c, self._raw_diag = q, b, cc, raw_diag
        else:  # out of place: tensors read before stay as they were
            self._q, self._b, self._c = self._q + q, self._b + b, self._c + cc
            self._raw_diag = self._raw_diag + raw_diag
        self.n_rows += n_rows
        return self

    def _keep_same(self, channels: torch.Tensor, first: torch.Tensor) -> None:
        """Only `channels` (sorted) remain identical to the first sample, whose values there are `first`."""
        self._same = torch.zeros_like(self._same)
        self._same[channels] = True
        self._first = first.clone()  # not a view: f is not kept alive

    def merge(self, other: "GramStatistics") -> "GramStatistics":
        """Adds the blocks of `other` (same kernels, normalisation, channels and features)."""
        if not isinstance(other, GramStatistics):
            raise TypeError(f"other must be a GramStatistics, got {type(other).__name__}")
        mine = (self.kernel, self.y_kernel, self.gamma, self.y_gamma, self.normalize)
        theirs = (other.kernel, other.y_kernel, other.gamma, other.y_gamma, other.normalize)
        if mine != theirs:
            raise ValueError(f"cannot merge statistics of other settings: {theirs} into {mine}")
        if other._q is None:
            return self
        if self._q is None:
            self._q, self._b, self._c, self._raw_diag = other._q, other._b, other._c, other._raw_diag
            self._layout, self.n_rows = other._layout, other.n_rows
            self._same, self._first = other._same.clone(), other._first
            return self
        if other._layout != self._layout:
            raise ValueError(
                f"cannot merge statistics of other channels or features: (C, D, dtype, device) = "
                f"{other._layout} into {self._layout}"
            )
        both = torch.nonzero(self._same & other._same).flatten()
        first = self._first[torch.searchsorted(torch.nonzero(self._same).flatten(), both)]
        theirs = other._first[torch.searchsorted(torch.nonzero(other._same).flatten(), both)]
        equal = (first == theirs).all(dim=1)
        self._keep_same(both[equal], first[equal])
        self._q, self._b, self._c = self._q + other._q, self._b + other._b, self._c + other._c
        self._raw_diag = self._raw_diag + other._raw_diag
        self.n_rows += other.n_rows
        return self


def _check_sums(q, b, cc, f, y) -> None:
    """Raises, naming x or y, if a block's statistics are not finite: NaN/Inf in x or y (found by
    scanning them only now), or values whose kernels overflow the compute dtype."""
    if bool(torch.isfinite(q).all() & torch.isfinite(b).all() & torch.isfinite(cc)):
        return
    check_finite(f, "x")
    check_finite(y, "y")
    # Q comes from x alone and c from y alone; b from both.
    culprit = "x or y"
    if not bool(torch.isfinite(q).all()):
        culprit = "x"
    elif not bool(torch.isfinite(cc)):
        culprit = "y"
    raise ValueError(
        f"the HSIC statistics overflowed in {f.dtype}: {culprit} has values too large; rescale it, pass "
        "float64 x, or use a bounded kernel ('laplace', 'gaussian')"
    )


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
    and outputs), at the cost of a second Gram pass. (One block of `GramStatistics`.)
    """
    stats = GramStatistics(kernel, y_kernel, gamma, y_gamma, backend=backend, memory_limit=memory_limit)
    stats.add(Samples.check(x, y))
    return stats.q, stats.b, stats.c


def hsic(
    x, y, kernel: str = "laplace", y_kernel=None, gamma=None, y_gamma=None, *, backend=None, memory_limit=None
) -> torch.Tensor:
    """Each channel's biased HSIC with y: HSIC_b(x_k, y) = tr(K_k H L H) / n² = b_k / n², shape (C,).

    (Gretton et al.'s biased estimator with the 1/n² normalisation; the unnormalised b is what
    `hsic_matrix` returns.) Arguments as for `hsic_matrix`.
    """
    _, b, _ = hsic_matrix(x, y, kernel, y_kernel, gamma, y_gamma, backend=backend, memory_limit=memory_limit)
    return b / x.shape[0] ** 2
