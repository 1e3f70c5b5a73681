"""The Gram-form Lasso as batched tensor ops: one projected Newton solve for B problems on any device.

    minimise over β:  f(β) = ½βᵀQβ − bᵀβ + λ‖β‖₁      (β ≥ 0 when positive),  λ = alpha·n_rows

per problem, with Q (B, C, C) symmetric positive semidefinite, b (B, C). The stopping rule, the
tolerance and the returned violation are those of `apib_kernels.lasso` (its module docstring).

Algorithm: orthant-wise projected Newton with active-set identification (after Bertsekas, "Projected
Newton methods for optimization problems with simple constraints", 1982). Each iteration, for every
open problem at once:

1. g = b − Qβ and the orthant σ: sign(β_j) where β_j ≠ 0; where β_j = 0, the sign of g_j for a KKT
   violator (|g_j| > λ; positive: g_j > λ), else 0. Violators enter only once the non-zero
   coordinates' largest violation is at most theirs (the support is solved first; letting every
   violator in every iteration makes the support swing between large and small). On the closed orthant
   f equals the quadratic f_σ(β) = ½βᵀQβ − (b − λσ)ᵀβ, whose negative gradient is r = g − λσ.
2. The active set A (Bertsekas's ε-active set, measured per coordinate so that it does not depend on
   the channels' scales): non-zero coordinates that r pushes towards zero and whose diagonal step
   r_j / Q_jj reaches zero; they take that step. The free set F: the other coordinates with σ_j ≠ 0,
   which take the Newton step Q_FF d_F = r_F — one batched Cholesky of Q masked to F (identity
   outside), with a small relative diagonal shift (Q_jj -> (1 + δ)·Q_jj) only where it fails or is
   numerically singular (duplicated channels, more free coordinates than the rank of Q).
3. A line search along the projection arc β(t) = P_σ(β + t·d), where P_σ zeroes the coordinates that
   would leave the orthant: the Armijo backtracking steps 1, ½, ¼, … and the exact minimiser of f along
   the arc (piecewise quadratic in t; it takes a singular Q_FF's huge null-space steps exactly to where
   a coefficient reaches zero) are evaluated in one batched product, and the one with the lowest
   objective among those passing the Armijo test f(β(t)) ≤ f(β) − c·rᵀ(β(t) − β) is taken. The
   objective never increases; a problem with no acceptable step cannot move again and stops.

Once the signs of the solution are identified the Newton step is exact, so a cold solve typically takes
5–20 iterations (a few tens for signed problems at small penalties on rank-deficient Grams) and a
warm-started one along a path 1–5. Converged problems leave the batch; the host syncs per iteration are
the convergence check and the check for failed factorisations.
"""

import math

import torch

__all__ = ["solve_batched"]

_ARMIJO = 1e-4
"""Armijo constant c: a step must achieve at least this fraction of its first-order decrease."""
_BACKTRACK = 0.5
_N_STEPS = 20
"""The line search's geometric steps 1, ½, …, ½^(_N_STEPS−1)."""
PIVOT_REL = 1e-10
"""A Cholesky pivot at most this fraction of its diagonal entry counts as singular: here, in the CPU
solver (`apib_kernels.lasso`; csrc/cpu/lasso_cpu.cpp kPivotRel) and on the exact path (`lasso_knots`)."""
_SHIFTS = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 1.0)
"""Relative diagonal shifts (Q_jj -> (1 + shift)·Q_jj on F), tried in turn where a factorisation fails."""


def solve_batched(Q, b, alpha, coef0, n_rows, positive, tol, max_iter):
    """Float64 Q (B, C, C) (symmetric), b (B, C), alpha (B,), coef0 (B, C) warm start, all on one device
    -> coef (B, C), Newton iterations (B,) int64, and the final max KKT violation / max|b| (B,) float64.

    Coordinates with Q_jj ≤ 0 stay exactly 0 (as does a warm start's β_j < 0 when positive). A problem
    stops when its relative violation is ≤ tol, when no step decreases its objective, or after max_iter
    iterations.
    """
    batch = b.shape[0]
    usable = Q.diagonal(dim1=1, dim2=2) > 0
    lam = alpha.to(b) * n_rows
    beta = torch.where(usable & ((coef0 > 0) | (not positive)), coef0, 0.0)
    scale = b.abs().amax(1)
    scale = torch.where(scale > 0, scale, 1.0)
    viol = torch.zeros_like(scale)
    n_iter = torch.zeros(batch, dtype=torch.int64, device=b.device)

    # the open problems: their indices into the batch, and their Q, b, λ, usable mask, threshold and β
    idx = torch.arange(batch, device=b.device)
    q, bp, lp, up, thr, bt = Q, b, lam, usable, tol * scale, beta
    moved = torch.ones(batch, dtype=torch.bool, device=b.device)
    for it in range(max_iter + 1):
        g = bp - _matvec(q, bt)
        v = _violations(bt, g, lp, up, positive).amax(1)
        viol[idx] = v
        open_ = (v > thr) & moved
        n_open = int(open_.sum())
        if n_open == 0 or it == max_iter:
            break
        if n_open < len(idx):
            keep = open_.nonzero().squeeze(1)
            idx, q, bp, lp, up, thr, bt, g = (t[keep] for t in (idx, q, bp, lp, up, thr, bt, g))
        new = _newton_step(q, bt, g, lp, up, positive)
        moved = (new != bt).any(1)
        bt = new
        beta[idx] = new
        n_iter[idx] += 1
    return beta, n_iter, viol / scale


