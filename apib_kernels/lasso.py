"""The HSIC Lasso in Gram form: everything after `hsic_matrix` is a C×C problem.

    minimise  (βᵀQβ − 2bᵀβ + c) / (2·n_rows) + alpha·‖β‖₁      (optionally β ≥ 0)

With Q = AᵀA, b = Aᵀy, c = yᵀy for a design A of n_rows rows this is exactly scikit-learn's
`Lasso(fit_intercept=False)` objective ‖y − Aβ‖² / (2·n_rows) + alpha·‖β‖₁, so its alpha carries over
(for the HSIC Lasso, n_rows = n², the number of entries of a centered Gram). c only shifts the value,
so the solvers never need it.

Two solvers (`solver=`; named apart from the kernels' `backend=`, whose registry chooses among compiled,
Triton and torch implementations of one op by device — these are two algorithms with their own costs):
- "cpu": cyclic coordinate descent on the Gram form (gradient g = b − Qβ kept up to date, O(C) per
  coordinate that moves, O(1) per one that does not), glmnet-style alternation of full sweeps and sweeps
  over the non-zero coordinates, and a support Newton step that ends the long tail CD has on correlated
  Grams: a move to the exact minimiser on the current sign pattern (stopped where a coefficient would
  change sign), preceded, while Q restricted to the support is singular (duplicated channels, more
  non-zeros than the design's rank), by moves along its null directions that drop coefficients. No move
  increases the objective, and no null-direction move grows ‖β‖₁ past the point where g's float64
  rounding error could reach 1e-9·max|b| (such flat moves could otherwise run away, as on unpenalised
  signed fits of dependent columns). The compiled op `apib::lasso_cd` (csrc/cpu/lasso_cpu.cpp, problems in
  parallel) runs it when the extension is built; otherwise a numpy implementation of the same steps does.
- "torch": `apib_kernels.lasso_batched.solve_batched`, the GPU solver and the default for CUDA inputs: a
  batched orthant-wise projected Newton method (active-set identification, one batched Cholesky per
  iteration, a line search along the projection arc that never increases the objective), written as
  tensor ops — one call for all B problems, on Q's device.
All arithmetic is float64: the problems are C×C and their conditioning makes float32 too coarse.

Stopping rule (`tol`): after a full sweep (or a Newton iteration), stop when every coordinate satisfies
the optimality (KKT) conditions to within tol·max|b|, i.e. max_j v_j ≤ tol·max|b| with
    v_j = |g_j − λ·sign(β_j)| for β_j ≠ 0,   v_j = max(|g_j| − λ, 0) (positive: max(g_j − λ, 0)) for β_j = 0,
λ = alpha·n_rows and max|b| = n_rows·alpha_max(b, positive=False) the gradient's scale at β = 0. Unlike
scikit-learn's duality gap this needs no c, and at the returned β the objective is within
tol·max|b|·‖β − β*‖₁ / n_rows of the optimum. `max_iter` bounds the number of sweeps (full or over the
non-zero coordinates; for "torch", Newton iterations); problems that hit it are logged as a warning,
per call, or once for a whole block of calls inside `collect_convergence_warnings()`.
"""

import contextlib
import contextvars
import logging
import math
from numbers import Real

import numpy as np
import torch

from apib_kernels import extension
from apib_kernels.lasso_batched import PIVOT_REL, solve_batched
from apib_kernels.validation import check_finite, check_int, check_number, check_tensor

logger = logging.getLogger("apib_kernels")

# keep equal to kObjectiveSlack and kGrowthNoise in csrc/cpu/lasso_cpu.cpp (PIVOT_REL: kPivotRel)
_OBJECTIVE_SLACK = 1e-13
_GROWTH_NOISE = 1e-9

__all__ = [
    "LASSO_SOLVERS",
    "alpha_max",
    "collect_convergence_warnings",
    "lasso_gram",
    "lasso_objective",
    "lasso_path",
    "penalty_grid",
    "prepare_gram",
    "resolve_solver",
    "solve_prepared",
]

LASSO_SOLVERS = ("cpu", "torch")
"""The solvers: "cpu" (compiled coordinate descent, or its numpy fallback) and "torch" (`solve_batched`)."""


