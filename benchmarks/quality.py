"""Selection quality: does APIB keep better channels than L1, FPGM, HRank, CHIP and random? Two tests.

1. Pruning quality (issue 17's study). Each architecture (--archs; default ResNet-20, ResNet-56 and
   VGG-16, CIFAR-style) is trained here on the embedded digits (--train-epochs, --train-lr, seed 0; cached
   under --work/base so a rerun loads it) or loaded (--ckpt ARCH=PATH), then pruned to every FLOPs
   reduction (--reductions) on every seed by every method: the criteria (--criteria) and named APIB
   variants (--variants NAME=OPTION=VALUE,...: options of `apib.prune`), through the same layers and
   surgery. Top-1 is measured after re-estimating the BatchNorm statistics alone (no weight changes;
   see `recalibrate_bn`) and, for the methods in --finetune, after a short fine-tune of that model. A
   seed fixes the calibration images (128 un-augmented training images in the seed's order), the BN
   images, the random criterion and the fine-tune's data order, so same-seed runs are paired: every
   method is compared with every baseline criterion per (architecture, reduction) by a two-sided paired
   t-test over seeds (p < 0.05: win or loss, else tie). APIB's own allocation sets per-layer widths;
   the baselines share one pruning ratio over all layers (as their papers do), so the achieved FLOPs
   reduction is reported beside the target. Each finished (arch, reduction, seed, method) cell is
   written to --work/cells as it completes and reused by a rerun with the same settings, so an
   interrupted run loses nothing; --report-only rebuilds the tables from the cells.
2. Planted signal. Synthetic maps X (n, C, H, W) = ReLU(producer conv) where the next layer's output
   Y = ReLU(conv(X[:, S])) + noise reads only the k channels S. Every channel is made from its own
   random input map (a depthwise producer), so channels outside S are independent of Y and the truth
   is well defined. Problems add: per-channel scales spread log-normally (as BN scales spread in
   trained networks), "loud" noise channels (producer filters LOUD_GAIN times larger: large weights and
   large maps, bait for magnitude criteria), near-duplicates of signal channels (same input map,
   slightly perturbed: redundancy), and correlated channels (one input map shared by all). Each
   criterion keeps k channels; a signal channel and its duplicates form one group, so recall = signal
   groups hit / k and precision = kept channels that belong to any signal group / k (precision − recall
   = redundant picks / k). APIB is `hsic_lasso(x, y, n_select=k)` with the default preset's one-layer
   options; each variant with another one-layer configuration (sign constraint, bandwidth,
   normalisation, kernel) gets its own row; the diagnostic row "apib-std" runs APIB on maps divided by
   each channel's standard deviation.

    python benchmarks/quality.py            # the whole study on digits (hours on 2 CPU cores) and both tests
    python benchmarks/quality.py --quick    # resnet20, seed 0, 1 training and fine-tuning epoch
    python benchmarks/quality.py --tests pruning --archs resnet20 --seeds 0 1 2 --finetune apib l1
    # CIFAR-10 with trained weights, the paper's protocol (set the fine-tune schedule to the paper's):
    python benchmarks/quality.py --tests pruning --data-path ~/data/cifar10 --archs resnet56 \
        --ckpt resnet56=r56.pt --reductions 0.5 --finetune-epochs 300 --device cuda

Writes, atomically under --out (benchmarks/results/): quality_<dataset>.{md,json,png} (rewritten after
every seed) and planted_signal.{md,json}, each with the device, versions and commit.
"""

import argparse
import functools
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from common import RESULTS, environment, write_atomic
from scipy import stats

from apib import data
from apib.criteria import CRITERIA, keep_indices
from apib.io import atomic_path
from apib.models import get_model, model_names
from apib.options import PRESETS, PruneOptions
from apib.pruning import prune
from apib.train import evaluate, recalibrate_bn, train
from apib_kernels import hsic_lasso
from apib_kernels.kernels import median_scales

PRUNING_CRITERIA = ("apib", *CRITERIA)
PLANTED_CRITERIA = (*PRUNING_CRITERIA, "apib-std")
TESTS = ("pruning", "planted")
LOUD_GAIN = 4.0


# ---------------------------------------------------------------------------------------------------
# Planted signal


@dataclass(frozen=True)
class PlantedConfig:
    """One planted-signal problem: n samples of C channels of side × side maps, k of them read by Y.

    spread: σ of the log-normal per-channel scale (0: every producer filter has norm 1).
    loud: noise channels whose filters are LOUD_GAIN times larger.
    duplicates: signal channels that get a near-copy (their input map plus dup_noise · N(0, 1)).
    correlation: ρ, every channel's input map is √(1−ρ)·own + √ρ·one map shared by all channels, so
        channels outside S correlate with S and with Y (only S is read).
    out_channels, out_noise: Y's channels, and its additive noise relative to Y's std.
    """

    n: int = 128
    channels: int = 32
    k: int = 6
    side: int = 8
    spread: float = 0.0
    loud: int = 0
    duplicates: int = 0
    dup_noise: float = 0.1
    correlation: float = 0.0
    out_channels: int = 4
    out_noise: float = 0.1

    def __post_init__(self):
        if self.n < 2 or self.side < 1 or self.out_channels < 1:
            raise ValueError(f"need n >= 2, side >= 1 and out_channels >= 1, got {self}")
        if self.k < 1 or self.loud < 0 or not 0 <= self.duplicates <= self.k:
            raise ValueError(f"need k >= 1, loud >= 0 and 0 <= duplicates <= k, got {self}")
        if self.k + self.loud + self.duplicates > self.channels:
            raise ValueError(
                f"k + loud + duplicates = {self.k + self.loud + self.duplicates} channels exceed "
                f"channels = {self.channels}"
            )
        if self.spread < 0 or self.dup_noise < 0 or self.out_noise < 0:
            raise ValueError(f"spread, dup_noise and out_noise must be >= 0, got {self}")
        if not 0 <= self.correlation < 1:
            raise ValueError(f"correlation must be in [0, 1), got {self.correlation}")


