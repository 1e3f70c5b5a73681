"""APIB pruning: calibrate, compute each layer's HSIC Lasso statistics once, search one global penalty
until the network meets a FLOPs target, and cut a genuinely smaller network.

    result = apib.prune(model, calib_loader, flops_reduction=0.5)
    result.model          # the pruned nn.Module (the input model is left untouched)
    print(result.table())

`prune` is four steps, each its own module: find the prunable channel groups (`apib.groups`), score
their channels (`apib.scoring`: APIB's HSIC statistics or a baseline criterion), allot channels to
layers under the FLOPs target (`apib.allocation`: APIB's global penalty search, one uniform ratio, or
one global threshold), and cut them out (torch-pruning surgery). Any scorer works with the uniform and
threshold allocations; the penalty search needs APIB's Lasso problems.
"""

import copy
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from apib.allocation import allocate
from apib.calibration import trace_input
from apib.groups import FlopsModel, count_flops, count_params, dependency_graph, find_groups, prune_group
from apib.options import PruneOptions
from apib.scoring import score
from apib.streaming import DEFAULT_BLOCK_SIZE, check_same_decisions, is_main_process
from apib_kernels.validation import check_number


@dataclass(frozen=True)
class LayerDecision:
    """The channels kept in one prunable group: indices into its producer's original output channels,
    ascending; the layers that read them (`consumer`: the first); the penalty its Lasso was solved at
    (APIB), and the rule that chose them (see `apib.allocation`)."""

    producer: str
    consumers: tuple[str, ...]
    channels: int
    kept: tuple[int, ...]
    alpha: float | None
    rule: str = "lasso"

    @property
    def consumer(self) -> str:
        return self.consumers[0]

    @property
    def n_kept(self) -> int:
        return len(self.kept)


