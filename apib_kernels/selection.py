"""HSIC Lasso feature and channel selection: the user-facing APIB per-layer step.

`hsic_lasso(x, y, ...)` computes the Gram-form statistics Q (C, C), b (C,), c of a layer (or of an
(n, d) feature table) once, then solves the non-negative HSIC Lasso

    min_β  (βᵀQβ − 2bᵀβ + c) / (2·n_rows) + alpha·‖β‖₁   (β ≥ 0 unless positive=False)

— scikit-learn Lasso's objective on the explicit n_rows × C design of vectorised centered Grams, so
the reference code's alpha values carry over — at a given penalty, or along the regularization path
for a given number of channels. Every solve after the statistics is a C × C problem.
"""

import logging
import math
import time
from dataclasses import dataclass, field

import torch

from apib_kernels.backends import synchronize
from apib_kernels.homotopy import knots_prepared
from apib_kernels.lasso import (
    alpha_max,
    collect_convergence_warnings,
    penalty_grid,
    prepare_gram,
    resolve_solver,
    solve_prepared,
)
from apib_kernels.statistics import GramStatistics, Samples
from apib_kernels.validation import check_int, check_number

logger = logging.getLogger(__name__)

DEFAULT_ALPHA_FRACTION = 0.1
"""With neither alpha nor n_select, alpha = DEFAULT_ALPHA_FRACTION · alpha_max (see `hsic_lasso`)."""

PATH_ALPHAS = 100
PATH_EPS = 1e-3
"""The n_select search's penalties: from alpha_max down to PATH_EPS·alpha_max, on the grid of PATH_ALPHAS
penalties (`lasso_path`'s default) where a grid penalty falls in the right stretch of the path."""

KNOTS_MAX_CHANNELS = 64
"""n_select follows the exact path (`lasso_knots`) up to this many non-constant channels and walks the grid
above (see `HSICLassoProblem.select_count`). The path's steps (two C×C products and triangular solves in
numpy each) cost more than the compiled solver's warm-started grid solves: on bench_hsic_lasso's layer
statistics (64 images, ReLU maps) the path took 1.7-2.2× the walk's time at C = 16-64 (about 0.4-1 ms
more per call) and 2.8-3× at C = 128, 2-3× at C = 256-512; on strongly correlated synthetic channels it
was 0.35-0.7× the walk's time for n_select ≥ C/4. Below this size the exact answer is worth that."""

LASSO_TOL = 1e-7
"""The relative KKT tolerance of every solve (`lasso_gram`'s default)."""

_MAX_HALVINGS = 64
_MAX_BISECTIONS = 40
_BISECTION_RTOL = 1e-4


@dataclass(frozen=True)
class HSICLassoResult:
    """What `hsic_lasso` found.

    coef: (C,) float64 Lasso coefficients at `alpha`; zero outside `selected`.
    selected: (k,) int64 indices of the kept channels, largest coefficient first (|coef| when
        positive=False); channels added by the relevance fill (coefficient 0) come last, by decreasing
        `hsic`.
    alpha: the penalty actually used (after the omega rule or the path search).
    hsic: (C,) float64 channel-output relevance b_k = ⟨K̄_k, L̄⟩_F that the Lasso saw (normalised when
        normalize=True, summed over blocks in block mode); b / n² is the biased HSIC.
    timings: seconds per phase, {"statistics": ..., "solve": ...}.
    """

    coef: torch.Tensor
    selected: torch.Tensor
    alpha: float
    hsic: torch.Tensor
    timings: dict = field(default_factory=dict)


def _check_alpha(alpha):
    """alpha as a float (numbers and 0-dim real tensors, e.g. from `alpha_max`), or None."""
    if (
        isinstance(alpha, torch.Tensor)
        and alpha.dim() == 0
        and not (alpha.is_complex() or alpha.dtype == torch.bool)
    ):
        alpha = alpha.item()
    return None if alpha is None else check_number(alpha, "alpha")