PROBLEMS = {
    "easy": PlantedConfig(),
    "scaled": PlantedConfig(spread=0.5),
    "loud": PlantedConfig(loud=6),
    "duplicates": PlantedConfig(duplicates=3),
    "correlated": PlantedConfig(correlation=0.5),
    "all": PlantedConfig(spread=0.5, loud=6, duplicates=3),
}


@dataclass(frozen=True)
class Planted:
    """maps (n, C, side, side) post-ReLU; output (n, out_channels·side²); weight (C, 1, 3, 3), the
    producer's filters; group (C,) int64, the signal group of each channel (0..k−1, a duplicate sharing
    its source's group) or −1; loud (C,) bool."""

    maps: torch.Tensor
    output: torch.Tensor
    weight: torch.Tensor
    group: torch.Tensor
    loud: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.group.max()) + 1


def planted_problem(cfg: PlantedConfig, seed: int) -> Planted:
    """Draws one instance of `cfg`; channel roles are placed at random indices, so ties in a score
    cannot favour the signal."""
    g = torch.Generator().manual_seed(seed)
    c, k = cfg.channels, cfg.k
    perm = torch.randperm(c, generator=g)
    signal, loud = perm[:k], perm[k : k + cfg.loud]
    dups = perm[k + cfg.loud : k + cfg.loud + cfg.duplicates]
    source = torch.arange(c)
    source[dups] = signal[: cfg.duplicates]
    z = torch.randn(cfg.n, c, cfg.side, cfg.side, generator=g)[:, source]
    z[:, dups] += cfg.dup_noise * torch.randn(cfg.n, cfg.duplicates, cfg.side, cfg.side, generator=g)
    if cfg.correlation:
        shared = torch.randn(cfg.n, 1, cfg.side, cfg.side, generator=g)
        z = math.sqrt(1 - cfg.correlation) * z + math.sqrt(cfg.correlation) * shared
    w = torch.randn(c, 1, 3, 3, generator=g)
    w = w / w.flatten(1).norm(dim=1).view(c, 1, 1, 1)
    w = w * torch.exp(cfg.spread * torch.randn(c, generator=g)).view(c, 1, 1, 1)
    w[dups] = w[signal[: cfg.duplicates]]
    w[loud] *= LOUD_GAIN
    maps = F.relu(F.conv2d(z, w, padding=1, groups=c))
    # Each signal channel gets a filter of the same norm into Y, so none is negligible.
    v = torch.randn(cfg.out_channels, k, 3, 3, generator=g)
    v = v / v.square().sum((0, 2, 3), keepdim=True).sqrt()
    y = F.relu(F.conv2d(maps[:, signal], v, padding=1))
    y = y + cfg.out_noise * y.std() * torch.randn(y.shape, generator=g)
    group = torch.full((c,), -1, dtype=torch.int64)
    group[signal] = torch.arange(k)
    group[dups] = torch.arange(cfg.duplicates)
    is_loud = torch.zeros(c, dtype=torch.bool)
    is_loud[loud] = True
    return Planted(maps, y.flatten(1), w, group, is_loud)


def planted_apib(problem: Planted, options: dict) -> torch.Tensor:
    """(k,) int64: the channels APIB keeps on `problem` under `apib.prune` options (a preset's values
    filling the rest): the kernel, positivity, bandwidth and normalisation of one layer's Lasso."""
    o = PruneOptions(**options)
    if o.target != "output":
        raise ValueError(f"the planted problems have no labels: target must be 'output', got {o.target!r}")
    x = problem.maps
    if o.bandwidth == "median":
        x = x * median_scales(x, o.kernel).to(x.dtype).view(1, -1, 1, 1)
    return hsic_lasso(
        x, problem.output, n_select=problem.k, kernel=o.kernel, positive=o.positive, normalize=o.normalize
    ).selected


def planted_rows(variants: dict[str, dict]) -> dict[str, list[str]]:
    """The variants that differ on one layer: {row name: the variants it stands for}. Allocation and
    penalty scale do not change which k channels one Lasso selects, so such a variant shares the row of
    the variant (or "apib") with the same one-layer options; a label target has no planted counterpart."""
    rows: dict[tuple, list[str]] = {}
    for name, options in {"apib": {"criterion": "apib"}, **variants}.items():
        o = PruneOptions(**options)
        if o.target == "output":
            rows.setdefault((o.kernel, o.positive, o.bandwidth, o.normalize), []).append(name)
    return {names[0]: names for names in rows.values()}


def planted_keep(problem: Planted, criterion: str, seed: int) -> torch.Tensor:
    """(k,) int64: the channels `criterion` keeps on `problem` (see PLANTED_CRITERIA)."""
    x, k = problem.maps, problem.k
    if criterion == "apib":
        return planted_apib(problem, {"criterion": "apib"})
    if criterion == "apib-std":
        scale = x.transpose(0, 1).flatten(1).std(1).clamp_min(1e-12)
        return planted_apib(replace(problem, maps=x / scale.view(1, -1, 1, 1)), {"criterion": "apib"})
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {PLANTED_CRITERIA}, got {criterion!r}")
    spec = CRITERIA[criterion]
    if spec.needs == "weight":
        scores = spec.fn(problem.weight)
    elif spec.needs == "fmaps":
        scores = spec.fn(x)
    else:
        scores = spec.fn(x.shape[1], seed=seed)
    return keep_indices(scores, k)