if extension.has_kernel("lasso_cd", "CPU"):

    @torch.library.register_fake("apib::lasso_cd")
    def _lasso_cd_fake(Q, b, alpha, coef0, n_rows, positive, tol, max_iter, newton):
        return b.new_empty(b.shape), b.new_empty(b.shape[:1], dtype=torch.int64), b.new_empty(b.shape[:1])


# ---------------------------------------------------------------------------------------------------
# Input checks


def _check_float_tensor(t, name: str) -> None:
    check_tensor(t, name)
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")


def prepare_gram(Q, b, device="cpu", *, check: bool = True):
    """Validates Q (C, C) / (B, C, C) and b (C,) / (B, C); returns float64 copies on `device` (B, C, C),
    (B, C), whether the input was batched, and the result dtype and device (the promoted input dtype and
    Q's device) — the operands of `solve_prepared` and `lasso_knots`. check=False skips the scans of Q
    and b (finite values, Q's diagonal >= 0) for statistics that are known to pass them."""
    _check_float_tensor(Q, "Q")
    _check_float_tensor(b, "b")
    if Q.dim() not in (2, 3) or Q.shape[-1] != Q.shape[-2] or Q.shape[-1] == 0:
        raise ValueError(
            f"Q must be a square (C, C) matrix or a (B, C, C) batch with C >= 1, got shape {tuple(Q.shape)}"
        )
    batched = Q.dim() == 3
    if b.shape != Q.shape[:-1]:
        want = "(B, C)" if batched else "(C,)"
        raise ValueError(f"b must have shape {want} = {tuple(Q.shape[:-1])} to match Q, got {tuple(b.shape)}")
    if b.device != Q.device:
        raise ValueError(f"b must be on Q's device {Q.device}, got {b.device}")
    if check:
        check_finite(Q, "Q")
        check_finite(b, "b")
    q = Q.detach().to(device, torch.float64).reshape(-1, *Q.shape[-2:])
    if check and bool((q.diagonal(dim1=1, dim2=2) < 0).any()):
        raise ValueError("Q must be positive semidefinite, but it has a negative diagonal entry")
    # Only the symmetric part enters the objective; averaging removes GEMM rounding asymmetry.
    q = (q + q.transpose(1, 2)) * 0.5
    bb = b.detach().to(device, torch.float64).reshape(q.shape[:2])
    return q.contiguous(), bb.contiguous(), batched, torch.promote_types(Q.dtype, b.dtype), Q.device


def resolve_solver(solver, Q) -> tuple[str, torch.device]:
    """The solver for Q and where it solves: `solver` if given, else "torch" for CUDA inputs and "cpu"
    otherwise; "cpu" solves on the CPU, "torch" on Q's device."""
    if solver is not None and solver not in LASSO_SOLVERS:
        raise ValueError(f"solver must be one of {LASSO_SOLVERS} or None, got {solver!r}")
    _check_float_tensor(Q, "Q")
    if solver is None:
        solver = "torch" if Q.device.type == "cuda" else "cpu"
    return solver, Q.device if solver == "torch" else torch.device("cpu")


def _alphas(alpha, batch: int, batched: bool) -> torch.Tensor:
    """alpha as a float64 CPU tensor (B,), from a number, a 0-dim tensor or (batched) a (B,) tensor."""
    if isinstance(alpha, torch.Tensor):
        if alpha.is_complex() or alpha.dtype == torch.bool:
            raise TypeError(f"alpha must be real, got {alpha.dtype}")
        if alpha.dim() == 0 or (batched and alpha.shape == (batch,)):
            a = alpha.detach().to("cpu", torch.float64).expand(batch)
        else:
            want = f"a scalar or shape (B,) = ({batch},)" if batched else "a scalar"
            raise ValueError(f"alpha must be {want}, got shape {tuple(alpha.shape)}")
    elif isinstance(alpha, Real) and not isinstance(alpha, bool):
        a = torch.full((batch,), float(alpha), dtype=torch.float64)
    else:
        raise TypeError(f"alpha must be a number or a tensor, got {type(alpha).__name__}")
    if not bool(torch.isfinite(a).all()) or bool((a < 0).any()):
        raise ValueError(f"alpha must be finite and >= 0, got {alpha!r}")
    return a.contiguous()


