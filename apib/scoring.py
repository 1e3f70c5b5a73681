"""Scoring: what each prunable group's channels are worth, before any decision about how many to keep.

"apib" calibrates once and builds each group's HSIC Lasso problem: the Gram-form statistics of its
consumer's input X (the group's channels) against that consumer's output, or the labels, Y. Its channel
scores are the relevances b_k = <K̄_k, L̄> (each channel's unnormalised HSIC with Y); the allocation
ranks APIB's channels from the problem itself (`apib.allocation`). The input kernel's bandwidth is the
paper's fixed γ, or with bandwidth "median" each unit's own: every consumer's input is multiplied,
unit by unit, by the factors `apib_kernels.kernels.median_scales` finds in the first calibration
block, and those factors stay fixed for every later block, so the streamed statistics remain one
block estimator with one kernel per unit (under torch.distributed the processes' first blocks differ:
"median" is refused there). With normalize, every block's centered Grams are Frobenius-normalised.
The baselines of `apib.criteria` score from the weights (L1, FPGM), the feature maps (HRank, CHIP) or
nothing (random).

Groups beyond the paper's (see `apib.groups`) score what the allocation chooses among, the group's
units, from all the layers that write or read them:
- a unit carried by several channels of a layer (channels tied by a grouped convolution, a channel
  duplicated by a concatenation as in GhostNet) is one feature for the HSIC Lasso: the kernel sees its
  channels' maps side by side (a unit with fewer channels than another is padded with zeros, which
  leaves its kernel distances as they are); baseline scores are averaged over its channels;
- a group read by several consumers (a squeeze-excitation gate and the projection after it, a fire
  module's two expand convolutions, the branches of an inception module, the layers along a residual
  stream) takes the mean of the consumers' statistics Q and b. That is the HSIC Lasso of all the
  consumers' designs stacked, one coefficient per unit shared by every consumer: a unit is kept if it
  helps explain the consumers' outputs together, and each consumer weighs the same whatever its size.
  Baseline scores are averaged over the consumers (feature maps) or producers (weights), each scaled
  by its mean first, as the layers' scales differ.
"""

import time
from dataclasses import dataclass

import torch
from torch import nn

from apib.calibration import calibrate
from apib.criteria import CRITERIA
from apib.criteria._common import sum_accumulators_over_processes
from apib.groups import Member, PrunableGroup
from apib.options import PruneOptions
from apib.streaming import StreamingStatistics, distributed
from apib_kernels import GramStatistics, HSICLassoProblem, Samples
from apib_kernels.backends import synchronize as _sync
from apib_kernels.kernels import median_scales


@dataclass(frozen=True)
class LayerScores:
    """One group's unit scores (its `channels`,), higher = more important, and for "apib" its HSIC
    Lasso problem."""

    scores: torch.Tensor
    problem: HSICLassoProblem | None = None


def score(model, loader, groups, opts: PruneOptions, device, progress, timings: dict) -> list[LayerScores]:
    """Scores every group's units with `opts.criterion`; the seconds of each phase go to `timings`."""
    if opts.criterion == "apib":
        problems = _hsic_problems(model, loader, groups, opts, device, progress, timings)
        return [LayerScores(p.hsic, p) for p in problems]
    t0 = time.perf_counter()
    scores = _criterion_scores(model, loader, groups, opts, device, progress)
    _sync(device)
    timings["scoring"] = time.perf_counter() - t0
    return [LayerScores(s) for s in scores]


def _channels_first(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A consumer's input with its channels in dim 1: a linear layer reads them in the last dim (as in
    ConvNeXt's (n, H, W, C) blocks)."""
    return x.movedim(-1, 1) if isinstance(module, nn.Linear) else x


def _is_identity(member: Member, units: int) -> bool:
    return member.units == tuple(range(units))


def unit_features(x: torch.Tensor, member: Member, units: int) -> torch.Tensor:
    """x: (n, C, *spatial) a consumer's input. Returns the group's units as channels: x itself when the
    consumer reads exactly the group's units in order (the paper's groups), else (n, units, m·D), each
    unit's m channels (D = prod(spatial)) side by side, zero-padded."""
    if _is_identity(member, units):
        return x
    slots = member.slots(units).to(x.device)
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    padded = torch.cat([flat, flat.new_zeros(n, 1, flat.shape[2])], 1)
    index = torch.where(slots < 0, c, slots).flatten()
    return padded[:, index].reshape(n, units, -1)


def unit_scores(scores: torch.Tensor, member: Member, units: int) -> torch.Tensor:
    """(C,) scores of a layer's channels -> (units,): the mean over each unit's channels, NaN for units
    the layer does not carry."""
    if _is_identity(member, units):
        return scores
    owner = torch.tensor(member.units, device=scores.device)
    mask = owner >= 0
    total = scores.new_zeros(units).index_add_(0, owner[mask], scores[mask])
    count = torch.bincount(owner[mask], minlength=units).to(total)
    return torch.where(count > 0, total / count.clamp_min(1), torch.nan)


def _mean_of_scaled(scores: list[torch.Tensor]) -> torch.Tensor:
    """One layer's scores as they are; several layers' scores, each divided by its mean |score|, averaged
    (over the layers that carry each unit; a unit none carries scores 0)."""
    if len(scores) == 1 and not scores[0].isnan().any():
        return scores[0]
    scaled = [s / m if (m := s.abs().nanmean()) > 0 else s for s in scores]
    return torch.stack(scaled).nanmean(0).nan_to_num(0.0)


def group_statistics(pairs, opts: PruneOptions) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The HSIC Lasso statistics (Q, b, n_rows) of one group from its consumers' (X (n, units, ...), Y)
    pairs: the mean of the consumers' Q and b (one consumer's own; the stacked designs, see the module's
    docstring), each with its units constant over these images zeroed (`GramStatistics.lasso_statistics`)."""
    kw = dict(kernel=opts.kernel, backend=opts.backend, normalize=opts.normalize)
    q = b = None
    for x, y in pairs:
        qi, bi, n_rows = GramStatistics(**kw).add(Samples.check(x, y)).lasso_statistics()
        q, b = (qi, bi) if q is None else (q + qi, b + bi)
    return q / len(pairs), b / len(pairs), n_rows


def _scaled(x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (n, C, ...) with channel k multiplied by scales[k]."""
    return x * scales.to(x).view(1, -1, *[1] * (x.dim() - 2))