@dataclass
class PruneResult:
    """What `prune` found. FLOPs as torch.utils.flop_counter counts them (2 per multiply-add) for one
    input of `input_shape`; timings in seconds per phase; `alpha` the penalty found (with penalty_scale
    "layer", the fraction of each layer's alpha_max; each layer's own is in `layers`); `options` every
    option in force, after the preset (`apib.options.PruneOptions`, as a dict)."""

    model: nn.Module
    criterion: str
    allocation: str
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    flops_target: float
    alpha: float | None
    layers: list[LayerDecision]
    input_shape: tuple[int, ...]
    timings: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    @property
    def flops_reduction(self) -> float:
        return 1 - self.flops_after / self.flops_before

    def to_dict(self) -> dict:
        return {
            "criterion": self.criterion,
            "allocation": self.allocation,
            "input_shape": list(self.input_shape),
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
            "flops_target": self.flops_target,
            "flops_reduction": self.flops_reduction,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "alpha": self.alpha,
            "layers": [
                {
                    "name": d.producer,
                    "consumer": d.consumer,
                    "consumers": list(d.consumers),
                    "channels": d.channels,
                    "kept": d.n_kept,
                    "alpha": d.alpha,
                    "rule": d.rule,
                }
                for d in self.layers
            ],
            "time_s": dict(self.timings),
            "options": dict(self.options),
        }

    def table(self) -> str:
        """A plain-text report: widths per layer, FLOPs, params, time per phase."""
        w = max([len(d.producer) for d in self.layers] + [5])
        per_layer = " x each layer's alpha_max" if self.options.get("penalty_scale") == "layer" else ""
        lines = [f"{'layer':<{w}}  channels  kept"]
        lines += [f"{d.producer:<{w}}  {d.channels:>8}  {d.n_kept:>4}" for d in self.layers]
        lines.append(
            f"FLOPs {self.flops_before / 1e6:.2f}M -> {self.flops_after / 1e6:.2f}M "
            f"(-{100 * self.flops_reduction:.1f}%, target {self.flops_target / 1e6:.2f}M); "
            f"params {self.params_before / 1e6:.3f}M -> {self.params_after / 1e6:.3f}M"
            + (
                f"; alpha {self.alpha:.4g}{per_layer}"
                if self.alpha is not None
                else f"; criterion {self.criterion}, {self.allocation} allocation"
            )
        )
        lines.append("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()))
        return "\n".join(lines)


def _check_target(flops_reduction, flops_target, flops_before: int) -> float:
    if (flops_reduction is None) == (flops_target is None):
        raise ValueError("give exactly one of flops_reduction (the fraction removed) or flops_target (FLOPs)")
    if flops_reduction is not None:
        return (1 - check_number(flops_reduction, "flops_reduction", positive=True, below=1)) * flops_before
    return check_number(flops_target, "flops_target", positive=True, below=flops_before)


def prune(
    model: nn.Module,
    calib_loader,
    *,
    flops_reduction: float | None = None,
    flops_target: float | None = None,
    criterion: str = "apib",
    allocation: str | None = None,
    alpha0: float | None = None,
    omega: int = 1,
    tolerance: float = 0.01,
    calib_size: int | None = 128,
    kernel: str | None = None,
    positive: bool | None = None,
    target: str | None = None,
    penalty_scale: str | None = None,
    bandwidth: str | None = None,
    normalize: bool | None = None,
    preset: str | None = None,
    mode: str = "fast",
    seed: int = 0,
    prune_residual: bool = False,
    block_size: int = DEFAULT_BLOCK_SIZE,
    example_input: torch.Tensor | None = None,
    device=None,
    backend: str | None = None,
    progress: bool = True,
) -> PruneResult:
    """Prunes `model` to a FLOPs budget, with APIB or a baseline criterion. The input model is not modified.

    calib_loader: yields image batches (or (images, labels) tuples); the first `calib_size` images are
        the calibration set (the reference uses 128 on CIFAR, 64 on ImageNet; None: all of them).
    flops_reduction: fraction of FLOPs to remove, in (0, 1); or flops_target: FLOPs to end at. FLOPs
        are counted for one input shaped like `example_input` (default: one calibration image).
    criterion: how channels are scored: 'apib' — the HSIC Lasso statistics of each layer — or a
        baseline from `apib.criteria` ('l1', 'fpgm', 'hrank', 'chip', 'random'). Every criterion uses
        the same layers and the same surgery.
    allocation: how many channels each layer keeps (`apib.allocation`): 'penalty' — APIB's one global
        Lasso penalty, each layer keeping what its Lasso selects (criterion 'apib' only) —, 'uniform' —
        one pruning ratio for every layer, as the baselines' papers do —, or 'threshold' — one global
        threshold on scores normalised per layer. Default: the preset's for 'apib' ('uniform' under the
        default preset, 'penalty' under 'paper'), 'uniform' otherwise.
        With 'apib' and a ratio or threshold, a layer's channels rank in the Lasso's own order: by
        the penalty at which they enter its exact regularization path, then by HSIC with Y (b_k).
    alpha0: the first penalty of the APIB search (scikit-learn Lasso's scale, as the reference's
        --alpha; with penalty_scale 'layer', a fraction of each layer's alpha_max); default: a tenth of
        the median over layers of the penalty that zeroes the whole layer (0.1 with 'layer').
    omega: the fewest channels any layer keeps (the reference's per-layer rule).
    tolerance: relative FLOPs tolerance around the target.
    The next options are APIB's method (no effect on a baseline criterion); left None, each takes
    the value of `preset` (see `apib.options.PRESETS`; `DEFAULT_PRESET`, "uniform-signed", by default):
    kernel: the Gram kernel for inputs and outputs ('laplace', the reference's, or 'gaussian', ...).
    positive: True, the paper's non-negative Lasso; False, the signed one (the reference code's, and
        the default preset's ranking).
    target: the output representation Y of each layer: 'output' (its output maps, flattened) or
        'labels' (the calibration images' class labels, delta kernel).
    penalty_scale: 'global' — every layer's Lasso at the one searched penalty (the paper) — or
        'layer' — layer l at a searched fraction of its own alpha_max_l (`apib.allocation`).
    bandwidth: the input kernel's bandwidth: 'paper' — the reference's fixed γ of the features per
        sample — or 'median' — each unit's own, the median distance between its samples in the first
        calibration block (`apib_kernels.kernels.median_scales`; kernels 'laplace' and 'gaussian').
    normalize: Frobenius-normalise every centered Gram (pyHSICLasso's K̄/‖K̄‖_F), block by block.
    preset: a name in `apib.options.PRESETS` whose values the options above left None take; explicit
        options win. Every setting in force is in the result's `options`.
    mode: for 'hrank' and 'chip', 'fast' (batched) or 'faithful' (the published loops; same scores).
    seed: for 'random'.
    prune_residual: also prune residual streams — channels summed by residual adds, and those read by
        both branches of a residual block — scored over all their consumers (beyond the paper, whose
        policy leaves them alone; see `apib.groups`). Off by default.
    block_size: APIB's statistics are streamed in blocks of this many calibration images
        (`apib.streaming`): memory stays at one block of activations however many images are used, and
        with at most block_size images (the default 128 holds the paper's 64 and 128) the statistics
        are exactly those of all images at once. Under torch.distributed (a process group initialised,
        e.g. by torchrun) each process calibrates on the images of its own calib_loader — the caller
        shards the set (whole blocks, as many images on every process; calib_size counts one process's
        images) —, the statistics of every process (or HRank's and CHIP's per-channel sums) are summed,
        and every process reaches the same decisions (checked: a ValueError on every process if not);
        only rank 0 shows progress bars.
    device: where calibration and statistics run (default: the model's device).
    Raises ValueError for bad arguments, and when the target is unreachable even keeping `omega`
    channels per layer (the message gives the smallest reachable FLOPs).
    """
    opts = PruneOptions(
        criterion=criterion,
        allocation=allocation,
        alpha0=alpha0,
        omega=omega,
        tolerance=tolerance,
        calib_size=calib_size,
        kernel=kernel,
        positive=positive,
        target=target,
        penalty_scale=penalty_scale,
        bandwidth=bandwidth,
        normalize=normalize,
        preset=preset,
        mode=mode,
        seed=seed,
        prune_residual=prune_residual,
        block_size=block_size,
        backend=backend,
    )
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    progress = progress and is_main_process()
    timings = {}
    t0 = time.perf_counter()
    model = copy.deepcopy(model).to(device).eval()
    x0 = trace_input(calib_loader, example_input, device)
    dg = dependency_graph(model, x0)
    groups = find_groups(model, dg, prune_residual=opts.prune_residual)
    if not groups:
        hint = ""
        if not opts.prune_residual and find_groups(model, dg, prune_residual=True):
            hint = " outside its residual streams; prune_residual=True prunes those too"
        raise ValueError(f"{type(model).__name__} has no prunable channel group{hint} (see apib.groups)")
    flops_before, per_module = count_flops(model, x0)
    params_before = count_params(model)
    flops_of = FlopsModel(groups, flops_before, per_module)
    goal = _check_target(flops_reduction, flops_target, flops_before)
    floor = flops_of([min(omega, g.channels) for g in groups])
    if floor > goal * (1 + tolerance):
        raise ValueError(
            f"the FLOPs target {goal:.4g} is unreachable: keeping omega = {omega} channel(s) in every "
            f"prunable layer still costs {floor:.4g} FLOPs (of {flops_before:.4g}); the largest "
            f"reachable reduction is {1 - floor / flops_before:.4f}"
        )
    timings["setup"] = time.perf_counter() - t0

    layers = score(model, calib_loader, groups, opts, device, progress, timings)
    t0 = time.perf_counter()
    choices, alpha = allocate(layers, groups, flops_of, goal, opts, progress)
    decisions = [
        LayerDecision(g.producer, g.consumers, g.width, g.kept_channels(c.kept), c.alpha, c.rule)
        for g, c in zip(groups, choices, strict=True)
    ]
    check_same_decisions([d.kept for d in decisions])
    timings["search"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for g, d in zip(groups, decisions, strict=True):
        prune_group(model, dg, g, d.kept)
    try:
        flops_after, _ = count_flops(model, x0)
    except Exception as err:  # the model's own code, run on the pruned layers
        raise ValueError(
            f"the pruned {type(model).__name__} no longer runs ({type(err).__name__}: "
            f"{(str(err).strip().splitlines() or [''])[0]}): its code fixes a channel count that "
            "torch-pruning's graph does not show (see apib.groups)"
        ) from err
    model.apib_pruning = _config(decisions, tuple(x0.shape), opts.prune_residual)
    timings["surgery"] = time.perf_counter() - t0
    return PruneResult(
        model=model,
        criterion=criterion,
        allocation=opts.allocation,
        flops_before=flops_before,
        flops_after=flops_after,
        params_before=params_before,
        params_after=count_params(model),
        flops_target=goal,
        alpha=alpha,
        layers=decisions,
        input_shape=tuple(x0.shape),
        timings=timings,
        options=asdict(opts),
    )


def _config(decisions: list[LayerDecision], input_shape, prune_residual: bool) -> dict:
    """What a pruned model records about its surgery, so that `load_pruned` can repeat it: the kept
    channels per group producer, and whether residual streams were groups (recorded only when they were,
    so that files of the paper's policy keep their format)."""
    config = {
        "input_shape": list(input_shape),
        "kept": {d.producer: list(d.kept) for d in decisions},
    }
    if prune_residual:
        config["prune_residual"] = True
    return config


def apply_pruning(model: nn.Module, config: dict) -> nn.Module:
    """Repeats the surgery recorded in `config` (a pruned model's `apib_pruning`) on an unpruned model
    of the same architecture, in place. Returns the model."""
    x0 = torch.zeros(config["input_shape"], device=next(model.parameters()).device)
    dg = dependency_graph(model.eval(), x0)
    residual = config.get("prune_residual", False)
    if not isinstance(residual, bool):
        raise ValueError(
            f"the pruning configuration's prune_residual must be true or false, got {residual!r}"
        )
    groups = {g.producer: g for g in find_groups(model, dg, prune_residual=residual)}
    for name, kept in config["kept"].items():
        if name not in groups:
            raise ValueError(
                f"the pruning configuration names layer {name!r}, which is not prunable in this model"
            )
        groups[name].check_kept(kept)
    for name, kept in config["kept"].items():
        prune_group(model, dg, groups[name], kept)
    model.apib_pruning = config
    return model