def _start(coef0, b: torch.Tensor, batched: bool, positive: bool) -> torch.Tensor:
    """coef0 (C,) / (B, C) as a float64 (B, C) start on b's device; zeros if None."""
    if coef0 is None:
        return torch.zeros_like(b)
    _check_float_tensor(coef0, "coef0")
    want = b.shape if batched else b.shape[1:]
    if coef0.shape != want:
        raise ValueError(f"coef0 must have b's shape {tuple(want)}, got {tuple(coef0.shape)}")
    check_finite(coef0, "coef0")
    c0 = coef0.detach().to(b.device, torch.float64).reshape(b.shape).clone()
    return c0.clamp_(min=0) if positive else c0


# ---------------------------------------------------------------------------------------------------
# The solver: compiled op, or the same algorithm in numpy


def _sweep(Q, d, beta, g, lam, positive, idx) -> bool:
    changed = False
    for j in idx:
        dj = d[j]
        if dj <= 0:
            continue
        old = beta[j]
        z = g[j] + dj * old
        if z > lam:
            nb = (z - lam) / dj
        elif not positive and z < -lam:
            nb = (z + lam) / dj
        else:
            nb = 0.0
        if nb == old:
            continue
        g -= (nb - old) * Q[j]
        changed = changed or (nb > 0) != (old > 0) or (nb < 0) != (old < 0)
        beta[j] = nb
    return changed


def _violation(d, beta, g, lam, positive, idx) -> float:
    if len(idx) == 0:
        return 0.0
    bj, gj = beta[idx], g[idx]
    zero = np.maximum((gj if positive else np.abs(gj)) - lam, 0.0)
    v = np.where(bj > 0, np.abs(gj - lam), np.where(bj < 0, np.abs(gj + lam), zero))
    v = np.where(d[idx] > 0, v, 0.0)
    return float(v.max())


def _gradient(Q, b, beta):
    g = b.copy()
    for j in np.flatnonzero(beta):
        g -= beta[j] * Q[j]
    return g


def _objective_g(b, beta, g, lam) -> float:
    return float(np.sum(beta * (-0.5 * (b + g)))) + lam * float(np.abs(beta).sum())


def _cholesky(M):
    """Lower Cholesky factor of M, column by column -> (L, -1), or (L, c) at the first column c whose
    pivot is numerically zero (L complete for the columns before c and row c left of the diagonal)."""
    k = len(M)
    L = np.zeros_like(M)
    for c in range(k):
        s = M[c, c] - L[c, :c] @ L[c, :c]
        if not s > PIVOT_REL * M[c, c]:
            return L, c
        L[c, c] = math.sqrt(s)
        L[c + 1 :, c] = (M[c + 1 :, c] - L[c + 1 :, :c] @ L[c, :c]) / L[c, c]
    return L, -1


def _l1(v) -> float:
    """‖v‖₁ summed in index order, as the C++ solver sums it."""
    return float(np.cumsum(np.abs(v))[-1])


def _step_length(bs, direction, t_max):
    """Largest step <= t_max along direction before a coefficient reaches zero, and which (-1: none)."""
    t, block = t_max, -1
    for r in np.flatnonzero(((bs > 0) & (direction < 0)) | ((bs < 0) & (direction > 0))):
        tj = -bs[r] / direction[r]
        if tj < t:
            t, block = tj, int(r)
    return t, block


def _newton(Q, b, beta, lam, idx, l1_limit):
    """Support Newton step (see csrc/cpu/lasso_cpu.cpp): moves towards the minimiser on the current sign
    pattern (along null directions while Q_SS is singular), repeated while they drop a coordinate, until
    one reaches its face's minimiser. Returns (pattern changed, new g or None)."""
    changed, g_out = False, None
    for _ in range(len(idx) + 1):
        moved, singular, g_new = _face_step(Q, b, beta, lam, idx, l1_limit)
        changed = changed or moved == 1
        g_out = g_new if g_new is not None else g_out
        if moved < 0 or (moved == 0 and not singular):
            break
    return changed, g_out


