"""Scoring: what each prunable group's channels are worth, before any decision about how many to keep.

"apib" calibrates once and builds each group's HSIC Lasso problem (the Gram-form statistics of its
consumer's input X against the consumer's output, or the labels, Y); its channel scores are the
relevances b_k = <K̄_k, L̄> (each channel's unnormalised HSIC with Y). The baselines of `apib.criteria`
score from the weights (L1, FPGM), the feature maps (HRank, CHIP) or nothing (random).
"""

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from apib.calibration import calibrate
from apib.criteria import CRITERIA
from apib.options import PruneOptions
from apib_kernels import HSICLassoProblem
from apib_kernels.selection import _sync


@dataclass(frozen=True)
class LayerScores:
    """One group's channel scores (C,), higher = more important, and for "apib" its HSIC Lasso problem."""

    scores: torch.Tensor
    problem: HSICLassoProblem | None = None


def score(model, loader, groups, opts: PruneOptions, device, progress, timings: dict) -> list[LayerScores]:
    """Scores every group's channels with `opts.criterion`; the seconds of each phase go to `timings`."""
    if opts.criterion == "apib":
        problems = _hsic_problems(model, loader, groups, opts, device, progress, timings)
        return [LayerScores(p.hsic, p) for p in problems]
    t0 = time.perf_counter()
    scores = _criterion_scores(model, loader, groups, opts, device, progress)
    _sync(device)
    timings["scoring"] = time.perf_counter() - t0
    return [LayerScores(s) for s in scores]


def _hsic_problems(model, loader, groups, opts, device, progress, timings) -> list[HSICLassoProblem]:
    """One HSIC Lasso problem per group, from its consumer's input X and output (or the labels) Y."""
    t0 = time.perf_counter()
    store = {g.consumer: ([], []) for g in groups}
    sinks = {
        name: (lambda x, out, xs=xs, ys=ys: (xs.append(x), ys.append(out)))
        for name, (xs, ys) in store.items()
    }
    labels = calibrate(model, loader, sinks, opts.calib_size, device, progress)
    if opts.target == "labels" and labels is None:
        raise ValueError("target='labels' needs calib_loader to yield (images, labels) batches")
    _sync(device)
    timings["calibration"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    problems = []
    for g in tqdm(groups, desc="statistics", unit="layer", disable=not progress):
        xs, ys = store.pop(g.consumer)
        x, out = torch.cat(xs), torch.cat(ys)
        del xs[:], ys[:]
        y = labels if opts.target == "labels" else out.flatten(1)
        problems.append(
            HSICLassoProblem.from_data(x, y, positive=opts.positive, kernel=opts.kernel, backend=opts.backend)
        )
        del x, out, y
    _sync(device)
    timings["statistics"] = time.perf_counter() - t0
    return problems


def _criterion_scores(model, loader, groups, opts, device, progress) -> list[torch.Tensor]:
    """(C,) importance scores per group from a baseline criterion (see apib.criteria). Feature-map
    criteria read the consumer's input, batch by batch; in faithful mode the calibration forward pass
    is re-run for every layer, as HRank's and CHIP's published code does."""
    spec = CRITERIA[opts.criterion]
    if spec.needs == "weight":
        return [spec.fn(model.get_submodule(g.producer).weight.detach()) for g in groups]
    if spec.needs == "none":
        return [spec.fn(g.channels, seed=opts.seed + i) for i, g in enumerate(groups)]
    accs = {g.consumer: spec.accumulator(mode=opts.mode) for g in groups}
    if opts.mode == "faithful":
        for g in groups:
            acc = accs[g.consumer]
            sink = {g.consumer: lambda x, _out, acc=acc: acc.update(x)}
            calibrate(
                model, loader, sink, opts.calib_size, device, progress, desc=f"{opts.criterion} {g.producer}"
            )
    else:
        sinks = {name: (lambda x, _out, acc=acc: acc.update(x)) for name, acc in accs.items()}
        calibrate(model, loader, sinks, opts.calib_size, device, progress)
    return [accs[g.consumer].scores() for g in groups]
