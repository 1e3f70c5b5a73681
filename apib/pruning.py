"""APIB pruning: calibrate, compute each layer's HSIC Lasso statistics once, search one global penalty
until the network meets a FLOPs target, and cut a genuinely smaller network.

    result = apib.prune(model, calib_loader, flops_reduction=0.5)
    result.model          # the pruned nn.Module (the input model is left untouched)
    print(result.table())

The search (the reference's `auto_prune`, DESIGN §1): starting at alpha0, the penalty is doubled (or
halved) until the FLOPs of the network the penalty implies cross the target, then bisected on a log
scale until they lie within `tolerance` of it. Every step is one C × C Lasso per layer, warm-started
from the nearest penalty solved before; the FLOPs of a step come from a model of the network that is
exact for convolutions and linear layers (`apib.groups.FlopsModel`), never from a profiler run.
"""

import copy
import logging
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from apib.criteria import CRITERIA, keep_indices
from apib.criteria._common import check_mode
from apib.groups import FlopsModel, count_flops, count_params, dependency_graph, find_groups, prune_group
from apib_kernels import KERNELS, HSICLassoProblem
from apib_kernels._validation import check_int, check_number
from apib_kernels.lasso import collect_convergence_warnings
from apib_kernels.selection import LASSO_TOL, _sync

logger = logging.getLogger(__name__)

TARGETS = ("output", "labels")
_MAX_DOUBLINGS = 200
_MAX_BISECTIONS = 60
SEARCH_TOL = 1e-5
"""The Lasso tolerance while the search brackets the penalty (it only counts channels); the penalty
found is then solved at the default LASSO_TOL."""
ALPHA_FLOOR = 1e-4
"""The search stops lowering the penalty at ALPHA_FLOOR · (the smallest layer's alpha_max)."""


@dataclass(frozen=True)
class LayerDecision:
    """The channels kept in one prunable group: indices into its original channels, ascending."""

    producer: str
    consumer: str
    channels: int
    kept: tuple[int, ...]
    alpha: float | None

    @property
    def n_kept(self) -> int:
        return len(self.kept)


