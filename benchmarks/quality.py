"""Selection quality: does APIB keep better channels than L1, FPGM, HRank, CHIP and random? Two tests.

1. Pruning quality. One trained model (ResNet-20 on the embedded digits by default; CIFAR-10 when
   --data-path is given; --ckpt loads weights instead of training) is pruned by every criterion to the
   same FLOPs, through the same layers and surgery (`apib.prune`). Top-1 is measured right after pruning,
   after re-estimating the BatchNorm statistics alone (no weight changes; see `recalibrate_bn`), and
   after the same short fine-tune, over several seeds; a seed fixes the calibration images (128
   un-augmented training images, drawn in the seed's order), the images of the BN re-estimation, the
   random criterion and the fine-tune's data order. APIB sets per-layer widths under one global
   penalty; the baselines share one pruning ratio over all layers (as their papers do), so their
   achieved FLOPs reduction is reported beside the target.
2. Planted signal. Synthetic maps X (n, C, H, W) = ReLU(producer conv) where the next layer's output
   Y = ReLU(conv(X[:, S])) + noise reads only the k channels S. Every channel is made from its own
   random input map (a depthwise producer), so channels outside S are independent of Y and the truth
   is well defined. Problems add: per-channel scales spread log-normally (as BN scales spread in
   trained networks), "loud" noise channels (producer filters LOUD_GAIN times larger: large weights and
   large maps, bait for magnitude criteria), and near-duplicates of signal channels (same input map,
   slightly perturbed: redundancy). Each criterion keeps k channels; a signal channel and its
   duplicates form one group, so recall = signal groups hit / k and precision = kept channels that
   belong to any signal group / k (precision − recall = redundant picks / k). APIB is
   `hsic_lasso(x, y, n_select=k)` with the pipeline's defaults; the diagnostic row "apib-std" runs it
   on maps divided by each channel's standard deviation (not what `prune` does).

    python benchmarks/quality.py            # resnet20 on digits, seeds 0 1 2, both tests
    python benchmarks/quality.py --quick    # seed 0, 1 training epoch, 1 fine-tuning epoch, 2 planted seeds
    python benchmarks/quality.py --data-path ~/data/cifar10 --ckpt resnet20.pt --tests pruning

Writes, atomically under --out (benchmarks/results/): quality_<model>_<dataset>.{md,json,png} and
planted_signal.{md,json}, each with the device, versions and commit.
"""

import argparse
import copy
import functools
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from common import RESULTS, environment, write_atomic

from apib import data
from apib.criteria import CRITERIA, keep_indices
from apib.io import atomic_path
from apib.models import get_model, model_names
from apib.pruning import prune
from apib.train import evaluate, recalibrate_bn, train
from apib_kernels import hsic_lasso

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


PROBLEMS = {
    "easy": PlantedConfig(),
    "scaled": PlantedConfig(spread=0.5),
    "loud": PlantedConfig(loud=6),
    "duplicates": PlantedConfig(duplicates=3),
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


def planted_keep(problem: Planted, criterion: str, seed: int) -> torch.Tensor:
    """(k,) int64: the channels `criterion` keeps on `problem` (see PLANTED_CRITERIA)."""
    x, k = problem.maps, problem.k
    if criterion == "apib":
        return hsic_lasso(x, problem.output, n_select=k).selected
    if criterion == "apib-std":
        scale = x.transpose(0, 1).flatten(1).std(1).clamp_min(1e-12)
        return hsic_lasso(x / scale.view(1, -1, 1, 1), problem.output, n_select=k).selected
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


def run_planted(criteria, seeds, problems: dict[str, PlantedConfig] = PROBLEMS) -> dict:
    """Every criterion on every problem and seed. Returns {"problems", "seeds", "runs", "summary"}:
    runs one row per (problem, criterion, seed) with the kept channels and precision_recall's
    metrics; summary their mean and std over seeds per (problem, criterion)."""
    criteria, seeds = _check_criteria(criteria, PLANTED_CRITERIA), _check_seeds(seeds)
    runs = []
    for name, cfg in problems.items():
        for seed in seeds:
            problem = planted_problem(cfg, seed)
            for criterion in criteria:
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
            f"{cfg['duplicates']} duplicates"
        )
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


@dataclass(frozen=True)
class PruningConfig:
    model: str
    dataset: str
    data_path: str | None
    ckpt: str | None
    train_epochs: int
    seeds: list[int]
    criteria: list[str]
    flops_reduction: float
    tolerance: float
    calib_size: int
    bn_images: int
    finetune_epochs: int
    finetune_lr: float
    batch_size: int
    device: str


def _base_model(cfg: PruningConfig, device: torch.device, train_set, val) -> tuple[torch.nn.Module, dict]:
    """The model every criterion prunes: --ckpt's weights, or trained here (seed 0, lr 0.1)."""
    torch.manual_seed(0)
    model = get_model(cfg.model, data.num_classes(cfg.dataset), pretrained_path=cfg.ckpt).to(device)
    info = {"ckpt": cfg.ckpt, "train_epochs": 0 if cfg.ckpt else cfg.train_epochs, "train_s": 0.0}
    if info["train_epochs"]:
        t0 = time.perf_counter()
        train(
            model,
            data.loader(train_set(), cfg.batch_size, train=True, seed=0),
            cfg.train_epochs,
            device=device,
            progress=False,
        )
        info["train_s"] = time.perf_counter() - t0
    info["top1"] = evaluate(model, val, device)["top1"]
    return model.eval(), info