def precision_recall(problem: Planted, kept: torch.Tensor) -> dict:
    """precision: kept channels in a signal group / k; recall: signal groups hit / k; loud and
    redundant: kept loud channels, and kept channels beyond the first of their group, / k."""
    k = problem.k
    groups = problem.group[kept]
    hits = groups[groups >= 0]
    n_groups = hits.unique().numel()
    return {
        "precision": hits.numel() / k,
        "recall": n_groups / k,
        "loud": int(problem.loud[kept].sum()) / k,
        "redundant": (hits.numel() - n_groups) / k,
    }


def run_planted(criteria, seeds, problems: dict[str, PlantedConfig] = PROBLEMS, variants=None) -> dict:
    """Every criterion, and every APIB variant (name -> `apib.prune` options; one row per distinct
    one-layer configuration, see planted_rows), on every problem and seed. Returns {"problems", "seeds",
    "variants", "runs", "summary"}: runs one row per (problem, criterion, seed) with the kept channels
    and precision_recall's metrics; summary their mean and std over seeds per (problem, criterion)."""
    criteria, seeds = _check_criteria(criteria, PLANTED_CRITERIA), _check_seeds(seeds)
    variants = variants or {}
    shared = planted_rows(variants)
    extra = [name for name in shared if name not in criteria]
    criteria = [*criteria, *extra]
    runs = []
    for name, cfg in problems.items():
        for seed in seeds:
            problem = planted_problem(cfg, seed)
            for criterion in criteria:
                if criterion in extra:
                    kept = planted_apib(problem, variants[criterion])
                else:
                    kept = planted_keep(problem, criterion, seed)
                row = {"problem": name, "criterion": criterion, "seed": seed, "kept": sorted(kept.tolist())}
                runs.append({**row, **precision_recall(problem, kept)})
    summary = []
    for name in problems:
        for criterion in criteria:
            rows = [r for r in runs if r["problem"] == name and r["criterion"] == criterion]
            entry = {"problem": name, "criterion": criterion}
            for metric in ("precision", "recall", "loud", "redundant"):
                entry[f"{metric}_mean"], entry[f"{metric}_std"] = _mean_std([r[metric] for r in rows])
            summary.append(entry)
    return {
        "problems": {name: asdict(cfg) for name, cfg in problems.items()},
        "loud_gain": LOUD_GAIN,
        "seeds": seeds,
        "variants": {name: variants[name] for name in extra},
        "shared_rows": {name: names for name, names in shared.items() if len(names) > 1},
        "without_row": [v for v in variants if all(v not in names for names in shared.values())],
        "runs": runs,
        "summary": summary,
    }


