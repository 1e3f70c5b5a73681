"""Allocation: how many channels each group keeps, and which, given the scores and a FLOPs target.

"penalty" — APIB's global search (the reference's `auto_prune`): starting at alpha0, one penalty shared
by every layer's HSIC Lasso is doubled (or halved) until the FLOPs of the network it implies cross the
target, then bisected on a log scale until they lie within `tolerance` of it. Every step is one C × C
Lasso per layer, warm-started from the nearest penalty solved before; the FLOPs of a step come from
`apib.groups.FlopsModel`, never from a profiler run. A layer keeps the channels its Lasso selects.
"uniform" — one pruning ratio for every layer, bisected to the target (as L1, FPGM, HRank and CHIP are
applied in their papers); "threshold" — one global threshold on the scores normalised by each layer's
mean score. Both keep each layer's highest-scoring channels. Every layer keeps at least `omega`.
"""

import logging
import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from apib.criteria import keep_indices
from apib.groups import FlopsModel
from apib.options import PruneOptions
from apib.scoring import LayerScores
from apib_kernels import HSICLassoProblem
from apib_kernels.lasso import collect_convergence_warnings
from apib_kernels.selection import LASSO_TOL

logger = logging.getLogger(__name__)

_MAX_DOUBLINGS = 200
_MAX_BISECTIONS = 60
SEARCH_TOL = 1e-5
"""The Lasso tolerance while the search brackets the penalty (it only counts channels); the penalty
found is then solved at the default LASSO_TOL."""
ALPHA_FLOOR = 1e-4
"""The search stops lowering the penalty at ALPHA_FLOOR · (the smallest layer's alpha_max)."""


@dataclass(frozen=True)
class LayerChoice:
    """The channels one group keeps (indices into its channels, ascending) and, for "penalty", the
    penalty its Lasso was solved at."""

    kept: tuple[int, ...]
    alpha: float | None = None


def allocate(
    layers: list[LayerScores], groups, flops: FlopsModel, goal: float, opts: PruneOptions, progress: bool
) -> tuple[list[LayerChoice], float | None]:
    """Every group's kept channels under `opts.allocation`, and the global penalty ("penalty") or None."""
    if opts.allocation == "penalty":
        return _penalty(layers, flops, goal, opts, progress)
    if opts.allocation == "uniform":
        counts = _uniform_ratio(groups, flops, opts.omega, goal, opts.tolerance)
    else:
        counts = _global_threshold(
            [s.scores for s in layers], groups, flops, opts.omega, goal, opts.tolerance
        )
    return [
        LayerChoice(_sorted(keep_indices(s.scores, k))) for s, k in zip(layers, counts, strict=True)
    ], None


def _sorted(selected: torch.Tensor) -> tuple[int, ...]:
    return tuple(sorted(int(i) for i in selected.tolist()))