def run_pruning(cfg: PruningConfig, log=print) -> dict:
    """Every criterion prunes the same base model on every seed. Returns {"config", "base", "runs",
    "summary"}: one run per (criterion, seed); summary per criterion (means and stds over seeds)."""
    _check_criteria(cfg.criteria, PRUNING_CRITERIA)
    _check_seeds(cfg.seeds)
    for name in ("train_epochs", "finetune_epochs"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.bn_images < 2:
        raise ValueError(f"bn_images must be >= 2 (BatchNorm statistics need a batch), got {cfg.bn_images}")
    device = torch.device(cfg.device)
    val = data.loader(data.get_dataset(cfg.dataset, cfg.data_path, train=False), 256, train=False)
    calib_ds = data.get_dataset(cfg.dataset, cfg.data_path, train=True, augment=False)
    # The augmented training split, read only if something trains (reading it takes seconds).
    train_set = functools.cache(
        lambda: data.get_dataset(cfg.dataset, cfg.data_path, train=True, augment=True)
    )
    model, base = _base_model(cfg, device, train_set, val)
    log(f"base {cfg.model} on {cfg.dataset}: top-1 {base['top1']:.2f}% ({base['train_s']:.0f}s training)")
    runs = []
    for criterion in cfg.criteria:
        for seed in cfg.seeds:
            t0 = time.perf_counter()
            result = prune(
                model,
                data.loader(calib_ds, cfg.calib_size, train=True, seed=seed),
                flops_reduction=cfg.flops_reduction,
                criterion=criterion,
                tolerance=cfg.tolerance,
                calib_size=cfg.calib_size,
                seed=seed,
                device=device,
                progress=False,
            )
            prune_s = time.perf_counter() - t0
            pruned = result.model
            top1_pruned = top1_tuned = evaluate(pruned, val, device)["top1"]
            bn_loader = data.loader(calib_ds, cfg.batch_size, train=True, seed=seed)
            top1_bn = evaluate(
                recalibrate_bn(copy.deepcopy(pruned), bn_loader, cfg.bn_images, device), val, device
            )["top1"]
            t0 = time.perf_counter()
            if cfg.finetune_epochs:
                torch.manual_seed(seed)
                tune = data.loader(train_set(), cfg.batch_size, train=True, seed=seed)
                train(pruned, tune, cfg.finetune_epochs, lr=cfg.finetune_lr, device=device, progress=False)
                top1_tuned = evaluate(pruned, val, device)["top1"]
            finetune_s = time.perf_counter() - t0
            log(
                f"{criterion:>6} seed {seed}: -{100 * result.flops_reduction:.1f}% FLOPs, top-1 "
                f"{top1_pruned:.2f}% pruned, {top1_bn:.2f}% BN re-estimated, {top1_tuned:.2f}% fine-tuned "
                f"({prune_s + finetune_s:.0f}s)"
            )
            runs.append(
                {
                    "criterion": criterion,
                    "seed": seed,
                    "flops_before": result.flops_before,
                    "flops_after": result.flops_after,
                    "flops_reduction": result.flops_reduction,
                    "params_before": result.params_before,
                    "params_after": result.params_after,
                    "widths": [d.n_kept for d in result.layers],
                    "top1_pruned": top1_pruned,
                    "top1_bn": top1_bn,
                    "top1_finetuned": top1_tuned,
                    "prune_s": prune_s,
                    "finetune_s": finetune_s,
                }
            )
    summary = []
    for criterion in cfg.criteria:
        rows = [r for r in runs if r["criterion"] == criterion]
        entry = {"criterion": criterion, "seeds": len(rows)}
        for metric in ("flops_reduction", "params_after", "top1_pruned", "top1_bn", "top1_finetuned"):
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = _mean_std([r[metric] for r in rows])
        summary.append(entry)
    base.update(flops=runs[0]["flops_before"], params=runs[0]["params_before"])
    return {"config": asdict(cfg), "base": base, "runs": runs, "summary": summary}


def pruning_markdown(result: dict, env: dict) -> str:
    cfg, base = result["config"], result["base"]
    origin = f"--ckpt {cfg['ckpt']}" if cfg["ckpt"] else f"trained here for {base['train_epochs']} epoch(s)"
    lines = [
        f"# Pruning quality: {cfg['model']} on {cfg['dataset']}",
        "",
        _env_line(env),
        "",
        f"Base model ({origin}): top-1 {base['top1']:.2f}%, {base['flops'] / 1e6:.2f}M FLOPs, "
        f"{base['params'] / 1e6:.3f}M params. Target FLOPs reduction {cfg['flops_reduction']:g} "
        f"(tolerance {cfg['tolerance']:g}); calibration {cfg['calib_size']} un-augmented training images "
        f"in each seed's order; BN statistics re-estimated on {cfg['bn_images']} training images; "
        f"fine-tune {cfg['finetune_epochs']} epoch(s), lr {cfg['finetune_lr']:g} (cosine), batch "
        f"{cfg['batch_size']}; seeds {', '.join(map(str, cfg['seeds']))}; mean ± std over seeds.",
        "",
        "| criterion | FLOPs reduction | params | top-1 after pruning (%) | top-1 after BN re-estimation (%) "
        "| top-1 after fine-tune (%) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in result["summary"]:
        lines.append(
            f"| {s['criterion']} | {100 * s['flops_reduction_mean']:.1f}% "
            f"| {s['params_after_mean'] / 1e6:.3f}M "
            f"| {s['top1_pruned_mean']:.2f} ± {s['top1_pruned_std']:.2f} "
            f"| {s['top1_bn_mean']:.2f} ± {s['top1_bn_std']:.2f} "
            f"| {s['top1_finetuned_mean']:.2f} ± {s['top1_finetuned_std']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def pruning_plot(result: dict, path: str) -> None:
    """Bars per criterion: top-1 after pruning, after BN re-estimation and after fine-tuning (error bars:
    std over seeds),
    with the unpruned model's top-1 as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, cfg = result["summary"], result["config"]
    idx = range(len(summary))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(summary)) + 2.5, 4))
    for offset, key, label, color in (
        (-0.27, "top1_pruned", "after pruning", "#c8d3e0"),
        (0.0, "top1_bn", "BN statistics re-estimated", "#8fb0d8"),
        (0.27, "top1_finetuned", f"after {cfg['finetune_epochs']} fine-tune epoch(s)", "#2f6db5"),
    ):
        ax.bar(
            [i + offset for i in idx],
            [s[f"{key}_mean"] for s in summary],
            0.27,
            yerr=[s[f"{key}_std"] for s in summary],
            capsize=3,
            color=color,
            label=label,
        )
    ax.axhline(result["base"]["top1"], color="k", linestyle="--", linewidth=1, label="unpruned")
    ax.set_xticks(list(idx), [s["criterion"] for s in summary])
    ax.set_ylabel("top-1 (%)")
    ax.set_title(
        f"{cfg['model']} on {cfg['dataset']}, -{100 * cfg['flops_reduction']:.0f}% FLOPs, "
        f"{len(cfg['seeds'])} seed(s)"
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tests", nargs="+", choices=TESTS, default=list(TESTS), help="which tests to run")
    p.add_argument("--model", default="resnet20", choices=model_names())
    p.add_argument(
        "--dataset", default=None, choices=data.dataset_names(), help="digits, or cifar10 with --data-path"
    )
    p.add_argument("--data-path", default=None, help="local dataset folder (not for digits)")
    p.add_argument("--ckpt", default=None, help="trained weights to prune (default: train here)")
    p.add_argument("--train-epochs", type=int, default=5, help="training epochs without --ckpt (lr 0.1)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--criteria", nargs="+", default=list(PRUNING_CRITERIA), choices=PRUNING_CRITERIA)
    p.add_argument("--flops-reduction", type=float, default=0.5)
    p.add_argument("--tolerance", type=float, default=0.03, help="relative FLOPs tolerance")
    p.add_argument("--calib-size", type=int, default=128)
    p.add_argument("--bn-images", type=int, default=1024, help="images re-estimating BN statistics")
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--planted-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--quick", action="store_true", help="1 seed and epoch, 2 planted seeds: a fast check")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=RESULTS, help="results folder")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.train_epochs, args.planted_seeds = [0], 1, [0, 1]
        args.finetune_epochs = min(args.finetune_epochs, 1)
    dataset = args.dataset or ("cifar10" if args.data_path else "digits")
    env = environment(args.device)
    start = time.perf_counter()
    outputs = []
    if "pruning" in args.tests:
        cfg = PruningConfig(
            model=args.model,
            dataset=dataset,
            data_path=args.data_path,
            ckpt=args.ckpt,
            train_epochs=args.train_epochs,
            seeds=args.seeds,
            criteria=args.criteria,
            flops_reduction=args.flops_reduction,
            tolerance=args.tolerance,
            calib_size=args.calib_size,
            bn_images=args.bn_images,
            finetune_epochs=args.finetune_epochs,
            finetune_lr=args.finetune_lr,
            batch_size=args.batch_size,
            device=args.device,
        )
        result = run_pruning(cfg)
        result["time_s"] = time.perf_counter() - start
        stem = os.path.join(args.out, f"quality_{args.model}_{dataset}")
        text = pruning_markdown(result, env)
        write_atomic(stem + ".md", text)
        _write_json({"env": env, **result}, stem + ".json")
        pruning_plot(result, stem + ".png")
        print(text)
        outputs.append(stem + ".{md,json,png}")
    if "planted" in args.tests:
        t0 = time.perf_counter()
        criteria = [*args.criteria, "apib-std"] if "apib" in args.criteria else args.criteria
        result = run_planted(criteria, args.planted_seeds)
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