def _check_args(alpha, n_select, omega, block_size, n_permutations, n: int, c: int):
    if alpha is not None and n_select is not None:
        raise ValueError("alpha and n_select are exclusive: give a penalty or a number of channels, not both")
    if n_select is not None:
        check_int(n_select, "n_select", 1, c)
    check_int(omega, "omega", 1, c)
    if block_size is not None:
        check_int(block_size, "block_size", 2, n)
    check_int(n_permutations, "n_permutations", 1)
    if n_permutations > 1 and block_size is None:
        raise ValueError("n_permutations > 1 needs block_size: permuting all n samples changes nothing")


def _nnz(coef: torch.Tensor) -> int:
    return int(torch.count_nonzero(coef))


class HSICLassoProblem:
    """One layer's HSIC Lasso in Gram form, solved at any penalty or channel count without recomputing
    its statistics: the pruning search's unit, and what `hsic_lasso` solves.

    q (C, C), b (C,) (float64 as `GramStatistics.lasso_statistics` gives them, constant channels zeroed)
    and n_rows, the number of rows of the implied design (n² for one Gram per channel). `from_data`
    computes them from (x, y), `from_statistics` takes them from a `GramStatistics`; the constructor
    checks given ones. positive: β ≥ 0 (the paper's problem).
    solver: the Lasso solver of `lasso_gram` ("cpu" or "torch"); "cpu" by default whatever q's device,
    since one layer's C×C Lasso is a chain of tiny dependent steps that on a GPU each cost a launch's
    latency (ResNet-50's search on an H200: 7.4 s with the GPU's solver, 0.39 s with the CPU's).
    Solves run on the channels with a non-zero Gram only: the others cannot carry weight (Q_kk = 0
    means K̄_k = 0), and leaving them out keeps zero diagonals away from the coordinate updates.
    """

    def __init__(
        self, q: torch.Tensor, b: torch.Tensor, n_rows: float, positive: bool = True, *, solver="cpu"
    ):
        self._setup(q, b, n_rows, positive, solver, check=True)

    def _setup(self, q, b, n_rows, positive, solver, check: bool) -> None:
        self.hsic = b
        self.positive = bool(positive)
        self._q, self._n_rows = q, n_rows
        self._rows = check_number(n_rows, "n_rows", positive=True)
        self.solver, where = resolve_solver(solver, q)
        qq, bb, batched, self._dtype, self._device = prepare_gram(q, b, where, check=check)
        if batched:
            raise ValueError(f"q must be one (C, C) matrix, got shape {tuple(q.shape)}")
        self._active = torch.nonzero(q.diagonal() > 0).flatten()
        on = self._active.to(where)
        self._qa = qq[:, on][:, :, on].contiguous()
        self._ba = bb[:, on].contiguous()
        self._b_active = b[self._active]

    @classmethod
    def from_statistics(cls, stats: GramStatistics, positive: bool = True, *, solver="cpu"):
        """The problem of a `GramStatistics`' sums (`lasso_statistics`), which need no further checks."""
        q, b, n_rows = stats.lasso_statistics()
        problem = cls.__new__(cls)
        problem._setup(q, b, n_rows, positive, solver, check=False)
        return problem

    @classmethod
    def from_data(
        cls,
        x,
        y,
        *,
        positive=True,
        kernel="laplace",
        y_kernel=None,
        gamma=None,
        y_gamma=None,
        normalize=False,
        block_size=None,
        n_permutations=1,
        seed=0,
        backend=None,
        memory_limit=None,
        solver="cpu",
    ) -> "HSICLassoProblem":
        """The statistics of x (n, C, *spatial) against y (n, *); arguments as for `hsic_lasso`."""
        stats = GramStatistics(
            kernel, y_kernel, gamma, y_gamma, normalize=normalize, backend=backend, memory_limit=memory_limit
        )
        return cls._from_samples(
            Samples.check(x, y), stats, block_size, n_permutations, seed, positive, solver
        )

    @classmethod
    def _from_samples(cls, samples, stats, block_size, n_permutations, seed, positive, solver):
        if block_size is None:
            stats.add(samples)
        else:
            stats.add_blocks(samples, block_size, n_permutations, seed)
        return cls.from_statistics(stats, positive, solver=solver)

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(Q, b, n_rows): the Gram-form statistics this problem solves, e.g. for `lasso_knots`."""
        return self._q, self.hsic, self._n_rows

    @property
    def num_channels(self) -> int:
        return self.hsic.shape[0]

    def alpha_max(self) -> float:
        """The smallest penalty at which every coefficient is zero."""
        if self._active.numel() == 0:
            return 0.0
        return max(0.0, float(alpha_max(self._b_active, self._rows, self.positive)))

    def _full(self, sub: torch.Tensor) -> torch.Tensor:
        out = sub.new_zeros(self.num_channels)
        out[self._active] = sub
        return out

    def solve(self, alpha: float, coef0=None, *, tol: float = LASSO_TOL, max_iter: int = 10_000, newton=True):
        """(C,) solution at alpha to `lasso_gram`'s relative KKT tolerance tol, warm-started from a (C,)
        coef0; max_iter and newton as for `lasso_gram`. In q's dtype and on its device."""
        if self._active.numel() == 0:
            return self._b_active.new_zeros(self.num_channels)
        sub0 = None if coef0 is None else coef0[self._active]
        sub = solve_prepared(
            self._qa,
            self._ba,
            False,
            alpha,
            self._rows,
            positive=self.positive,
            tol=tol,
            max_iter=max_iter,
            coef0=sub0,
            newton=newton,
            solver=self.solver,
        )
        return self._full(sub.to(device=self._device, dtype=self._dtype))

    def _finish(self, used: float, coef: torch.Tensor, keep: int | None):
        selected = _order(coef, self.hsic, self.positive, keep)
        kept = torch.zeros(self.num_channels, dtype=torch.bool, device=coef.device)
        kept[selected] = True
        return used, coef.masked_fill(~kept, 0), selected

    def select(
        self, alpha: float, omega: int = 1, coef0: torch.Tensor | None = None, tol: float | None = None
    ):
        """Solve at alpha with the omega rule (see `hsic_lasso`); coef0 (C,) warm-starts the solver; tol
        is `lasso_gram`'s (default LASSO_TOL; a search that only counts channels may pass a looser one).
        Returns (alpha used, coef (C,), selected indices, largest coefficient first)."""
        tol = LASSO_TOL if tol is None else tol
        coef = self.solve(alpha, coef0, tol=tol)
        keep = None
        if _nnz(coef) < omega:
            alpha, coef = _lower_alpha(self, omega, alpha, coef, tol)
            keep = omega if _nnz(coef) < omega else None
            logger.info("alpha lowered to %.6g to keep at least omega = %d channels", alpha, omega)
        return self._finish(alpha, coef, keep)

    def select_count(self, n_select: int):
        """Exactly n_select channels from the regularization path (see `hsic_lasso`).
        Returns (alpha used, coef (C,), selected indices, largest coefficient first).

        The stretch of the path where the count first reaches n_select comes from the exact path
        (`lasso_knots`, stopped there) up to KNOTS_MAX_CHANNELS non-constant channels, then one solve at a
        penalty inside it — the first penalty of the walk's grid (`penalty_grid`) there, else its
        geometric middle — warm-started from the path. Above that size, or should the solver keep fewer
        channels there than the path (a degenerate tie), the grid is walked instead: to its first
        penalty with at least n_select, which can step over a short stretch where the count dips and
        rises again. Either way a penalty keeping more than n_select (channels joining together) is
        bisected towards the stretch's top."""
        n_select = check_int(n_select, "n_select", 1, self.num_channels)
        found = None
        if self._active.numel() <= KNOTS_MAX_CHANNELS:
            found = self._along_knots(n_select)
        used, coef, hi = found if found is not None else self._walk(n_select)
        if hi is not None:
            used, coef = _bisect(self, n_select, used, coef, hi)
        else:
            logger.info(
                "the least-penalised solution keeps %d < n_select = %d channels; filling by relevance",
                _nnz(coef),
                n_select,
            )
        return self._finish(used, coef, n_select)

    def _along_knots(self, count: int):
        """(alpha, coef, the stretch's top) at a penalty inside the first stretch of the exact path with at
        least `count` non-zeros; (PATH_EPS·alpha_max, coef, None) if the path has none above it; None where
        the path and the solver disagree or the path stopped short."""
        top = self.alpha_max()
        if top == 0:
            return 0.0, self._b_active.new_zeros(self.num_channels), None
        grid = penalty_grid(top, PATH_ALPHAS, PATH_EPS)
        end = float(grid[-1])
        qa, ba = self._qa[0].cpu(), self._ba[0].cpu()
        alphas, coefs = knots_prepared(
            qa, ba, self._rows, positive=self.positive, alpha_min=end, n_nonzero=count
        )
        reach = torch.nonzero(((coefs[:-1] != 0) | (coefs[1:] != 0)).sum(1) >= count).flatten()
        if reach.numel() == 0:
            if float(alphas[-1]) > end:
                return None
            return end, self.solve(end, self._full_start(coefs[-1]), tol=LASSO_TOL), None
        i = int(reach[0])
        hi, lo = float(alphas[i]), float(alphas[i + 1])
        # a grid penalty inside the stretch (its lower end too, where that is only where the path stopped)
        inside = grid[(grid < hi) & ((grid > lo) | (lo <= end))]
        alpha = float(inside[0]) if inside.numel() else math.sqrt(lo * hi)
        start = coefs[i] + (hi - alpha) / (hi - lo) * (coefs[i + 1] - coefs[i])
        coef = self.solve(alpha, self._full_start(start), tol=LASSO_TOL)
        return (alpha, coef, hi) if _nnz(coef) >= count else None

    def _full_start(self, sub: torch.Tensor) -> torch.Tensor:
        """A (C,) warm start in the solutions' dtype and device from the active channels' values."""
        return self._full(sub.to(device=self._device, dtype=self._dtype))

    def _walk(self, count: int):
        """Walks the grid of `penalty_grid` — PATH_ALPHAS penalties log-spaced from alpha_max down to
        PATH_EPS·alpha_max, each solve warm-started from the previous — and stops at the first penalty
        keeping at least `count` channels, since the solves get dearer as the penalty falls. Returns
        (alpha, coef (C,), the previous grid penalty), or (last alpha, its coef, None) if none did."""
        top = self.alpha_max()
        coef = self._b_active.new_zeros(self.num_channels)
        if top == 0:
            return 0.0, coef, None
        prev = top
        for a in penalty_grid(top, PATH_ALPHAS, PATH_EPS)[1:].tolist():
            coef = self.solve(a, coef, tol=LASSO_TOL)
            if _nnz(coef) >= count:
                return a, coef, prev
            prev = a
        return prev, coef, None