def _penalty(layers, flops, goal, opts, progress) -> tuple[list[LayerChoice], float]:
    problems = [s.problem for s in layers]
    search = PenaltySearch(problems, opts.omega, flops)
    alpha0 = opts.alpha0
    if alpha0 is None:
        tops = sorted(p.alpha_max() for p in problems)
        alpha0 = 0.1 * tops[len(tops) // 2] or 1e-6
    # hundreds of solves, some at tiny penalties: one convergence warning at most, not one per solve
    with collect_convergence_warnings():
        alpha = search.run(goal, opts.tolerance, float(alpha0), progress)
        sols, _ = search.solve(alpha, tol=LASSO_TOL)
    return [LayerChoice(_sorted(sel), used) for used, _, sel in sols], alpha


def _uniform_ratio(groups, flops: FlopsModel, omega: int, target: float, tolerance: float) -> list[int]:
    """Channels kept per group under one pruning ratio r shared by all layers (how L1, FPGM, HRank and
    CHIP are applied in their papers), with r bisected until the FLOPs are within tolerance."""

    def kept(r: float) -> list[int]:
        return [max(min(omega, g.channels), math.ceil((1 - r) * g.channels)) for g in groups]

    lo, hi = 0.0, 1.0
    best = kept(hi)
    for _ in range(_MAX_BISECTIONS):
        mid = (lo + hi) / 2
        counts = kept(mid)
        f = flops(counts)
        if abs(f - target) <= tolerance * target:
            return counts
        if f > target:
            lo = mid
        else:
            hi, best = mid, counts
    logger.warning(
        "no uniform ratio puts FLOPs within %.3g of the target; taking the closest below", tolerance
    )
    return best


def _global_threshold(scores, groups, flops: FlopsModel, omega: int, target: float, tolerance: float):
    """Channels kept per group under one threshold on the scores normalised by each layer's mean score
    (layers' scores live on different scales), bisected over the global ranking until the FLOPs are
    within tolerance; every layer keeps at least omega."""
    floors = [min(omega, g.channels) for g in groups]
    normed, owner = [], []
    for i, s in enumerate(scores):
        s = s.detach().double().cpu()
        mean = s.abs().mean()
        normed.append(s / mean if mean > 0 else s)
        owner.append(torch.full((s.numel(),), i))
    # stable: equal normalised scores keep the layer order, and within a layer the index order
    order = torch.cat(owner)[torch.argsort(torch.cat(normed), descending=True, stable=True)]

    def kept(k: int) -> list[int]:
        counts = torch.bincount(order[:k], minlength=len(groups)).tolist()
        return [max(f, c) for f, c in zip(floors, counts, strict=True)]

    lo, hi = 0, order.numel()  # FLOPs grow with k, the number of top-ranked channels kept
    best = kept(lo)
    while lo <= hi:
        mid = (lo + hi) // 2
        counts = kept(mid)
        f = flops(counts)
        if abs(f - target) <= tolerance * target:
            return counts
        if f > target:
            hi = mid - 1
        else:
            lo, best = mid + 1, counts
    logger.warning(
        "no global threshold puts FLOPs within %.3g of the target; taking the closest below", tolerance
    )
    return best


class PenaltySearch:
    """The per-layer problems and the global penalty search over them, with every (layer, penalty)
    solution cached so that no step is solved twice and each solve starts from its nearest neighbour."""

    def __init__(self, problems: list[HSICLassoProblem], omega: int, flops: FlopsModel):
        self.problems = problems
        self.omega = omega
        self.flops = flops
        self.cache: dict[float, list[tuple]] = {}
        tops = [a for a in (p.alpha_max() for p in problems) if a > 0]
        # Below this every layer is solved essentially unpenalised (a non-negative least squares, whose
        # support is bounded by the rank of the design, about n²/2): halving further adds next to nothing.
        self.alpha_floor = ALPHA_FLOOR * min(tops, default=1.0)

    def _warm(self, alpha: float, li: int):
        if not self.cache:
            return None
        nearest = min(self.cache, key=lambda a: abs(math.log(a / alpha)) if a > 0 else math.inf)
        return self.cache[nearest][li][1]

    def solve(self, alpha: float, tol: float = SEARCH_TOL) -> tuple[list[tuple], float]:
        if alpha not in self.cache or tol < SEARCH_TOL:
            self.cache[alpha] = [
                p.select(alpha, min(self.omega, p.num_channels), self._warm(alpha, i), tol=tol)
                for i, p in enumerate(self.problems)
            ]
        sols = self.cache[alpha]
        return sols, self.flops([len(s[2]) for s in sols])

    def run(self, target: float, tolerance: float, alpha0: float, progress: bool) -> float:
        lo_ok, hi_ok = target * (1 - tolerance), target * (1 + tolerance)
        bar = tqdm(desc="search", unit="step", disable=not progress)

        def step(a):
            _, f = self.solve(a)
            bar.update(1)
            bar.set_postfix(alpha=f"{a:.3g}", flops=f"{f / target:.3f}x target")
            return f

        a = alpha0
        f = step(a)
        if lo_ok <= f <= hi_ok:
            bar.close()
            return a
        # Bracket: `small` keeps too many channels (FLOPs above target), `big` too few.
        small = big = None
        for _ in range(_MAX_DOUBLINGS):
            if f > hi_ok:
                small, a = a, a * 2
            else:
                big, a = a, a / 2
            if small is not None and big is not None:
                break
            if small is None and a < self.alpha_floor:
                bar.close()
                sols, _ = self.solve(big)
                kept = sum(len(sel) for _, _, sel in sols)
                total = sum(p.num_channels for p in self.problems)
                raise ValueError(
                    f"the FLOPs target {target:.4g} is not reachable from below: even the least-penalised "
                    f"HSIC Lasso keeps only {kept} of {total} channels ({f:.4g} FLOPs, "
                    f"{100 * (1 - f / target):.1f}% under the target). The Lasso keeps at most about n²/2 "
                    "channels per layer for n calibration images, fewer with positive=True: calibrate with "
                    "more images (calib_size), use positive=False, or ask for a larger reduction"
                )
            f = step(a)
            if lo_ok <= f <= hi_ok:
                bar.close()
                return a
        else:
            bar.close()
            raise RuntimeError(
                f"the penalty search found no bracket for the FLOPs target in {_MAX_DOUBLINGS} steps"
            )
        for _ in range(_MAX_BISECTIONS):
            a = math.sqrt(small * big)
            if not small < a < big:
                break
            f = step(a)
            if lo_ok <= f <= hi_ok:
                bar.close()
                return a
            small, big = (a, big) if f > hi_ok else (small, a)
        bar.close()
        logger.warning(
            "no penalty puts FLOPs within %.3g of the target: the channel counts jump across it; "
            "taking the closest penalty below the target's upper bound",
            tolerance,
        )
        return big