def planted_markdown(result: dict, env: dict) -> str:
    problems = list(result["problems"])
    criteria = list(dict.fromkeys(s["criterion"] for s in result["summary"]))
    cell = {(s["problem"], s["criterion"]): s for s in result["summary"]}
    lines = [
        "# Planted signal: precision and recall at k",
        "",
        _env_line(env),
        "",
        f"Seeds {', '.join(map(str, result['seeds']))}; mean ± std over seeds. Recall: signal groups "
        "hit / k; precision: kept channels in a signal group / k (a signal channel and its "
        "near-duplicates are one group). Problems (see benchmarks/quality.py):",
        "",
    ]
    for name, cfg in result["problems"].items():
        lines.append(
            f"- **{name}**: n {cfg['n']}, C {cfg['channels']}, k {cfg['k']}, {cfg['side']}×{cfg['side']} "
            f"maps, scale spread σ {cfg['spread']}, {cfg['loud']} loud (×{result['loud_gain']:g}), "
            f"{cfg['duplicates']} duplicates, correlation ρ {cfg['correlation']}"
        )
    for name, options in result["variants"].items():
        lines.append(f"- row **{name}**: APIB with {_options_text(options)}")
    for name, names in result["shared_rows"].items():
        lines.append(
            f"- row **{name}** also stands for {', '.join(names[1:])} (same single-layer selection: "
            "allocation and penalty scale do not change which k channels one Lasso keeps)"
        )
    if result["without_row"]:
        lines.append(f"- no row for {', '.join(result['without_row'])}: the planted problems have no labels")
    for metric in ("recall", "precision"):
        lines += ["", f"## {metric.capitalize()}", ""]
        lines.append("| criterion | " + " | ".join(problems) + " |")
        lines.append("|---|" + "---:|" * len(problems))
        for c in criteria:
            values = [cell[p, c] for p in problems]
            lines.append(
                f"| {c} | "
                + " | ".join(f"{v[f'{metric}_mean']:.2f} ± {v[f'{metric}_std']:.2f}" for v in values)
                + " |"
            )
    lines += ["", "## Loud noise kept / k (mean)", ""]
    lines.append("| criterion | " + " | ".join(problems) + " |")
    lines.append("|---|" + "---:|" * len(problems))
    for c in criteria:
        lines.append(f"| {c} | " + " | ".join(f"{cell[p, c]['loud_mean']:.2f}" for p in problems) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# Pruning quality


DEFAULT_VARIANTS = (
    "apib-paper=preset=paper",
    "apib-uniform=preset=uniform",
    "apib-threshold=preset=paper,allocation=threshold",
    "apib-layer=preset=paper,penalty_scale=layer",
    "apib-median=preset=paper,bandwidth=median",
    "apib-normalize=preset=paper,normalize=true",
    "apib-labels=preset=paper,target=labels",
)
"""Named APIB configurations, NAME=OPTION=VALUE[,OPTION=VALUE...] (options of `apib.prune`): the
paper's, and the paper's with one change each ("apib" is the default preset)."""
FINETUNED_VARIANTS = ("apib-paper", "apib-uniform", "apib-layer")
"""The variants fine-tuned by default beside the criteria."""
METHOD_OPTIONS = tuple(PRESETS["paper"])
"""The options a preset sets: a cell records their values in force (see `method_options`)."""
STAGES = ("bn", "finetuned")
STAGE_NAMES = {"bn": "BN re-estimated", "finetuned": "fine-tuned"}
P_THRESHOLD = 0.05


def _option_value(text: str):
    """'true'/'false' -> bool, 'none' -> None, an int or a float where it parses as one, else the text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_variant(text: str) -> tuple[str, dict]:
    """'NAME=OPTION=VALUE,...' -> (NAME, {"criterion": "apib", OPTION: VALUE, ...}), checked by
    `PruneOptions`."""
    name, sep, spec = text.partition("=")
    items = [item.partition("=") for item in spec.split(",")] if spec else []
    if not name or not sep or not items or any(not k.strip() or not eq for k, eq, _ in items):
        raise ValueError(f"a variant is NAME=OPTION=VALUE[,OPTION=VALUE...], got {text!r}")
    options = {"criterion": "apib", **{k.strip(): _option_value(v.strip()) for k, _, v in items}}
    try:
        PruneOptions(**options)
    except TypeError as e:
        raise ValueError(f"variant {name!r}: {e}") from None
    return name, options


@dataclass(frozen=True)
class StudyConfig:
    """The pruning-quality study: every method in `methods` (name -> `apib.prune` options) prunes each
    architecture's base model to every FLOPs reduction on every seed; the methods in `finetune` are
    also fine-tuned. Cells (arch, reduction, seed, method) are cached under work/cells."""

    archs: list[str]
    dataset: str
    data_path: str | None
    ckpts: dict[str, str]
    train_epochs: dict[str, int]
    train_lr: dict[str, float]
    reductions: list[float]
    seeds: list[int]
    methods: dict[str, dict]
    finetune: list[str]
    tolerance: float
    calib_size: int
    bn_images: int
    finetune_epochs: int
    finetune_lr: float
    batch_size: int
    device: str
    work: str

    def __post_init__(self):
        if not self.archs or any(a not in model_names() for a in self.archs):
            raise ValueError(f"archs must be a non-empty list drawn from {model_names()}, got {self.archs!r}")
        if not self.reductions or any(not 0 < r < 1 for r in self.reductions):
            raise ValueError(
                f"reductions must be a non-empty list of fractions in (0, 1), got {self.reductions}"
            )
        _check_seeds(self.seeds)
        if not self.methods:
            raise ValueError("methods must not be empty")
        unknown = [m for m in self.finetune if m not in self.methods]
        if unknown:
            raise ValueError(f"finetune names methods that are not run: {unknown}")
        missing = [a for a in self.archs if a not in self.train_epochs or a not in self.train_lr]
        if missing:
            raise ValueError(f"train_epochs and train_lr need a value for every arch, missing {missing}")
        if min(self.train_epochs.values()) < 0 or self.finetune_epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.train_epochs} and {self.finetune_epochs}")
        if self.bn_images < 2:
            raise ValueError(
                f"bn_images must be >= 2 (BatchNorm statistics need a batch), got {self.bn_images}"
            )


def _base_model(cfg: StudyConfig, arch: str, device, train_set, val, log) -> tuple[torch.nn.Module, dict]:
    """The model every method prunes: --ckpt's weights, or trained here (seed 0, the arch's epochs and
    lr) and cached under work/base, so a rerun loads it."""
    classes = data.num_classes(cfg.dataset)
    if arch in cfg.ckpts:
        model = get_model(arch, classes, pretrained_path=cfg.ckpts[arch]).to(device)
        info = {"source": f"--ckpt {cfg.ckpts[arch]}", "train_epochs": 0, "train_s": 0.0}
        info["top1"] = evaluate(model, val, device)["top1"]
        return model.eval(), info
    path = _base_path(cfg, arch)
    if os.path.exists(path) and os.path.exists(path + ".json"):
        with open(path + ".json") as f:
            info = json.load(f)
        log(f"base {arch}: cached {path}")
        return get_model(arch, classes, pretrained_path=path).to(device).eval(), info
    torch.manual_seed(0)
    model = get_model(arch, classes).to(device)
    t0 = time.perf_counter()
    loader = data.loader(train_set(), cfg.batch_size, train=True, seed=0)
    epochs, lr = cfg.train_epochs[arch], cfg.train_lr[arch]
    train(model, loader, epochs, lr=lr, device=device, progress=False)
    info = {"source": f"trained here, {epochs} epochs, lr {lr:g}", "train_epochs": epochs, "train_lr": lr}
    info["train_s"] = time.perf_counter() - t0
    info["top1"] = evaluate(model, val, device)["top1"]
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(model.state_dict(), tmp)
    _write_json(info, path + ".json")
    log(f"base {arch}: top-1 {info['top1']:.2f}% after {epochs} epochs ({info['train_s']:.0f}s)")
    return model.eval(), info


def method_options(options: dict) -> dict:
    """A method's `apib.prune` options with every option a preset sets at its value in force, and no
    preset name: what a cell's selection depends on, whichever preset is the default when it runs."""
    resolved = PruneOptions(**options)
    fixed = {k: v for k, v in options.items() if k != "preset"}
    return {**fixed, **{k: getattr(resolved, k) for k in METHOD_OPTIONS}}