def _bisect(problem: HSICLassoProblem, count: int, lo: float, coef_lo, hi: float, tol: float = LASSO_TOL):
    """Largest alpha in [lo, hi) (to a relative _BISECTION_RTOL) whose solution keeps at least `count`
    channels, given that lo keeps at least `count` and hi fewer. Stops early once exactly `count` are
    kept. Geometric midpoints: penalties live on a log scale."""
    for _ in range(_MAX_BISECTIONS):
        if _nnz(coef_lo) == count or lo <= 0 or hi <= lo * (1 + _BISECTION_RTOL):
            break
        mid = math.sqrt(lo * hi)
        coef = problem.solve(mid, coef_lo, tol=tol)
        if _nnz(coef) >= count:
            lo, coef_lo = mid, coef
        else:
            hi = mid
    return lo, coef_lo


def _lower_alpha(problem: HSICLassoProblem, count: int, hi: float, coef_hi, tol: float = LASSO_TOL):
    """The omega rule: from a penalty hi keeping fewer than `count` channels, halve until at least
    `count` survive, then bisect back up. Returns (alpha, coef); alpha = 0 with fewer than `count`
    non-zeros when even the unpenalised solution has fewer."""
    hi = min(hi, problem.alpha_max())
    coef = coef_hi
    a = hi
    for _ in range(_MAX_HALVINGS if hi > 0 else 0):
        a /= 2
        coef = problem.solve(a, coef, tol=tol)
        if _nnz(coef) >= count:
            return _bisect(problem, count, a, coef, hi, tol)
        hi = a
    return 0.0, problem.solve(0.0, coef, tol=tol)