def _face_step(Q, b, beta, lam, idx, l1_limit):
    """One move of _newton -> (-1: none, 0: made, 1: made and a coordinate dropped; null-direction
    move?; new g or None). A null-direction move that grows ‖β‖₁ past l1_limit is refused (see the C++
    move)."""
    S = np.array([j for j in idx if beta[j] != 0], dtype=np.int64)
    if len(S) == 0:
        return -1, False, None
    bs = beta[S]
    sigma_lam = np.where(bs > 0, lam, -lam)
    L, fail = _cholesky(Q[np.ix_(S, S)])
    g_old = _gradient(Q, b, beta)
    if fail < 0:
        x = np.linalg.solve(L.T, np.linalg.solve(L, b[S] - sigma_lam))
        direction, t = x - bs, 1.0
    else:
        direction = np.zeros(len(S))
        if fail:
            direction[:fail] = -np.linalg.solve(L[:fail, :fail].T, L[fail, :fail])
        direction[fail] = 1.0
        slope = -float((g_old[S] - sigma_lam) @ direction)
        if slope > 0 or (slope == 0 and _step_length(bs, direction, math.inf)[1] < 0):
            direction = -direction
        t = math.inf
    t, block = _step_length(bs, direction, t)
    if not math.isfinite(t):
        return -1, fail >= 0, None
    ts = bs + t * direction
    if block >= 0:
        ts[block] = 0.0
    ts[((bs > 0) & (ts < 0)) | ((bs < 0) & (ts > 0))] = 0.0
    trial = beta.copy()
    trial[S] = ts
    if fail >= 0:
        l1_new = _l1(trial)
        if l1_new > _l1(beta) and l1_new > l1_limit:
            return -1, True, None
    g_new = _gradient(Q, b, trial)
    f_old = _objective_g(b, beta, g_old, lam)
    if not _objective_g(b, trial, g_new, lam) <= f_old + _OBJECTIVE_SLACK * abs(f_old):
        return -1, fail >= 0, None
    dropped = bool(np.any((trial == 0) != (beta == 0)))
    beta[:] = trial
    return int(dropped), fail >= 0, g_new


def _solve_one_numpy(Q, b, beta, lam, positive, tol, max_iter, newton):
    C = len(b)
    d = np.diag(Q).copy()
    beta[(d <= 0) | (positive & (beta < 0))] = 0.0
    scale = float(np.abs(b).max()) or 1.0
    thr = tol * scale
    noise = C * float(np.finfo(np.float64).eps) * max(float(d.max()), 0.0)  # per unit of ‖β‖₁, as in C++
    l1_limit = _GROWTH_NOISE * scale / noise if noise > 0 else math.inf
    g = _gradient(Q, b, beta)
    every = np.arange(C)
    it, pattern_new = 0, True
    while it < max_iter:
        if _sweep(Q, d, beta, g, lam, positive, range(C)):
            pattern_new = True
        it += 1
        if _violation(d, beta, g, lam, positive, every) <= thr:
            return it, _violation(d, beta, g, lam, positive, every) / scale
        active = np.flatnonzero(beta)
        active_list = active.tolist()
        while it < max_iter:
            changed = _sweep(Q, d, beta, g, lam, positive, active_list)
            it += 1
            pattern_new = pattern_new or changed
            if _violation(d, beta, g, lam, positive, active) <= thr:
                break
            if newton and not changed and pattern_new:
                pattern_new, g_new = _newton(Q, b, beta, lam, active_list, l1_limit)
                if g_new is not None:
                    g = g_new
                if _violation(d, beta, g, lam, positive, active) <= thr:
                    break
    return it, _violation(d, beta, g, lam, positive, every) / scale


def _solve_numpy(Q, b, alpha, coef0, n_rows, positive, tol, max_iter, newton):
    q, bb, a = Q.numpy(), b.numpy(), alpha.numpy()
    coef = coef0.numpy().copy()
    n_iter = np.zeros(len(bb), dtype=np.int64)
    viol = np.zeros(len(bb))
    for p in range(len(bb)):
        n_iter[p], viol[p] = _solve_one_numpy(
            q[p], bb[p], coef[p], float(a[p]) * n_rows, positive, tol, max_iter, newton
        )
    return torch.from_numpy(coef), torch.from_numpy(n_iter), torch.from_numpy(viol)