def _hsic_problems(model, loader, groups, opts, device, progress, timings) -> list[HSICLassoProblem]:
    """One HSIC Lasso problem per group, from its consumers' inputs X and outputs (or the labels) Y,
    streamed in blocks of `opts.block_size` images (`apib.streaming`): each consumer is recorded once,
    however many groups it reads; each full block is reduced to every group's statistics and dropped;
    under torch.distributed the sums of every process are added. With bandwidth "median" each
    (group, consumer)'s unit scales come from the first block and are kept (see the module docstring)."""
    if opts.bandwidth == "median" and distributed():
        raise ValueError(
            "bandwidth 'median' takes each unit's bandwidth from the first calibration block, which differs "
            "between the processes of torch.distributed: use bandwidth 'paper' there"
        )
    t0 = time.perf_counter()
    names = sorted({name for g in groups for name in g.consumers})
    modules = {name: model.get_submodule(name) for name in names}
    scales = {}

    def features(x, i, j):
        if opts.bandwidth == "paper":
            return x
        if (i, j) not in scales:
            scales[i, j] = median_scales(x, opts.kernel)
        return _scaled(x, scales[i, j])

    def reduce(block, labels):
        inputs = {name: _channels_first(modules[name], x) for name, (x, _) in block.items()}
        stats = []
        for i, g in enumerate(groups):
            pairs = [
                (
                    features(unit_features(inputs[m.name], m, g.channels), i, j),
                    labels if labels is not None else block[m.name][1].flatten(1),
                )
                for j, m in enumerate(g.readers)
            ]
            stats.append(group_statistics(pairs, opts))
        return stats

    stream = StreamingStatistics(names, opts.block_size, reduce, labels=opts.target == "labels")
    sinks = {name: stream.sink(name) for name in names}
    calibrate(model, loader, sinks, opts.calib_size, device, progress, after_batch=stream.end_batch)
    sums = stream.statistics()
    problems = [HSICLassoProblem(q, b, n_rows, positive=opts.positive) for q, b, n_rows in sums]
    _sync(device)
    timings["calibration"] = time.perf_counter() - t0 - stream.seconds
    timings["statistics"] = stream.seconds
    return problems


def _criterion_scores(
    model, loader, groups: list[PrunableGroup], opts, device, progress
) -> list[torch.Tensor]:
    """(units,) importance scores per group from a baseline criterion (see apib.criteria). Weight
    criteria read the producers' filters; feature-map criteria read each consumer's input, batch by
    batch, once however many groups it reads. In faithful mode the calibration forward pass is re-run
    for every group, as HRank's and CHIP's published code does for every layer. Under torch.distributed
    the feature-map sums and image counts of every process are added before the means are taken."""
    spec = CRITERIA[opts.criterion]
    if spec.needs == "weight":
        return [
            _mean_of_scaled(
                [
                    unit_scores(spec.fn(model.get_submodule(w.name).weight.detach()), w, g.channels)
                    for w in g.writers
                ]
            )
            for g in groups
        ]
    if spec.needs == "none":
        return [spec.fn(g.channels, seed=opts.seed + i) for i, g in enumerate(groups)]
    accs = {name: spec.accumulator(mode=opts.mode) for g in groups for name in g.consumers}

    def sink(name):
        module, acc = model.get_submodule(name), accs[name]
        return lambda x, _out: acc.update(_feature_maps(_channels_first(module, x)))

    if opts.mode == "faithful":
        done = set()
        for g in groups:
            todo = {name: sink(name) for name in g.consumers if name not in done}
            if todo:
                desc = f"{opts.criterion} {g.producer}"
                calibrate(model, loader, todo, opts.calib_size, device, progress, desc=desc)
                done.update(todo)
    else:
        calibrate(model, loader, {name: sink(name) for name in accs}, opts.calib_size, device, progress)
    if distributed():
        sum_accumulators_over_processes(list(accs.values()))
    scores = {name: acc.scores() for name, acc in accs.items()}
    return [_mean_of_scaled([unit_scores(scores[m.name], m, g.channels) for m in g.readers]) for g in groups]


def _feature_maps(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) maps for the feature-map criteria: a linear layer's (N, C, L) input as L×1 maps, its
    (N, C) input (flattened or pooled features) as 1×1 maps."""
    return x.reshape(*x.shape[:2], -1, 1) if x.dim() != 4 else x