@dataclass
class PruneResult:
    """What `prune` found. FLOPs as torch.utils.flop_counter counts them (2 per multiply-add) for one
    input of `input_shape`; timings in seconds per phase."""

    model: nn.Module
    criterion: str
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    flops_target: float
    alpha: float | None
    layers: list[LayerDecision]
    input_shape: tuple[int, ...]
    timings: dict = field(default_factory=dict)

    @property
    def flops_reduction(self) -> float:
        return 1 - self.flops_after / self.flops_before

    def to_dict(self) -> dict:
        return {
            "criterion": self.criterion,
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
                    "channels": d.channels,
                    "kept": d.n_kept,
                    "alpha": d.alpha,
                }
                for d in self.layers
            ],
            "time_s": dict(self.timings),
        }

    def table(self) -> str:
        """A plain-text report: widths per layer, FLOPs, params, time per phase."""
        w = max([len(d.producer) for d in self.layers] + [5])
        lines = [f"{'layer':<{w}}  channels  kept"]
        lines += [f"{d.producer:<{w}}  {d.channels:>8}  {d.n_kept:>4}" for d in self.layers]
        lines.append(
            f"FLOPs {self.flops_before / 1e6:.2f}M -> {self.flops_after / 1e6:.2f}M "
            f"(-{100 * self.flops_reduction:.1f}%, target {self.flops_target / 1e6:.2f}M); "
            f"params {self.params_before / 1e6:.3f}M -> {self.params_after / 1e6:.3f}M"
            + (f"; alpha {self.alpha:.4g}" if self.alpha is not None else f"; criterion {self.criterion}")
        )
        lines.append("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()))
        return "\n".join(lines)


def _inputs_of(batch):
    """The images of a loader batch: a tensor, or the first item of a (images, labels, ...) tuple."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0], batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
    raise ValueError(
        f"calib_loader must yield tensors or (images, labels) tuples, got a {type(batch).__name__}"
    )


@torch.no_grad()
def _calibrate(model, loader, sinks: dict, calib_size: int | None, device, progress, desc="calibration"):
    """Runs the calibration images through `model`; for every batch, sinks[name](input, output) receives
    that module's input and output on the device. Returns the class labels (n,), or None when the
    loader yields bare images."""

    def hook(sink):
        def call(_module, args, out) -> None:  # returns None: the output passes on unchanged
            sink(args[0].detach(), out.detach())

        return call

    hooks = [model.get_submodule(name).register_forward_hook(hook(sink)) for name, sink in sinks.items()]
    labels, seen, size = [], 0, None
    try:
        bar = tqdm(total=calib_size, desc=desc, unit="img", disable=not progress)
        for i, batch in enumerate(loader):
            images, y = _inputs_of(batch)
            if calib_size is not None:
                images = images[: calib_size - seen]
                y = None if y is None else y[: calib_size - seen]
            _check_images(images, i, size)
            size = images.shape[1:]
            model(images.to(device))
            if y is not None:
                labels.append(y.to(device))
            seen += images.shape[0]
            bar.update(images.shape[0])
            if calib_size is not None and seen >= calib_size:
                break
        bar.close()
    finally:
        for h in hooks:
            h.remove()
    if seen < 2:
        raise ValueError(f"calib_loader gave {seen} image(s); the statistics need at least 2")
    if calib_size is not None and seen < calib_size:
        logger.warning("calib_loader ran out after %d images (calib_size = %d)", seen, calib_size)
    return torch.cat(labels) if labels and sum(map(len, labels)) == seen else None


def _check_images(images: torch.Tensor, i: int, size) -> None:
    """Batch `i` of the calibration images: finite, and of the image `size` of the batches before it
    (None for the first): every layer's inputs over all batches are concatenated."""
    if size is not None and images.shape[1:] != size:
        raise ValueError(
            f"calib_loader's batches must have the same image size: batch {i} has {tuple(images.shape[1:])}, "
            f"the batches before it {tuple(size)}"
        )
    if images.is_floating_point() and not bool(torch.isfinite(images).all()):
        raise ValueError(f"calibration images contain NaN or infinite values (batch {i} of calib_loader)")


def _apib_problems(model, loader, groups, args, device, progress, timings) -> list[HSICLassoProblem]:
    """One HSIC Lasso problem per group, from its consumer's input X and output (or the labels) Y;
    the seconds spent calibrating and computing statistics go to `timings`."""
    t0 = time.perf_counter()
    store = {g.consumer: ([], []) for g in groups}
    sinks = {
        name: (lambda x, out, xs=xs, ys=ys: (xs.append(x), ys.append(out)))
        for name, (xs, ys) in store.items()
    }
    labels = _calibrate(model, loader, sinks, args["calib_size"], device, progress)
    if args["target"] == "labels" and labels is None:
        raise ValueError("target='labels' needs calib_loader to yield (images, labels) batches")
    _sync(device)
    timings["calibration"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    problems = []
    for g in tqdm(groups, desc="statistics", unit="layer", disable=not progress):
        xs, ys = store.pop(g.consumer)
        x, out = torch.cat(xs), torch.cat(ys)
        del xs[:], ys[:]
        y = labels if args["target"] == "labels" else out.flatten(1)
        problems.append(
            HSICLassoProblem.from_data(
                x, y, positive=args["positive"], kernel=args["kernel"], backend=args["backend"]
            )
        )
        del x, out, y
    _sync(device)
    timings["statistics"] = time.perf_counter() - t0
    return problems


def _scores(model, loader, groups, criterion: str, args, device, progress) -> list[torch.Tensor]:
    """(C,) importance scores per group from a baseline criterion (see apib.criteria). Feature-map
    criteria read the consumer's input, batch by batch; in faithful mode the calibration forward pass
    is re-run for every layer, as HRank's and CHIP's published code does."""
    spec = CRITERIA[criterion]
    if spec.needs == "weight":
        return [spec.fn(model.get_submodule(g.producer).weight.detach()) for g in groups]
    if spec.needs == "none":
        return [spec.fn(g.channels, seed=args["seed"] + i) for i, g in enumerate(groups)]
    accs = {g.consumer: spec.accumulator(mode=args["mode"]) for g in groups}
    if args["mode"] == "faithful":
        for g in groups:
            acc = accs[g.consumer]
            sink = {g.consumer: lambda x, _out, acc=acc: acc.update(x)}
            _calibrate(
                model, loader, sink, args["calib_size"], device, progress, desc=f"{criterion} {g.producer}"
            )
    else:
        sinks = {name: (lambda x, _out, acc=acc: acc.update(x)) for name, acc in accs.items()}
        _calibrate(model, loader, sinks, args["calib_size"], device, progress)
    return [accs[g.consumer].scores() for g in groups]


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


class _Search:
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


def _check_target(flops_reduction, flops_target, flops_before: int) -> float:
    if (flops_reduction is None) == (flops_target is None):
        raise ValueError("give exactly one of flops_reduction (the fraction removed) or flops_target (FLOPs)")
    if flops_reduction is not None:
        return (1 - check_number(flops_reduction, "flops_reduction", positive=True, below=1)) * flops_before
    return check_number(flops_target, "flops_target", positive=True, below=flops_before)


def _check_args(alpha0, omega, tolerance, calib_size, kernel, target, criterion, mode):
    if alpha0 is not None:
        check_number(alpha0, "alpha0", positive=True)
    check_int(omega, "omega", 1)
    check_number(tolerance, "tolerance", positive=True, below=1)
    if calib_size is not None:
        check_int(calib_size, "calib_size", 2)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if criterion != "apib" and criterion not in CRITERIA:
        raise ValueError(f"criterion must be 'apib' or one of {sorted(CRITERIA)}, got {criterion!r}")
    check_mode(mode)


def _example_input(loader, example_input, device) -> torch.Tensor:
    if example_input is None:
        batch = next(iter(loader), None)
        if batch is None:
            raise ValueError("calib_loader yielded no batch: it must give at least 2 calibration images")
        example_input = _inputs_of(batch)[0][:1]
    if not isinstance(example_input, torch.Tensor):
        raise ValueError(
            f"example_input must be a tensor (one input batch), got {type(example_input).__name__}"
        )
    return example_input.to(device)


def prune(
    model: nn.Module,
    calib_loader,
    *,
    flops_reduction: float | None = None,
    flops_target: float | None = None,
    criterion: str = "apib",
    alpha0: float | None = None,
    omega: int = 1,
    tolerance: float = 0.01,
    calib_size: int | None = 128,
    kernel: str = "laplace",
    positive: bool = True,
    target: str = "output",
    mode: str = "fast",
    seed: int = 0,
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
    criterion: 'apib' — per-layer widths chosen by the HSIC Lasso under one global penalty — or a
        baseline from `apib.criteria` ('l1', 'fpgm', 'hrank', 'chip', 'random'), which keeps the
        highest-scoring channels under one pruning ratio shared by all layers, as their papers do.
        Every criterion uses the same layers and the same surgery.
    alpha0: the first penalty of the APIB search (scikit-learn Lasso's scale, as the reference's
        --alpha); default: a tenth of the median over layers of the penalty that zeroes the whole layer.
    omega: the fewest channels any layer keeps (the reference's per-layer rule, DESIGN §1).
    tolerance: relative FLOPs tolerance around the target.
    kernel: the Gram kernel for inputs and outputs ('laplace', the reference's, or 'gaussian', ...).
    positive: the paper's non-negative Lasso; False reproduces the reference code.
    target: the output representation Y of each layer: 'output' (its output maps, flattened) or
        'labels' (the calibration images' class labels, delta kernel).
    mode: for 'hrank' and 'chip', 'fast' (batched) or 'faithful' (the published loops; same scores).
    seed: for 'random'.
    device: where calibration and statistics run (default: the model's device).
    Raises ValueError for bad arguments, and when the target is unreachable even keeping `omega`
    channels per layer (the message gives the smallest reachable FLOPs).
    """
    _check_args(alpha0, omega, tolerance, calib_size, kernel, target, criterion, mode)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    args = dict(
        calib_size=calib_size,
        target=target,
        positive=positive,
        kernel=kernel,
        backend=backend,
        mode=mode,
        seed=seed,
    )
    timings = {}
    t0 = time.perf_counter()
    model = copy.deepcopy(model).to(device).eval()
    x0 = _example_input(calib_loader, example_input, device)
    dg = dependency_graph(model, x0)
    groups = find_groups(model, dg)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no prunable channel group (see apib.groups)")
    flops_before, per_module = count_flops(model, x0)
    params_before = count_params(model)
    flops_of = FlopsModel(groups, flops_before, per_module)
    goal = _check_target(flops_reduction, flops_target, flops_before)
    floor = flops_of([min(omega, g.channels) for g in groups])
    if floor > goal * (1 + tolerance):
        raise ValueError(
            f"the FLOPs target {goal:.4g} is unreachable: keeping omega = {omega} channel(s) in every "
            f"prunable layer still costs {floor:.4g} FLOPs (of {flops_before:.4g}); the smallest "
            f"reachable reduction is {1 - floor / flops_before:.4f}"
        )

    alpha = None
    if criterion == "apib":
        timings["setup"] = time.perf_counter() - t0
        problems = _apib_problems(model, calib_loader, groups, args, device, progress, timings)
        t0 = time.perf_counter()
        search = _Search(problems, omega, flops_of)
        if alpha0 is None:
            tops = sorted(p.alpha_max() for p in problems)
            alpha0 = 0.1 * tops[len(tops) // 2] or 1e-6
        # hundreds of solves, some at tiny penalties: one convergence warning at most, not one per solve
        with collect_convergence_warnings():
            alpha = search.run(goal, tolerance, float(alpha0), progress)
            sols, _ = search.solve(alpha, tol=LASSO_TOL)
        kept = [sel for _, _, sel in sols]
        alphas = [used for used, _, _ in sols]
    else:
        timings["setup"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = _scores(model, calib_loader, groups, criterion, args, device, progress)
        _sync(device)
        timings["scoring"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        counts = _uniform_ratio(groups, flops_of, omega, goal, tolerance)
        kept = [keep_indices(sc, k) for sc, k in zip(scores, counts, strict=True)]
        alphas = [None] * len(groups)
    decisions = [
        LayerDecision(g.producer, g.consumer, g.channels, tuple(sorted(int(i) for i in sel.tolist())), a)
        for g, sel, a in zip(groups, kept, alphas, strict=True)
    ]
    timings["search"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for g, d in zip(groups, decisions, strict=True):
        prune_group(model, dg, g, d.kept)
    flops_after, _ = count_flops(model, x0)
    model.apib_pruning = _config(decisions, tuple(x0.shape))
    timings["surgery"] = time.perf_counter() - t0
    return PruneResult(
        model=model,
        criterion=criterion,
        flops_before=flops_before,
        flops_after=flops_after,
        params_before=params_before,
        params_after=count_params(model),
        flops_target=goal,
        alpha=alpha,
        layers=decisions,
        input_shape=tuple(x0.shape),
        timings=timings,
    )


def _config(decisions: list[LayerDecision], input_shape) -> dict:
    """What a pruned model records about its surgery, so that `load_pruned` can repeat it."""
    return {
        "input_shape": list(input_shape),
        "kept": {d.producer: list(d.kept) for d in decisions},
    }


def apply_pruning(model: nn.Module, config: dict) -> nn.Module:
    """Repeats the surgery recorded in `config` (a pruned model's `apib_pruning`) on an unpruned model
    of the same architecture, in place. Returns the model."""
    x0 = torch.zeros(config["input_shape"], device=next(model.parameters()).device)
    dg = dependency_graph(model.eval(), x0)
    groups = {g.producer: g for g in find_groups(model, dg)}
    for name, kept in config["kept"].items():
        if name not in groups:
            raise ValueError(
                f"the pruning configuration names layer {name!r}, which is not prunable in this model"
            )
        prune_group(model, dg, groups[name], kept)
    model.apib_pruning = config
    return model