def _solve(Q, b, alpha, coef0, n_rows, positive, tol, max_iter, newton, compiled=None, solver="cpu"):
    """Float64 Q (B, C, C), b (B, C), alpha (B,), coef0 (B, C) -> coef (B, C), sweeps or iterations (B,)
    and the final KKT violation / max|b| (B,), logging a warning for problems that did not converge.

    solver "cpu": the inputs on the CPU; the compiled op, or (compiled=False, or without the extension)
    the numpy fallback; newton as in `lasso_gram`. "torch": `solve_batched` on the inputs' device.
    """
    if solver == "torch":
        out, unit = solve_batched(Q, b, alpha, coef0, n_rows, positive, tol, max_iter), "iterations"
    else:
        if compiled is None:
            compiled = extension.has_kernel("lasso_cd", "CPU")
        if compiled:
            out = torch.ops.apib.lasso_cd(Q, b, alpha, coef0, n_rows, positive, tol, max_iter, newton)
        else:
            out = _solve_numpy(Q, b, alpha, coef0, n_rows, positive, tol, max_iter, newton)
        unit = "sweeps"
    coef, n_iter, viol = out
    bad = int((viol > tol).sum())
    worst = float(viol.max()) if bad else 0.0
    collector = _collector.get()
    if collector is not None:
        collector.add(bad, len(viol), worst, tol, max_iter, unit)
    elif bad:
        logger.warning(
            "lasso: %d of %d problems did not converge in max_iter=%d %s (worst relative KKT "
            "violation %.3g > tol=%.3g); raise max_iter or tol",
            bad,
            len(viol),
            max_iter,
            unit,
            worst,
            tol,
        )
    return coef, n_iter, viol


class _Unconverged:
    """What the solves inside one `collect_convergence_warnings` block left unconverged."""

    def __init__(self):
        self.solves = self.bad_solves = self.problems = self.bad_problems = 0
        self.worst = None  # (violation, tol, max_iter, unit) of the solve furthest over its tol

    def add(self, bad: int, problems: int, violation: float, tol: float, max_iter: int, unit: str) -> None:
        self.solves += 1
        self.problems += problems
        if bad:
            self.bad_solves += 1
            self.bad_problems += bad
            self._keep_worst((violation, tol, max_iter, unit))

    def merge(self, other: "_Unconverged") -> None:
        self.solves += other.solves
        self.problems += other.problems
        self.bad_solves += other.bad_solves
        self.bad_problems += other.bad_problems
        self._keep_worst(other.worst)

    def _keep_worst(self, worst) -> None:
        """Keeps `worst` if its violation is further over its tol than the current worst's."""
        if worst is not None and (self.worst is None or worst[0] * self.worst[1] > self.worst[0] * worst[1]):
            self.worst = worst


_collector: contextvars.ContextVar[_Unconverged | None] = contextvars.ContextVar(
    "apib_kernels_lasso_collector", default=None
)


@contextlib.contextmanager
def collect_convergence_warnings():
    """Within the block, the solvers' "did not converge" warnings are not logged per solve but counted,
    and logged once on exit as one summary warning (solves and problems that hit max_iter, the worst
    KKT violation relative to its tol). For callers that solve many problems in a row, such as the
    pruning search. Blocks nest: an inner block's counts go to the outer one."""
    mine = _Unconverged()
    token = _collector.set(mine)
    try:
        yield
    finally:
        _collector.reset(token)
        outer = _collector.get()
        if outer is not None:
            outer.merge(mine)
        elif mine.bad_solves:
            violation, tol, max_iter, unit = mine.worst
            logger.warning(
                "lasso: %d of %d solves (%d of %d problems) did not converge; the worst: relative KKT "
                "violation %.3g > tol=%.3g after max_iter=%d %s; raise max_iter or tol",
                mine.bad_solves,
                mine.solves,
                mine.bad_problems,
                mine.problems,
                violation,
                tol,
                max_iter,
                unit,
            )


# ---------------------------------------------------------------------------------------------------
# Public API