def cell_settings(cfg: StudyConfig, arch: str, base: dict, reduction: float, seed: int, method: str) -> dict:
    """Everything a cell's numbers depend on; a cached cell is reused only when its settings are equal."""
    return {
        "dataset": cfg.dataset,
        "arch": arch,
        "base": base["source"],
        "reduction": reduction,
        "seed": seed,
        "method": method,
        "options": method_options(cfg.methods[method]),
        "tolerance": cfg.tolerance,
        "calib_size": cfg.calib_size,
        "bn_images": cfg.bn_images,
        "batch_size": cfg.batch_size,
        "finetune_epochs": cfg.finetune_epochs if method in cfg.finetune else 0,
        "finetune_lr": cfg.finetune_lr,
    }


def cell_path(work: str, settings: dict) -> str:
    s = settings
    return os.path.join(
        work, "cells", s["dataset"], s["arch"], f"r{s['reduction']:g}", f"s{s['seed']}", f"{s['method']}.json"
    )


def load_cell(work: str, settings: dict) -> dict | None:
    """The cached cell of `settings`, or None when there is none or it was made with other settings."""
    path = cell_path(work, settings)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        cell = json.load(f)
    return cell if cell["settings"] == settings else None


def run_cell(settings: dict, model, datasets: dict, val, device) -> dict:
    """Prunes `model` as `settings` says; top-1 after BN re-estimation and, with finetune_epochs, after
    fine-tuning that model further (top1_finetuned None otherwise). The seed fixes the calibration
    images, the BN images, the random criterion and the fine-tune's data order."""
    s, seed = settings, settings["seed"]
    t0 = time.perf_counter()
    result = prune(
        model,
        data.loader(datasets["calib"], s["calib_size"], train=True, seed=seed),
        flops_reduction=s["reduction"],
        tolerance=s["tolerance"],
        calib_size=s["calib_size"],
        seed=seed,
        device=device,
        progress=False,
        **s["options"],
    )
    prune_s = time.perf_counter() - t0
    bn_loader = data.loader(datasets["calib"], s["batch_size"], train=True, seed=seed)
    pruned = recalibrate_bn(result.model, bn_loader, s["bn_images"], device)
    top1_bn = evaluate(pruned, val, device)
    top1_tuned, t0 = None, time.perf_counter()
    if s["finetune_epochs"]:
        torch.manual_seed(seed)
        tune = data.loader(datasets["train"](), s["batch_size"], train=True, seed=seed)
        train(pruned, tune, s["finetune_epochs"], lr=s["finetune_lr"], device=device, progress=False)
        top1_tuned = evaluate(pruned, val, device)["top1"]
    return {
        "settings": settings,
        "flops_before": result.flops_before,
        "flops_after": result.flops_after,
        "flops_reduction": result.flops_reduction,
        "params_before": result.params_before,
        "params_after": result.params_after,
        "widths": [d.n_kept for d in result.layers],
        "top1_bn": top1_bn["top1"],
        "top1_finetuned": top1_tuned,
        "prune_s": prune_s,
        "finetune_s": time.perf_counter() - t0,
    }


def run_study(cfg: StudyConfig, log=print, on_progress=None, report_only: bool = False) -> dict:
    """Runs (or, with report_only, only collects) every cell: per architecture, seed by seed, every
    reduction and method, so partial results cover every reduction. A cached cell with equal settings is
    skipped; each new one is written atomically as it completes. on_progress(result) after every seed.
    Returns {"config", "bases", "runs", "time_s"}: runs are the cells' records, flattened."""
    device = torch.device(cfg.device)
    val = data.loader(data.get_dataset(cfg.dataset, cfg.data_path, train=False), 256, train=False)
    datasets = {
        "calib": data.get_dataset(cfg.dataset, cfg.data_path, train=True, augment=False),
        # The augmented training split, read only if something trains (reading CIFAR takes seconds).
        "train": functools.cache(
            lambda: data.get_dataset(cfg.dataset, cfg.data_path, train=True, augment=True)
        ),
    }
    result = {"config": asdict(cfg), "bases": {}, "runs": [], "time_s": 0.0}
    start = time.perf_counter()
    for arch in cfg.archs:
        model = None
        for seed in cfg.seeds:
            for reduction in cfg.reductions:
                for method in cfg.methods:
                    if model is None:
                        if report_only and not _cached_base(cfg, arch):
                            break
                        model, result["bases"][arch] = _base_model(
                            cfg, arch, device, datasets["train"], val, log
                        )
                    settings = cell_settings(cfg, arch, result["bases"][arch], reduction, seed, method)
                    cell = load_cell(cfg.work, settings)
                    if cell is None and not report_only:
                        cell = run_cell(settings, model, datasets, val, device)
                        _write_json(cell, cell_path(cfg.work, settings))
                        tuned = cell["top1_finetuned"]
                        log(
                            f"{arch} -{reduction:g} seed {seed} {method:>14}: "
                            f"-{100 * cell['flops_reduction']:.1f}% FLOPs, top-1 {cell['top1_bn']:.2f}% BN"
                            + ("" if tuned is None else f", {tuned:.2f}% fine-tuned")
                            + f" ({cell['prune_s'] + cell['finetune_s']:.1f}s)"
                        )
                    if cell is not None:
                        result["runs"].append(
                            {**cell["settings"], **{k: v for k, v in cell.items() if k != "settings"}}
                        )
            result["time_s"] = time.perf_counter() - start
            if on_progress is not None and not report_only:
                on_progress(result)
    return result


def _base_path(cfg: StudyConfig, arch: str) -> str:
    name = f"{arch}_{cfg.dataset}_e{cfg.train_epochs[arch]}_lr{cfg.train_lr[arch]:g}.pt"
    return os.path.join(cfg.work, "base", name)


def _cached_base(cfg: StudyConfig, arch: str) -> bool:
    return arch in cfg.ckpts or os.path.exists(_base_path(cfg, arch) + ".json")