def _matvec(Q, x):
    """Q (B, C, C), x (B, C) -> Qx (B, C)."""
    return torch.bmm(Q, x.unsqueeze(-1)).squeeze(-1)


def _violations(beta, g, lam, usable, positive):
    """The KKT violation of each coordinate (lasso.py's v_j, 0 where Q_jj ≤ 0) at β (B, C) with gradient
    g = b − Qβ (B, C) and penalty λ (B,) -> (B, C)."""
    lam = lam.unsqueeze(1)
    on = (g - lam * beta.sign()).abs()
    off = ((g if positive else g.abs()) - lam).clamp(min=0)
    return torch.where(usable, torch.where(beta != 0, on, off), 0.0)


def _orthant(beta, g, lam, usable, positive):
    """σ (B, C): sign(β_j) where β_j ≠ 0; where β_j = 0, the sign of g_j for a KKT violator (|g_j| > λ,
    positive: g_j > λ) — its descent direction — and 0 for the others. Violators at zero enter only once
    the non-zero coordinates' largest violation is at most theirs: the current support is solved first,
    which keeps iterations from swinging between large and small supports. 0 where Q_jj ≤ 0."""
    v = _violations(beta, g, lam, usable, positive)
    on = beta != 0
    support_first = torch.where(on, v, 0.0).amax(1) > torch.where(on, 0.0, v).amax(1)
    entering = torch.where((v > 0) & ~support_first.unsqueeze(1), g.sign(), 0.0)
    return torch.where(on, beta.sign(), entering)


def _project(x, sigma):
    """P_σ: x where it lies strictly inside the orthant σ, else 0 (elementwise, broadcasting)."""
    return torch.where(sigma * x > 0, x, 0.0)


def _newton_step(Q, beta, g, lam, usable, positive):
    """One projected Newton iteration for each problem: β (B, C), g = b − Qβ (B, C), λ (B,) -> the new β
    (B, C), or β itself where no step passes the line search."""
    sigma = _orthant(beta, g, lam, usable, positive)
    r = g - lam[:, None] * sigma
    d = _direction(Q, beta, r, sigma, usable)
    return _line_search(Q, beta, r, d, sigma, _steps(Q, beta, r, d, sigma))


def _direction(Q, beta, r, sigma, usable):
    """The projected Newton direction (B, C): r_j / Q_jj on the active set A (non-zero coordinates that r
    pushes towards zero and that this diagonal step takes to zero or beyond), Q_FF⁻¹ r_F on the free set
    F (the other coordinates with σ_j ≠ 0), 0 on the coordinates held at zero."""
    inv_diag = torch.where(usable, 1 / Q.diagonal(dim1=1, dim2=2).where(usable, 1.0), 0.0)
    diagonal_step = r * inv_diag
    near = (beta != 0) & (sigma * r < 0) & (sigma * (beta + diagonal_step) <= 0)
    free = (sigma != 0) & ~near
    return torch.where(near, diagonal_step, _newton_solve(Q, r, free))


def _newton_solve(Q, r, free):
    """d (B, C) with Q_FF d_F = r_F on the free set F (B, C) (bool) and d = 0 off it."""
    m = free.to(Q.dtype)
    masked = Q * (m[:, :, None] * m[:, None, :]) + torch.diag_embed(1 - m)
    factor = _cholesky(masked, m)
    return torch.cholesky_solve((r * m).unsqueeze(-1), factor).squeeze(-1) * m


def _cholesky(M, m):
    """Lower Cholesky factors of the positive semidefinite M (B, C, C). Where a factorisation fails or has
    a pivot below PIVOT_REL of its diagonal entry (M numerically singular), the diagonal entries on the
    mask m (B, C) are scaled by 1 + shift, for the shifts in _SHIFTS in turn until one succeeds."""
    factor, failed = _factor(M)
    for shift in _SHIFTS:
        bad = failed.nonzero().squeeze(1)
        if bad.numel() == 0:
            break
        Mb = M[bad]
        factor[bad], failed[bad] = _factor(
            Mb + torch.diag_embed(shift * m[bad] * Mb.diagonal(dim1=1, dim2=2))
        )
    return factor


def _factor(M):
    """Cholesky factors of M (B, C, C) and whether each failed or is numerically singular (B,)."""
    factor, info = torch.linalg.cholesky_ex(M)
    pivots = factor.diagonal(dim1=1, dim2=2).square()
    singular = (pivots <= PIVOT_REL * M.diagonal(dim1=1, dim2=2)).any(1)
    return factor, (info > 0) | singular