def lasso_gram(
    Q, b, alpha, n_rows, *, positive=True, tol=1e-7, max_iter=10_000, coef0=None, newton=True, solver=None
):
    """Solves the Lasso in Gram form: argmin_β (βᵀQβ − 2bᵀβ)/(2·n_rows) + alpha·‖β‖₁ (β ≥ 0 if positive).

    Q: (C, C) positive semidefinite (e.g. `hsic_matrix`'s Q; only its symmetric part is used),
    b: (C,), alpha: a number ≥ 0 -> coef (C,).
    Batched: Q (B, C, C), b (B, C), alpha a number or (B,), coef0 (B, C) -> coef (B, C): B independent
    problems (several layers of equal width, or one layer at several penalties) in one call.
    n_rows: the design's row count (n² for the HSIC Lasso of n samples); with Q = AᵀA, b = Aᵀy the
    result is scikit-learn `Lasso(alpha, fit_intercept=False, positive=positive)` fitted on (A, y).
    tol: relative KKT tolerance (module docstring); max_iter: maximum number of sweeps ("cpu") or
    Newton iterations ("torch"); coef0: warm start (projected onto β ≥ 0 when positive); newton: allow
    the CPU solver's support Newton steps (False: plain CD; the "torch" solver is always Newton).
    Coordinates with Q_jj = 0 (constant channels) get exactly 0.
    solver: "cpu" — coordinate descent (compiled op, or numpy) on float64 CPU copies; "torch" — the
    batched projected Newton solver, one call for all B problems, in float64 on Q's device (the GPU
    solver); None — "torch" for CUDA inputs, "cpu" otherwise.

    float32 or float64 inputs; the result has the promoted input dtype and Q's device.
    """
    name, where = resolve_solver(solver, Q)
    q, bb, batched, dtype, device = prepare_gram(Q, b, where)
    coef = solve_prepared(
        q,
        bb,
        batched,
        alpha,
        n_rows,
        positive=positive,
        tol=tol,
        max_iter=max_iter,
        coef0=coef0,
        newton=newton,
        solver=name,
    )
    return coef.to(device=device, dtype=dtype)


def solve_prepared(
    q, b, batched, alpha, n_rows, *, positive=True, tol=1e-7, max_iter=10_000, coef0=None, newton=True, solver
):
    """`lasso_gram` on operands from `prepare_gram` — float64 q (B, C, C), b (B, C) on the solver's device,
    `batched` whether the problem was given as a batch — for callers that solve one problem at many
    penalties: the scalars and coef0 are checked, Q and b are neither checked nor copied again.
    Returns float64 coef (B, C), or (C,) when not batched, on q's device."""
    a = _alphas(alpha, b.shape[0], batched).to(q.device)
    n = check_number(n_rows, "n_rows", positive=True)
    t = check_number(tol, "tol")
    m = check_int(max_iter, "max_iter", 1)
    c0 = _start(coef0, b, batched, bool(positive))
    coef, _, _ = _solve(q, b, a, c0, n, bool(positive), t, m, bool(newton), solver=solver)
    return coef if batched else coef[0]


def lasso_objective(Q, b, c, coef, alpha, n_rows):
    """(βᵀQβ − 2bᵀβ + c)/(2·n_rows) + alpha·‖β‖₁ in float64: scikit-learn's Lasso objective on the design.

    Q (C, C), b (C,), coef (C,), c and alpha numbers -> 0-dim tensor; batched Q (B, C, C), b (B, C),
    coef (B, C), c and alpha numbers or (B,) -> (B,). On the CPU, float64.
    """
    q, bb, batched, _, _ = prepare_gram(Q, b)
    a = _alphas(alpha, bb.shape[0], batched)
    n = check_number(n_rows, "n_rows", positive=True)
    _check_float_tensor(coef, "coef")
    if coef.shape != b.shape:
        raise ValueError(f"coef must have b's shape {tuple(b.shape)}, got {tuple(coef.shape)}")
    w = coef.detach().to("cpu", torch.float64).reshape(bb.shape)
    cc = torch.as_tensor(c, dtype=torch.float64).detach().cpu()
    if cc.dim() > 1 or (cc.dim() == 1 and (not batched or cc.shape[0] != bb.shape[0])):
        raise ValueError(
            f"c must be a number{' or shape (B,)' if batched else ''}, got shape {tuple(cc.shape)}"
        )
    cc = cc.expand(bb.shape[0])
    quad = torch.einsum("pi,pij,pj->p", w, q, w)
    obj = (quad - 2 * (bb * w).sum(1) + cc) / (2 * n) + a * w.abs().sum(1)
    return obj if batched else obj[0]


