"""Allocation: how many channels each group keeps, and which, given the scores and a FLOPs target.

"penalty" — APIB's global search (the reference's `auto_prune`): starting at alpha0, one penalty shared
by every layer's HSIC Lasso is doubled (or halved) until the FLOPs of the network it implies cross the
target, then bisected on a log scale until they lie within `tolerance` of it. Every step is one C × C
Lasso per layer, warm-started from the nearest penalty solved before; the FLOPs of a step come from
`apib.groups.FlopsModel`, never from a profiler run. A layer keeps the channels its Lasso selects.
With penalty_scale "layer" the searched value is a fraction: layer l solves at it times its own
alpha_max_l (the smallest penalty at which it keeps nothing), so layers whose statistics differ in
scale are penalised alike.
"uniform" — one pruning ratio for every layer, bisected to the target (as L1, FPGM, HRank and CHIP are
applied in their papers); "threshold" — one global threshold on the scores normalised by each layer's
mean score. Both keep each layer's highest-scoring channels. With criterion "apib" both rank a layer's
channels by the Lasso's own order (`lasso_ranking`: entry on the layer's exact regularization path,
then relevance), and "threshold" is one cut of the ranking `_beyond_the_lasso` continues the search
with. Every layer keeps at least `omega`.
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
from apib_kernels.homotopy import lasso_knots
from apib_kernels.lasso import collect_convergence_warnings
from apib_kernels.selection import LASSO_TOL

logger = logging.getLogger(__name__)

_MAX_DOUBLINGS = 200
_MAX_BISECTIONS = 60
SEARCH_TOL = 1e-5
"""The Lasso tolerance while the search brackets the penalty (it only counts channels); the penalty
found is then solved at the default LASSO_TOL."""
ALPHA_FLOOR = 1e-4
"""The search stops lowering the penalty at ALPHA_FLOOR · (the smallest layer's alpha_max, in the search's
units: divided by the layer's penalty scale)."""


@dataclass(frozen=True)
class LayerChoice:
    """The channels one group keeps (indices into its channels, ascending); for "penalty", the penalty
    its Lasso was solved at; and the rule that chose them: "lasso" (the non-zero coefficients at the
    global penalty, the paper's rule), "path" or "relevance" (beyond it, see `_beyond_the_lasso`), or
    the allocation's name ("uniform", "threshold")."""

    kept: tuple[int, ...]
    alpha: float | None = None
    rule: str = "lasso"


def allocate(
    layers: list[LayerScores], groups, flops: FlopsModel, goal: float, opts: PruneOptions, progress: bool
) -> tuple[list[LayerChoice], float | None]:
    """Every group's kept channels under `opts.allocation`, and the penalty found ("penalty": the global
    penalty, or with penalty_scale "layer" the fraction of each layer's alpha_max) or None."""
    if opts.allocation == "penalty":
        return _penalty(layers, flops, goal, opts, progress)
    if opts.criterion == "apib":
        return _lasso_ranked(layers, groups, flops, goal, opts), None
    if opts.allocation == "uniform":
        counts = _uniform_ratio(groups, flops, opts.omega, goal, opts.tolerance)
    else:
        counts = _global_threshold(
            [s.scores for s in layers], groups, flops, opts.omega, goal, opts.tolerance
        )
    return [
        LayerChoice(_sorted(keep_indices(s.scores, k)), rule=opts.allocation)
        for s, k in zip(layers, counts, strict=True)
    ], None


def _sorted(selected) -> tuple[int, ...]:
    return tuple(sorted(int(i) for i in (selected.tolist() if torch.is_tensor(selected) else selected)))


def penalty_scales(problems: list[HSICLassoProblem], penalty_scale: str) -> list[float]:
    """Each layer's penalty per unit of the searched one: 1 for "global"; for "layer" the layer's
    alpha_max (1 where that is 0: such a layer keeps nothing at any penalty)."""
    if penalty_scale == "global":
        return [1.0] * len(problems)
    return [p.alpha_max() or 1.0 for p in problems]


def _penalty(layers, flops, goal, opts, progress) -> tuple[list[LayerChoice], float]:
    problems = [s.problem for s in layers]
    scales = penalty_scales(problems, opts.penalty_scale)
    search = PenaltySearch(problems, opts.omega, flops, scales)
    alpha0 = opts.alpha0
    if alpha0 is None:
        tops = sorted(p.alpha_max() / s for p, s in zip(problems, scales, strict=True))
        alpha0 = 0.1 * tops[len(tops) // 2] or 1e-6
    # hundreds of solves, some at tiny penalties: one convergence warning at most, not one per solve
    with collect_convergence_warnings():
        alpha, reached = search.run(goal, opts.tolerance, float(alpha0), progress)
        sols, _ = search.solve(alpha, tol=LASSO_TOL)
    choices = [LayerChoice(_sorted(sel), used) for used, _, sel in sols]
    if not reached:
        logger.info("the least-penalised HSIC Lasso keeps too few channels; ranking on beyond it")
        rankings = [lasso_ranking(p, opts.positive, s) for p, s in zip(problems, scales, strict=True)]
        choices = _beyond_the_lasso(rankings, choices, flops, goal, opts)
    return choices, alpha


def _lasso_ranked(layers, groups, flops, goal, opts) -> list[LayerChoice]:
    """APIB's channels under "uniform" or "threshold": each layer's channels in the Lasso's own order
    (`lasso_ranking`). "uniform" keeps each layer's first ones under one ratio; "threshold" keeps each
    layer's first omega and cuts the ranking of `_beyond_the_lasso` over all layers' other channels
    (penalties of path entry divided by the layers' penalty scales, then normalised relevances)."""
    scales = penalty_scales([s.problem for s in layers], opts.penalty_scale)
    if opts.allocation == "uniform":  # each layer's first k only: its path can stop once k have entered
        counts = _uniform_ratio(groups, flops, opts.omega, goal, opts.tolerance)
        return [
            LayerChoice(
                _sorted(lasso_ranking(s.problem, opts.positive, c, first=k).order[:k]), rule="uniform"
            )
            for s, c, k in zip(layers, scales, counts, strict=True)
        ]
    rankings = [lasso_ranking(s.problem, opts.positive, c) for s, c in zip(layers, scales, strict=True)]
    counts = [min(opts.omega, g.channels) for g in groups]
    choices = [
        LayerChoice(_sorted(r.order[:k]), rule=opts.allocation) for r, k in zip(rankings, counts, strict=True)
    ]
    return _beyond_the_lasso(rankings, choices, flops, goal, opts, rule="threshold")


def _normalised(scores: torch.Tensor) -> torch.Tensor:
    """Scores as float64 on the CPU, divided by the layer's mean |score| (layers' scores differ in scale)."""
    s = scores.detach().double().cpu()
    mean = s.abs().mean()
    return s / mean if mean > 0 else s


@dataclass(frozen=True)
class LassoRanking:
    """A layer's channels in the HSIC Lasso's own order, best first: `order` (C,) channel indices;
    `tier` (C,) 0 for channels on the layer's exact regularization path, 1 for the others; `key` (C,)
    float64 what each is ranked by within its tier (see `lasso_ranking`)."""

    order: torch.Tensor
    tier: torch.Tensor
    key: torch.Tensor


def lasso_ranking(
    problem: HSICLassoProblem, positive: bool, scale: float = 1.0, first: int | None = None
) -> LassoRanking:
    """The Lasso's own ranking of a layer's channels, in two tiers:
    1. channels that enter the layer's exact regularization path (`lasso_knots`, down to a zero
       penalty), by the penalty at which they first enter (`path_entry`) divided by `scale` (the
       layer's penalty scale, `penalty_scales`): the order in which a falling penalty selects them;
    2. channels that never enter it, by their HSIC with Y (b_k) normalised by the layer's mean.
    Ties keep the lower index first. With `first`, only the ranking's first `first` channels are
    exact: the path stops once that many are non-zero (see `path_entry`)."""
    entry = path_entry(problem, positive, first) / scale
    relevance = _normalised(problem.hsic)
    on_path = torch.isfinite(entry)
    order = torch.cat(
        [
            on_path.nonzero().flatten()[torch.argsort(entry[on_path], descending=True, stable=True)],
            (~on_path).nonzero().flatten()[torch.argsort(relevance[~on_path], descending=True, stable=True)],
        ]
    )
    return LassoRanking(order, (~on_path[order]).long(), torch.where(on_path, entry, relevance)[order])


def _beyond_the_lasso(
    rankings: list[LassoRanking], floor: list[LayerChoice], flops, goal, opts, rule: str | None = None
) -> list[LayerChoice]:
    """Channels for a target the paper's rule cannot reach: even the least-penalised Lasso keeps too few
    (the non-negative Lasso's solutions stay sparse whatever the penalty). Every layer keeps its
    least-penalised selection `floor` (under "threshold", its first omega channels); its other
    channels join one global ranking, in the two tiers of
    `lasso_ranking` (`rankings`, one per layer):
    1. "path": channels that enter the layer's exact regularization path without being in `floor`, by
       the penalty at which they first enter — on the scale the search compares layers on (divided by
       the layer's penalty scale), so this continues the paper's rule down the exact path;
    2. "relevance": channels that never enter it, by their HSIC with Y (b_k) normalised per layer,
       as the "threshold" allocation ranks scores.
    The number of ranked channels taken is bisected to the FLOPs target; each layer reports the last
    tier it drew from, or `rule` when given."""
    tiers, keys, owner, candidates = [], [], [], []
    for i, (r, choice) in enumerate(zip(rankings, floor, strict=True)):
        rest = ~torch.isin(r.order, torch.tensor(choice.kept, dtype=r.order.dtype))
        local, tier = r.order[rest], r.tier[rest]
        candidates.append((local.tolist(), int((tier == 0).sum())))
        tiers.append(tier)
        keys.append(r.key[rest])
        owner.append(torch.full((local.numel(),), i))
    tier, key, owner = torch.cat(tiers), torch.cat(keys), torch.cat(owner)
    by_key = torch.argsort(key, descending=True, stable=True)
    order = owner[by_key][torch.argsort(tier[by_key], stable=True)]
    base = [len(c.kept) for c in floor]
    counts = _rank_counts(order, base, flops, goal, opts.tolerance, "the ranking beyond the Lasso")
    out = []
    for choice, (cand, n_path), k, b in zip(floor, candidates, counts, base, strict=True):
        added = k - b
        chosen = rule or ("lasso" if added == 0 else "path" if added <= n_path else "relevance")
        out.append(LayerChoice(_sorted([*choice.kept, *cand[:added]]), choice.alpha, chosen))
    return out


def path_entry(problem: HSICLassoProblem, positive: bool, first: int | None = None) -> torch.Tensor:
    """(C,) float64: for each channel the largest penalty at which it is non-zero on the layer's exact
    regularization path (down to a zero penalty), -inf for channels that never enter it. With `first`,
    the path stops at the first segment with that many non-zeros: the channels entered by then, at
    least `first`, are exactly those that enter before the others, and the others read -inf."""
    q, b, n_rows = problem.statistics()
    alphas, coefs, _ = lasso_knots(q, b, n_rows, positive=positive, n_nonzero=first)
    nonzero = (coefs != 0).cpu()
    entered = nonzero.any(0)
    # coefs[k] is the solution at knot k: a channel first non-zero at knot k joined at knot k - 1
    first = nonzero.double().argmax(0).clamp_min(1)
    entry = alphas.double().cpu()[first - 1]
    return torch.where(entered, entry, torch.full_like(entry, -math.inf))


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
    (layers' scores live on different scales): each layer keeps its omega best channels, and the others
    join one global ranking whose cut is bisected until the FLOPs are within tolerance."""
    floors = [min(omega, g.channels) for g in groups]
    normed, owner = [], []
    for i, (s, f) in enumerate(zip(scores, floors, strict=True)):
        rest = torch.sort(_normalised(s), descending=True, stable=True).values[f:]
        normed.append(rest)
        owner.append(torch.full((rest.numel(),), i))
    # stable: equal normalised scores keep the layer order
    order = torch.cat(owner)[torch.argsort(torch.cat(normed), descending=True, stable=True)]
    return _rank_counts(order, floors, flops, target, tolerance, "global threshold")


def _rank_counts(order: torch.Tensor, base: list[int], flops, target: float, tolerance: float, what: str):
    """Channels per layer: base[l] plus layer l's channels among the first k of one global ranking
    (`order` holds the layer of each ranked channel, best first), with k bisected until the FLOPs are
    within tolerance of the target; else the closest below it, with a warning."""

    def kept(k: int) -> list[int]:
        extra = torch.bincount(order[:k], minlength=len(base)).tolist()
        return [b + e for b, e in zip(base, extra, strict=True)]

    lo, hi = 0, order.numel()  # FLOPs grow with k
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
        "no cut of the %s puts FLOPs within %.3g of the target; taking the closest below", what, tolerance
    )
    return best


class PenaltySearch:
    """The per-layer problems and the global penalty search over them, with every (layer, penalty)
    solution cached so that no step is solved twice and each solve starts from its nearest neighbour.
    Layer l solves at the searched penalty times scales[l] (`penalty_scales`)."""

    def __init__(self, problems: list[HSICLassoProblem], omega: int, flops: FlopsModel, scales: list[float]):
        self.problems = problems
        self.omega = omega
        self.flops = flops
        self.scales = scales
        self.cache: dict[float, list[tuple]] = {}
        tops = [a / s for a, s in zip((p.alpha_max() for p in problems), self.scales, strict=True) if a > 0]
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
                p.select(alpha * s, min(self.omega, p.num_channels), self._warm(alpha, i), tol=tol)
                for i, (p, s) in enumerate(zip(self.problems, self.scales, strict=True))
            ]
        sols = self.cache[alpha]
        return sols, self.flops([len(s[2]) for s in sols])

    def run(self, target: float, tolerance: float, alpha0: float, progress: bool) -> tuple[float, bool]:
        """(the penalty found, True), or (the least penalty tried, False) when even near-zero penalties
        keep too few channels for the target."""
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
            return a, True
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
                bar.close()  # even the least-penalised Lasso keeps too few channels
                return big, False
            f = step(a)
            if lo_ok <= f <= hi_ok:
                bar.close()
                return a, True
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
                return a, True
            small, big = (a, big) if f > hi_ok else (small, a)
        bar.close()
        logger.warning(
            "no penalty puts FLOPs within %.3g of the target: the channel counts jump across it; "
            "taking the closest penalty below the target's upper bound",
            tolerance,
        )
        return big, True