def _steps(Q, beta, r, d, sigma):
    """The line search's candidate steps (B, 1 + _N_STEPS): the minimiser of f along the projection arc,
    then the Armijo backtracking steps 1, ½, ¼, …"""
    geometric = _BACKTRACK ** torch.arange(_N_STEPS, dtype=Q.dtype, device=Q.device)
    exact = _arc_minimiser(Q, beta, r, d, sigma)
    return torch.cat([exact.unsqueeze(1), geometric.expand(len(exact), -1)], 1)


def _arc_minimiser(Q, beta, r, d, sigma):
    """argmin over t > 0 of f(β(t)) − f(β) = −rᵀs + ½sᵀQs, s(t) = P_σ(β + t·d) − β -> t (B,) (1 where
    it is not finite).

    s_j(t) = t·d_j up to coordinate j's kink τ_j (where it reaches zero), −β_j after it, and 0 for a zero
    coordinate that d pushes out of the orthant. With the coordinates sorted by kink, on the piece after
    the first k kinks s = u + t·v, u = −β on the kinked ones, v = d on the others, and the change is a
    quadratic in t whose coefficients are prefix and suffix sums of β_iQ_ijβ_j, β_iQ_ijd_j and d_iQ_ijd_j
    (2-D cumulative sums, O(C²) per problem); each piece's minimiser is clipped to the piece."""
    batch, width = beta.shape
    d = torch.where((beta == 0) & (sigma * d <= 0), 0.0, d)
    kink = torch.where((beta != 0) & (sigma * d < 0), -beta / d, math.inf)
    kink, order = kink.sort(1)
    dv, bv, rv = (x.gather(1, order) for x in (d, beta, r))
    G = Q.gather(1, order.unsqueeze(2).expand(-1, -1, width)).gather(
        2, order.unsqueeze(1).expand(-1, width, -1)
    )
    zero = beta.new_zeros(batch, 1)
    # piece k = 0..C: coordinates 0..k-1 (sorted) have kinked; it spans [start_k, end_k]
    start = torch.cat([zero, kink], 1)
    end = torch.cat([kink, torch.full_like(zero, math.inf)], 1)
    lin_u = torch.cat([zero, (-rv * bv).cumsum(1)], 1)
    lin_v = torch.cat([(rv * dv).flip(1).cumsum(1).flip(1), zero], 1)
    quad_u = torch.cat([zero, _prefix_diag(bv.unsqueeze(2) * G * bv.unsqueeze(1))], 1)
    quad_v = torch.cat([_prefix_diag((dv.unsqueeze(2) * G * dv.unsqueeze(1)).flip(1, 2)).flip(1), zero], 1)
    cross = (bv.unsqueeze(2) * G * dv.unsqueeze(1)).cumsum(1).flip(2).cumsum(2).flip(2)
    cross_uv = torch.cat([zero, -cross.diagonal(offset=1, dim1=1, dim2=2), zero], 1)
    # change on piece k: ½quad_u + cross_uv·t + ½quad_v·t² − lin_u − lin_v·t
    slope = lin_v - cross_uv
    inner = torch.where(quad_v > 0, slope / quad_v, math.inf)
    t = torch.minimum(torch.maximum(inner, start), end)
    t = torch.where(torch.isfinite(t), t, start)
    change = 0.5 * quad_u + cross_uv * t + 0.5 * quad_v * t * t - lin_u - lin_v * t
    change = torch.where(torch.isfinite(start), change, math.inf)
    best = t.gather(1, change.argmin(1, keepdim=True)).squeeze(1)
    return torch.where(torch.isfinite(best) & (best > 0), best, 1.0)


def _prefix_diag(M):
    """Σ_{i,j≤k} M_ij for k = 0..C-1: M (B, C, C) -> (B, C)."""
    return M.cumsum(1).cumsum(2).diagonal(dim1=1, dim2=2)


def _line_search(Q, beta, r, d, sigma, steps):
    """β(t) = P_σ(β + t·d) at the steps (B, K): the one with the lowest objective among those passing the
    Armijo test, or β where none does -> (B, C). The objective change is computed exactly, as
    f(β(t)) − f(β) = −rᵀs + ½sᵀQs with s = β(t) − β (f = f_σ on the closed orthant)."""
    trial = _project(beta.unsqueeze(1) + steps.unsqueeze(-1) * d.unsqueeze(1), sigma.unsqueeze(1))
    s = trial - beta.unsqueeze(1)
    decrease = (s * r.unsqueeze(1)).sum(-1)
    change = 0.5 * (s * torch.bmm(s, Q)).sum(-1) - decrease
    ok = (decrease > 0) & (change <= -_ARMIJO * decrease)
    best = torch.where(ok, change, math.inf).argmin(1)
    picked = trial[torch.arange(len(best), device=best.device), best]
    return torch.where(ok.any(1, keepdim=True), picked, beta)