def _order(coef: torch.Tensor, hsic: torch.Tensor, positive: bool, keep: int | None) -> torch.Tensor:
    """Indices of the non-zero coefficients, largest first (stable: ties by index), cut to `keep`, then
    filled up to `keep` with the remaining channels by decreasing relevance."""
    score = coef if positive else coef.abs()
    nz = torch.nonzero(coef).flatten()
    ranked = nz[torch.sort(score[nz], descending=True, stable=True).indices]
    if keep is None or ranked.numel() >= keep:
        return ranked if keep is None else ranked[:keep]
    rest = torch.ones_like(coef, dtype=torch.bool)
    rest[ranked] = False
    rest_idx = torch.nonzero(rest).flatten()
    fill = rest_idx[torch.sort(hsic[rest_idx], descending=True, stable=True).indices]
    return torch.cat([ranked, fill[: keep - ranked.numel()]])


def hsic_lasso(
    x,
    y,
    alpha: float | None = None,
    *,
    n_select: int | None = None,
    omega: int = 1,
    positive: bool = True,
    kernel: str = "laplace",
    y_kernel: str | None = None,
    gamma: float | None = None,
    y_gamma: float | None = None,
    normalize: bool = False,
    block_size: int | None = None,
    n_permutations: int = 1,
    seed: int = 0,
    backend: str | None = None,
    memory_limit: int | None = None,
) -> HSICLassoResult:
    """Selects the channels (features) of x that are relevant to y and not redundant with each other.

    x: (n, C, *spatial) feature maps — channel k of sample i is x[i, k].flatten() — or an (n, d) feature
        table (each feature a channel with D = 1). Float dtypes, CPU or CUDA.
    y: (n, *) float outputs or (n,) integer class labels, on x's device.
    kernel, y_kernel, gamma, y_gamma, backend: as for `apib_kernels.hsic_matrix` (default: Laplace
        Grams for x; y_kernel = kernel for float y, "delta" 1[y_i = y_j] for labels).

    The statistics Q (C, C), b (C,), c are computed once (n_rows = n² rows of the implied design); then:
    - alpha given: solve at alpha (scikit-learn Lasso's scale: λ = n_rows·alpha). If fewer than `omega`
      channels are non-zero, the penalty is lowered for this problem — halved until at least omega
      survive, then bisected back up — the reference's per-layer rule; `result.alpha` is the penalty
      used. Should even the unpenalised solution keep fewer than omega (possible with positive=True or
      duplicated channels), the remaining channels are added by decreasing relevance b (coefficient 0).
    - n_select given: exactly n_select channels, those of the largest penalties (from alpha_max down to
      1e-3·alpha_max) that keep at least n_select non-zeros: the first such stretch of the exact path
      (`lasso_knots`) up to KNOTS_MAX_CHANNELS (64) channels; above, the first of `lasso_path`'s grid
      of 100 penalties that keeps as many (which can step over a stretch shorter than the grid's step
      where the count dips and rises again). A penalty keeping more (channels joining together) is
      bisected towards the stretch's top (see `HSICLassoProblem.select_count`), and the n_select
      largest coefficients are kept. If the least-penalised solution on the path has fewer non-zeros
      (positive=True, duplicated or redundant channels), the others are filled in by decreasing
      relevance b; they have coefficient 0 and come last in `selected`. `omega` does not apply.
    - neither: alpha = DEFAULT_ALPHA_FRACTION · alpha_max (0.1). A zero coefficient is optimal for channel
      k exactly when its residual relevance (b − Qβ)_k is at most n_rows·alpha, so this keeps the
      channels whose relevance not explained by the kept ones is at least a tenth of the strongest
      channel's. It is scale-free (the same for any kernel scale, n, or block size), lets the data choose
      how many channels survive — the APIB reading, where the count is the Lasso's answer rather than an
      input — and avoids an arbitrary fixed count. The omega rule applies.
    alpha and n_select together raise ValueError.

    positive: constrain β ≥ 0 (the paper's problem); False reproduces the reference code's unconstrained
        Lasso, and `selected` is then ranked by |coef|.
    normalize: use Frobenius-normalised Grams K̄_k/‖K̄_k‖_F and L̄/‖L̄‖_F as pyHSICLasso does, i.e.
        Q_kl/√(Q_kk·Q_ll), b_k/√(Q_kk·c), c = 1; zero-norm Grams stay 0. In block mode each block's Grams
        are normalised on their own, as in pyHSICLasso.
    block_size: the block HSIC estimator (Yamada et al. 2018, block HSIC Lasso): samples [jB, (j+1)B)
        form block j (no shuffling), each block's Grams are centred on their own, and Q, b, c are sums
        over the n // B blocks (n_rows = n_blocks·B²). Memory O(C·B²) per block instead of O(C·n²); the
        last n mod B samples are left out (logged). 2 ≤ block_size ≤ n.
    n_permutations, seed: with block_size, repeat the partition over n_permutations orderings — the first
        the given order, the others random permutations from a generator seeded with `seed` — and sum,
        as pyHSICLasso's M does (n_rows grows accordingly). Ignored when there is a single block.
    memory_limit: bytes of Grams built at once (`hsic_matrix`'s argument; in block mode, per batch of
        blocks, default 32 MiB).

    Constant channels (identical in every sample) have zero Grams: their statistics are set to exactly 0
    and their coefficient is 0. Bad arguments raise ValueError naming them; so do non-finite statistics.
    Returns an `HSICLassoResult`; everything on x's device.
    """
    samples = Samples.check(x, y)
    n, c = samples.x.shape[:2]
    alpha = _check_alpha(alpha)
    _check_args(alpha, n_select, omega, block_size, n_permutations, n, c)
    check_int(seed, "seed")
    stats = GramStatistics(
        kernel, y_kernel, gamma, y_gamma, normalize=normalize, backend=backend, memory_limit=memory_limit
    )

    t0 = time.perf_counter()
    problem = HSICLassoProblem._from_samples(
        samples, stats, block_size, n_permutations, seed, positive, "cpu"
    )
    synchronize(samples.x.device)
    t1 = time.perf_counter()
    if not bool((problem.hsic != 0).any()):
        if problem._active.numel() == 0:
            logger.warning("every channel of x is constant over the samples: none carries information")
        else:
            logger.warning("no channel has any relevance to y (b = 0): is y constant?")
    with collect_convergence_warnings():  # one summary for the many solves of a path or an omega search
        if n_select is not None:
            used, coef, selected = problem.select_count(n_select)
        else:
            used = DEFAULT_ALPHA_FRACTION * problem.alpha_max() if alpha is None else float(alpha)
            used, coef, selected = problem.select(used, omega)
    synchronize(samples.x.device)
    t2 = time.perf_counter()
    return HSICLassoResult(
        coef=coef,
        selected=selected,
        alpha=used,
        hsic=problem.hsic,
        timings={"statistics": t1 - t0, "solve": t2 - t1},
    )