def paired_test(a: list[float], b: list[float]) -> dict:
    """Two-sided paired t-test of a against b (same seeds, same order; scipy.stats.ttest_rel).
    outcome: "win" (mean a − b > 0 and p < P_THRESHOLD), "loss" (< 0 and p < P_THRESHOLD), else "tie";
    None with fewer than 2 pairs. Equal differences on every seed (up to rounding) give p 0, or 1 when
    they are all 0."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    if len(a) < 2:
        return {"n": len(a), "diff": None, "p": None, "outcome": None}
    d = [x - y for x, y in zip(a, b, strict=True)]
    diff = statistics.fmean(d)
    if max(d) - min(d) <= 1e-9 * max(1.0, abs(diff)):  # top-1 moves in steps of 100/n_val; rounding
        p = 1.0 if abs(diff) <= 1e-9 else 0.0
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
    outcome = "tie" if p >= P_THRESHOLD else ("win" if diff > 0 else "loss")
    return {"n": len(a), "diff": diff, "p": p, "outcome": outcome}


def analyse(result: dict) -> dict:
    """Adds "summary" (mean ± std per arch, reduction, method) and "comparisons" (paired_test of every
    method against every baseline criterion per arch, reduction and stage, on the seeds both have)."""
    cfg = result["config"]
    groups: dict[tuple, dict[int, dict]] = {}
    for r in result["runs"]:
        groups.setdefault((r["arch"], r["reduction"], r["method"]), {})[r["seed"]] = r
    summary, comparisons = [], []
    baselines = [m for m in cfg["methods"] if m in CRITERIA]
    for (arch, reduction, method), by_seed in groups.items():
        rows = list(by_seed.values())
        entry = {"arch": arch, "reduction": reduction, "method": method, "seeds": sorted(by_seed)}
        for metric in ("flops_reduction", "params_after", "top1_bn", "top1_finetuned"):
            values = [r[metric] for r in rows if r[metric] is not None]
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = _mean_std(values) if values else (None, None)
        summary.append(entry)
        for baseline in baselines:
            other = groups.get((arch, reduction, baseline), {})
            for stage in STAGES:
                key = f"top1_{stage}"
                seeds = sorted(
                    s for s in by_seed if s in other and None not in (by_seed[s][key], other[s][key])
                )
                if method == baseline or not seeds:
                    continue
                test = paired_test([by_seed[s][key] for s in seeds], [other[s][key] for s in seeds])
                comparisons.append(
                    {
                        "arch": arch,
                        "reduction": reduction,
                        "stage": stage,
                        "method": method,
                        "baseline": baseline,
                    }
                    | test
                )
    return {**result, "summary": summary, "comparisons": comparisons}


def tally(comparisons: list[dict]) -> dict:
    """{(method, baseline, stage): {"win": n, "tie": n, "loss": n}} over settings (arch, reduction), and
    under baseline "all": settings where the method wins or ties against every baseline ("win" if it
    wins against every one), or loses against at least one."""
    counts: dict[tuple, dict] = {}
    per_setting: dict[tuple, list[str]] = {}
    for c in comparisons:
        if c["outcome"] is None:
            continue
        counts.setdefault((c["method"], c["baseline"], c["stage"]), dict.fromkeys(("win", "tie", "loss"), 0))
        counts[c["method"], c["baseline"], c["stage"]][c["outcome"]] += 1
        per_setting.setdefault((c["method"], c["stage"], c["arch"], c["reduction"]), []).append(c["outcome"])
    for (method, stage, _, _), outcomes in per_setting.items():
        entry = counts.setdefault((method, "all", stage), dict.fromkeys(("win", "tie", "loss"), 0))
        entry["loss" if "loss" in outcomes else "win" if set(outcomes) == {"win"} else "tie"] += 1
    return counts


def _options_text(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items() if k != "criterion") or "defaults"


def _fmt(mean, std) -> str:
    return "–" if mean is None else f"{mean:.2f} ± {std:.2f}"


def study_markdown(result: dict, env: dict) -> str:
    cfg = result["config"]
    methods = list(cfg["methods"])
    baselines = [m for m in methods if m in CRITERIA]
    contenders = [m for m in methods if m not in CRITERIA]
    seeds_by_arch = {}
    for r in result["runs"]:
        seeds_by_arch.setdefault(r["arch"], set()).add(r["seed"])
    lines = [
        f"# Pruning quality on {cfg['dataset']}: {', '.join(cfg['archs'])}",
        "",
        _env_line(env),
        "",
        f"Target FLOPs reductions {', '.join(f'{r:g}' for r in cfg['reductions'])} (tolerance "
        f"{cfg['tolerance']:g}); calibration {cfg['calib_size']} un-augmented training images in each "
        f"seed's order; BN statistics re-estimated on {cfg['bn_images']} training images (no weight "
        f"change); then fine-tune {cfg['finetune_epochs']} epoch(s), lr {cfg['finetune_lr']:g} (cosine), "
        f"batch {cfg['batch_size']}, for {', '.join(cfg['finetune'])} only. A seed fixes the calibration "
        "images, the BN images, the random criterion and the fine-tune's data order, so runs with the same "
        "seed are paired. APIB's own allocation sets per-layer widths; the baselines share one ratio.",
        "",
        "Test: two-sided paired t-test over seeds (scipy.stats.ttest_rel), p < "
        f"{P_THRESHOLD:g} is a win or a loss, otherwise a tie; a setting is one (architecture, reduction). "
        f"Compute: {sum(r['prune_s'] + r['finetune_s'] for r in result['runs']) / 60:.0f} min of pruning and "
        f"fine-tuning over the cells, {sum(b['train_s'] for b in result['bases'].values()) / 60:.0f} min "
        "training the base models.",
        "",
        "| architecture | base model | top-1 (%) | FLOPs | params | seeds run (complete; partial) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for arch, base in result["bases"].items():
        run = [r for r in result["runs"] if r["arch"] == arch]
        # A seed is complete when it has every reduction of every method run on this architecture.
        cells = len(cfg["reductions"]) * len({r["method"] for r in run})
        count = {s: sum(r["seed"] == s for r in run) for s in sorted(seeds_by_arch.get(arch, ()))}
        seeds = [s for s, n in count.items() if n == cells]
        partial = [f"{s} ({n} of {cells} cells)" for s, n in count.items() if n < cells]
        short = "" if len(seeds) >= len(cfg["seeds"]) else f" (fewer than the {len(cfg['seeds'])} asked)"
        short += f"; partial: {', '.join(partial)}" if partial else ""
        lines.append(
            f"| {arch} | {base['source']} | {base['top1']:.2f} | "
            + (
                f"{run[0]['flops_before'] / 1e6:.2f}M | {run[0]['params_before'] / 1e6:.3f}M"
                if run
                else "– | –"
            )
            + f" | {', '.join(map(str, seeds))}{short} |"
        )
    counts = tally(result["comparisons"])
    for stage in STAGES:
        lines += [
            "",
            f"## Wins / ties / losses, {STAGE_NAMES[stage]} (settings; W/T/L)",
            "",
            "| method | " + " | ".join(f"vs {b}" for b in baselines) + " | vs every baseline |",
            "|---|" + "---:|" * (len(baselines) + 1),
        ]
        for m in methods:
            cells = []
            for b in [*baselines, "all"]:
                c = counts.get((m, b, stage))
                cells.append("–" if c is None else f"{c['win']}/{c['tie']}/{c['loss']}")
            if any(c != "–" for c in cells):
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        '"vs every baseline": W = wins against all, T = wins or ties against all (not W), L = loses to at '
        f"least one. Contenders: {', '.join(contenders)}; options: "
        + "; ".join(f"{m} = {_options_text(cfg['methods'][m])}" for m in contenders)
        + ".",
    ]
    versus_l1 = {
        (c["arch"], c["reduction"], c["stage"], c["method"]): c
        for c in result["comparisons"]
        if c["baseline"] == "l1"
    }
    mark = {"win": " ▲", "loss": " ▼", "tie": "", None: ""}
    by_key = {(s["arch"], s["reduction"], s["method"]): s for s in result["summary"]}
    for arch in cfg["archs"]:
        if arch not in seeds_by_arch:
            continue
        lines += [
            "",
            f"## {arch}: top-1 (%), mean ± std over seeds (▲/▼: significantly above/below l1)",
            "",
            "| method | "
            + " | ".join(f"-{r:g}: FLOPs ↓ | BN | fine-tuned" for r in cfg["reductions"])
            + " |",
            "|---|" + "---:|" * (3 * len(cfg["reductions"])),
        ]
        for m in methods:
            cells = []
            for r in cfg["reductions"]:
                s = by_key.get((arch, r, m))
                if s is None:
                    cells += ["–"] * 3
                    continue
                marks = [mark[versus_l1.get((arch, r, st, m), {}).get("outcome")] for st in STAGES]
                cells += [
                    f"{100 * s['flops_reduction_mean']:.1f}%",
                    _fmt(s["top1_bn_mean"], s["top1_bn_std"]) + marks[0],
                    _fmt(s["top1_finetuned_mean"], s["top1_finetuned_std"]) + marks[1],
                ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def study_plot(result: dict, path: str) -> None:
    """Top-1 against the FLOPs reduction per architecture (columns) and stage (rows), one line per
    method with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    archs = [a for a in cfg["archs"] if a in result["bases"]]
    fig, axes = plt.subplots(
        len(STAGES), max(1, len(archs)), figsize=(4.2 * max(1, len(archs)) + 2, 7), squeeze=False
    )
    by_key = {(s["arch"], s["reduction"], s["method"]): s for s in result["summary"]}
    colors = plt.get_cmap("tab20")  # one colour per method in every panel
    for col, arch in enumerate(archs):
        for row, stage in enumerate(STAGES):
            ax = axes[row][col]
            for i, m in enumerate(cfg["methods"]):
                points = [(r, by_key[arch, r, m]) for r in cfg["reductions"] if (arch, r, m) in by_key]
                points = [(r, s) for r, s in points if s[f"top1_{stage}_mean"] is not None]
                if points:
                    ax.errorbar(
                        [100 * r + 0.6 * (i - len(cfg["methods"]) / 2) for r, _ in points],
                        [s[f"top1_{stage}_mean"] for _, s in points],
                        yerr=[s[f"top1_{stage}_std"] for _, s in points],
                        marker="o" if m in CRITERIA else "s",
                        linestyle="-" if m in CRITERIA else "--",
                        capsize=2,
                        color=colors(i),
                        label=m,
                    )
            ax.axhline(result["bases"][arch]["top1"], color="k", linestyle=":", linewidth=1)
            ax.set_title(f"{arch}, {STAGE_NAMES[stage]}", fontsize=9)
            ax.set_xlabel("target FLOPs reduction (%)")
            ax.set_ylabel("top-1 (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# Shared


def _check_criteria(criteria, allowed) -> list[str]:
    bad = [c for c in criteria if c not in allowed]
    if bad or not criteria:
        raise ValueError(f"criteria must be a non-empty list drawn from {allowed}, got {list(criteria)!r}")
    return list(criteria)


def _check_seeds(seeds) -> list[int]:
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    return list(seeds)


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _env_line(env: dict) -> str:
    return f"{env['device']} | torch {env['torch']} | commit {env['commit']} | {env['date']}"


def _write_json(obj: dict, path: str) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_study(result: dict, env: dict, stem: str) -> str:
    """Analyses `result` and writes stem.{md,json,png} atomically; returns the table."""
    result = analyse(result)
    text = study_markdown(result, env)
    write_atomic(stem + ".md", text)
    _write_json({"env": env, **result}, stem + ".json")
    if result["runs"]:
        study_plot(result, stem + ".png")
    return text


def _per_arch(parser, flag: str, items: list[str], archs: list[str], kind) -> dict:
    """['10', 'resnet56=20'] -> {arch: 10 for every arch, but resnet56: 20}."""
    values = {}
    try:
        for item in items:
            arch, _, value = item.rpartition("=")
            values.update({a: kind(value) for a in archs} if not arch else {arch: kind(value)})
    except ValueError:
        parser.error(f"{flag} takes VALUE or ARCH=VALUE items, got {items}")
    missing = [a for a in archs if a not in values]
    if missing:
        parser.error(f"{flag} has no value for {missing}")
    return values


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tests", nargs="+", choices=TESTS, default=list(TESTS), help="which tests to run")
    p.add_argument("--archs", nargs="+", default=["resnet20", "resnet56", "vgg16"], choices=model_names())
    p.add_argument(
        "--dataset", default=None, choices=data.dataset_names(), help="digits, or cifar10 with --data-path"
    )
    p.add_argument("--data-path", default=None, help="local dataset folder (not for digits)")
    p.add_argument("--ckpt", nargs="+", default=[], metavar="ARCH=PATH", help="trained weights (else: train)")
    p.add_argument(
        "--train-epochs",
        nargs="+",
        default=["10", "resnet56=20"],
        metavar="N|ARCH=N",
        help="training epochs without --ckpt: N for every arch, ARCH=N for one",
    )
    p.add_argument(
        "--train-lr", nargs="+", default=["0.1", "resnet56=0.05"], metavar="LR|ARCH=LR", help="training lr"
    )
    p.add_argument("--reductions", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--criteria", nargs="+", default=list(PRUNING_CRITERIA), choices=PRUNING_CRITERIA)
    p.add_argument(
        "--variants", nargs="*", default=list(DEFAULT_VARIANTS), metavar="NAME=OPTION=VALUE[,OPTION=VALUE]"
    )
    p.add_argument(
        "--finetune",
        nargs="*",
        default=None,
        metavar="METHOD",
        help=f"methods that are also fine-tuned (default: the criteria and {', '.join(FINETUNED_VARIANTS)})",
    )
    p.add_argument("--tolerance", type=float, default=0.03, help="relative FLOPs tolerance")
    p.add_argument("--calib-size", type=int, default=128)
    p.add_argument("--bn-images", type=int, default=512, help="images re-estimating BN statistics")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--planted-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    p.add_argument("--quick", action="store_true", help="resnet20, 1 seed, 1 training and fine-tuning epoch")
    p.add_argument(
        "--work", default=os.path.expanduser("~/.cache/apib/quality"), help="cached models and cells"
    )
    p.add_argument("--report-only", action="store_true", help="tables from the cached cells; run nothing")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=RESULTS, help="results folder")
    args = p.parse_args(argv)
    if args.quick:
        args.archs, args.seeds, args.train_epochs, args.planted_seeds = ["resnet20"], [0], ["1"], [0, 1]
        args.finetune_epochs = min(args.finetune_epochs, 1)
    dataset = args.dataset or ("cifar10" if args.data_path else "digits")
    variants = dict(parse_variant(v) for v in args.variants)
    env = environment(args.device)
    start = time.perf_counter()
    outputs = []
    if "pruning" in args.tests:
        if any("=" not in item for item in args.ckpt):
            p.error(f"--ckpt takes ARCH=PATH pairs, got {args.ckpt}")
        ckpts = dict(item.split("=", 1) for item in args.ckpt)
        cfg = StudyConfig(
            archs=args.archs,
            dataset=dataset,
            data_path=args.data_path,
            ckpts=ckpts,
            train_epochs=_per_arch(p, "--train-epochs", args.train_epochs, args.archs, int),
            train_lr=_per_arch(p, "--train-lr", args.train_lr, args.archs, float),
            reductions=args.reductions,
            seeds=args.seeds,
            methods={**{c: {"criterion": c} for c in args.criteria}, **variants},
            finetune=[*args.criteria, *(v for v in FINETUNED_VARIANTS if v in variants)]
            if args.finetune is None
            else args.finetune,
            tolerance=args.tolerance,
            calib_size=args.calib_size,
            bn_images=args.bn_images,
            finetune_epochs=args.finetune_epochs,
            finetune_lr=args.finetune_lr,
            batch_size=args.batch_size,
            device=args.device,
            work=args.work,
        )
        stem = os.path.join(args.out, f"quality_{dataset}")
        result = run_study(cfg, on_progress=lambda r: write_study(r, env, stem), report_only=args.report_only)
        print(write_study(result, env, stem))
        outputs.append(stem + ".{md,json,png}")
    if "planted" in args.tests:
        t0 = time.perf_counter()
        criteria = [*args.criteria, "apib-std"] if "apib" in args.criteria else args.criteria
        result = run_planted(criteria, args.planted_seeds, variants=variants)
        result["time_s"] = time.perf_counter() - t0
        stem = os.path.join(args.out, "planted_signal")
        text = planted_markdown(result, env)
        write_atomic(stem + ".md", text)
        _write_json({"env": env, **result}, stem + ".json")
        print(text)
        outputs.append(stem + ".{md,json}")
    elapsed = time.perf_counter() - start
    print(f"{math.ceil(elapsed)}s -> " + ", ".join(outputs), file=sys.stderr)


if __name__ == "__main__":
    main()