def alpha_max(b, n_rows, positive=True):
    """The smallest alpha whose solution is all zeros: max(b)/n_rows (positive) or max|b|/n_rows.

    b: (C,) -> 0-dim float64 tensor, or (B, C) -> (B,). Rounded up where needed so that
    alpha_max·n_rows ≥ max(b) holds in floating point too, so `lasso_gram` at alpha_max returns exact zeros.
    (Only b matters: at β = 0 the gradient is −b.)
    """
    _check_float_tensor(b, "b")
    if b.dim() not in (1, 2) or b.shape[-1] == 0:
        raise ValueError(f"b must have shape (C,) or (B, C) with C >= 1, got {tuple(b.shape)}")
    check_finite(b, "b")
    n = check_number(n_rows, "n_rows", positive=True)
    bb = b.detach().to("cpu", torch.float64)
    top = (bb.amax(-1) if positive else bb.abs().amax(-1)).clamp(min=0)
    a = top / n
    return torch.where(a * n < top, torch.nextafter(a, torch.full_like(a, math.inf)), a)


def penalty_grid(top: float, n_alphas: int = 100, eps: float = 1e-3) -> torch.Tensor:
    """The regularization path's grid: n_alphas penalties (float64, CPU) log-spaced from top = alpha_max
    down to eps·top, as scikit-learn's lasso_path (a tiny positive constant when top is about 0)."""
    if top <= np.finfo(np.float64).tiny:
        return torch.full((n_alphas,), np.finfo(np.float64).resolution, dtype=torch.float64)
    grid = torch.from_numpy(np.geomspace(top, top * eps, num=n_alphas))
    grid[0] = top
    return grid


def lasso_path(
    Q,
    b,
    n_rows,
    *,
    positive=True,
    alphas=None,
    n_alphas=100,
    eps=1e-3,
    tol=1e-7,
    max_iter=10_000,
    solver=None,
):
    """Solutions along a decreasing grid of penalties, each warm-started from the previous one.

    Q (C, C), b (C,) -> alphas (K,), coefs (K, C), n_nonzero (K,) (int64): coefs[k] = lasso_gram(Q, b,
    alphas[k], n_rows, positive=positive). Without `alphas`, K = n_alphas penalties log-spaced from
    alpha_max(b) down to eps·alpha_max(b), as scikit-learn's lasso_path; so coefs[0] is all zeros.
    Given `alphas` (numbers ≥ 0) are sorted decreasing. alphas are float64, coefs have the promoted
    input dtype (as `lasso_gram`'s result); all on Q's device. solver: as in `lasso_gram` ("torch": the
    batched projected Newton solver on Q's device, the default for CUDA inputs).
    """
    name, where = resolve_solver(solver, Q)
    q, bb, batched, dtype, device = prepare_gram(Q, b, where)
    if batched:
        raise ValueError(f"lasso_path solves one problem: Q must be (C, C), got shape {tuple(Q.shape)}")
    n = check_number(n_rows, "n_rows", positive=True)
    t = check_number(tol, "tol")
    m = check_int(max_iter, "max_iter", 1)
    positive = bool(positive)
    if alphas is None:
        k = check_int(n_alphas, "n_alphas", 1)
        e = check_number(eps, "eps", positive=True)
        if e > 1:
            raise ValueError(f"eps must be in (0, 1] (the grid ends at eps·alpha_max), got {eps!r}")
        grid = penalty_grid(float(alpha_max(bb[0], n, positive)), k, e)
    else:
        if isinstance(alphas, torch.Tensor):
            grid = alphas.detach().to("cpu", torch.float64).reshape(-1)
        else:
            try:
                grid = torch.as_tensor(np.asarray(alphas, dtype=np.float64)).reshape(-1)
            except (TypeError, ValueError) as err:
                raise ValueError(f"alphas must be a sequence of numbers >= 0, got {alphas!r}") from err
        if grid.numel() == 0 or not bool(torch.isfinite(grid).all()) or bool((grid < 0).any()):
            raise ValueError(f"alphas must be a non-empty sequence of finite numbers >= 0, got {alphas!r}")
        grid = grid.sort(descending=True).values
    coefs = bb.new_empty(len(grid), bb.shape[1])
    beta = torch.zeros_like(bb)
    for i, a in enumerate(grid.to(bb.device)):
        beta, _, _ = _solve(q, bb, a.reshape(1), beta, n, positive, t, m, True, solver=name)
        coefs[i] = beta[0]
    coefs = coefs.to(device=device, dtype=dtype)
    return grid.to(device), coefs, (coefs != 0).sum(1)
