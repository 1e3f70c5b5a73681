"""The `apib` command: train, prune, finetune, eval.

    apib train --model resnet20 --dataset digits --epochs 5 --output runs/base
    apib prune --model resnet20 --dataset digits --ckpt runs/base/model.pt --flops-reduction 0.5 \\
        --finetune-epochs 2 --output runs/pruned
    apib eval --model resnet20 --dataset digits --pruned runs/pruned/pruned.pt

Every command writes its results atomically under --output: a checkpoint (loadable with
`torch.load(..., weights_only=True)`), `report.json`, and for `prune` a plot of the widths.
"""

import argparse
import json
import logging
import sys
import time

import torch

from apib import data
from apib.checkpoint import (
    atomic_path,
    from_checkpoint,
    load_checkpoint,
    load_pruned,
    save_pruned,
    write_atomic,
)
from apib.models import get_model, model_names
from apib.pruning import prune
from apib.train import evaluate, recalibrate_bn, train
from apib_kernels import KERNELS
from apib_kernels._validation import check_int, check_number

logger = logging.getLogger("apib")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=data.dataset_names())
    p.add_argument("--data-path", default=None, help="local dataset folder (not needed for digits)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="e.g. cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _train_args(p: argparse.ArgumentParser, epochs_flag: str, epochs_default: int) -> None:
    p.add_argument(epochs_flag, type=int, default=epochs_default, dest="epochs")
    p.add_argument("--lr", type=float, default=0.1, help="initial learning rate (cosine schedule)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apib", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from scratch")
    p.add_argument("--model", required=True, choices=model_names())
    _data_args(p)
    _train_args(p, "--epochs", 200)
    p.add_argument("--output", required=True, help="folder for model.pt and report.json")

    p = sub.add_parser("prune", help="prune a trained model with APIB to a FLOPs budget")
    p.add_argument("--model", required=True, choices=model_names())
    p.add_argument("--ckpt", default=None, help="trained weights (state dict); default: random weights")
    _data_args(p)
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--flops-reduction", type=float, help="fraction of FLOPs to remove, in (0, 1)")
    goal.add_argument("--flops-target", type=float, help="FLOPs to end at (flop_counter's count)")
    p.add_argument("--alpha", type=float, default=None, help="first penalty of the search (alpha0)")
    p.add_argument("--omega", type=int, default=1, help="fewest channels any layer keeps")
    p.add_argument("--tolerance", type=float, default=0.01, help="relative FLOPs tolerance")
    p.add_argument(
        "--calib-size", type=int, default=None, help="calibration images (default 128; 64 on imagenet)"
    )
    p.add_argument("--kernel", default="laplace", choices=sorted(k for k in KERNELS if k != "delta"))
    p.add_argument(
        "--unconstrained", action="store_true", help="allow negative coefficients (reference code)"
    )
    p.add_argument(
        "--bn-images",
        type=int,
        default=1024,
        help="training images re-estimating BN statistics after pruning (0: skip)",
    )
    _train_args(p, "--finetune-epochs", 0)
    p.add_argument("--output", required=True, help="folder for pruned.pt, report.json and widths.png")

    p = sub.add_parser("finetune", help="fine-tune a pruned model")
    p.add_argument("--pruned", required=True, help="a pruned.pt written by `apib prune`")
    _data_args(p)
    _train_args(p, "--epochs", 30)
    p.add_argument("--output", required=True, help="folder for pruned.pt and report.json")

    p = sub.add_parser("eval", help="top-1/top-5 of a trained or pruned model")
    p.add_argument("--model", choices=model_names(), help="architecture for --ckpt")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="trained weights (state dict)")
    src.add_argument("--pruned", help="a pruned.pt written by `apib prune`")
    _data_args(p)
    return parser


def _device(args) -> torch.device:
    if args.device is not None:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _loader(args, train_split: bool, augment: bool):
    ds = data.get_dataset(args.dataset, args.data_path, train=train_split, augment=augment)
    return data.loader(ds, args.batch_size, train=augment, num_workers=args.workers, seed=args.seed)


def _train_kwargs(args, device) -> dict:
    return {
        "lr": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "label_smoothing": args.label_smoothing,
        "device": device,
        "progress": not args.quiet,
    }


def _write_json(obj, path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def _plot_widths(layers: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = range(len(layers))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(layers)), 4))
    ax.bar(idx, [d["channels"] for d in layers], color="#c8d3e0", label="before")
    ax.bar(idx, [d["kept"] for d in layers], color="#2f6db5", label="kept by APIB")
    ax.set_xticks(list(idx), [d["name"] for d in layers], rotation=90, fontsize=7)
    ax.set_ylabel("channels")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def _cmd_train(args) -> dict:
    device = _device(args)
    torch.manual_seed(args.seed)
    model = get_model(args.model, num_classes=data.num_classes(args.dataset))
    val = _loader(args, False, False)
    history = train(
        model, _loader(args, True, True), args.epochs, val_loader=val, **_train_kwargs(args, device)
    )
    write_atomic(
        {"arch": args.model, "num_classes": data.num_classes(args.dataset), "state_dict": model.state_dict()},
        f"{args.output}/model.pt",
    )
    final = history[-1] if history else evaluate(model, val, device)
    report = {"model": args.model, "dataset": args.dataset, "epochs": args.epochs, "history": history}
    report.update(top1=final["top1"], top5=final["top5"])
    _write_json(report, f"{args.output}/report.json")
    print(f"{args.model} on {args.dataset}: top-1 {final['top1']:.2f}%  -> {args.output}/model.pt")
    return report


def _cmd_prune(args) -> dict:
    if args.alpha is not None:
        check_number(args.alpha, "--alpha", positive=True)
    check_int(args.bn_images, "--bn-images", 0)
    device = _device(args)
    torch.manual_seed(args.seed)
    classes = data.num_classes(args.dataset)
    model = get_model(args.model, num_classes=classes, pretrained_path=args.ckpt).to(device)
    if args.ckpt is None:
        logger.warning("no --ckpt given: pruning a randomly initialised %s", args.model)
    calib_size = args.calib_size or (64 if args.dataset == "imagenet" else 128)
    val = _loader(args, False, False)
    calib = _loader(args, True, False)  # un-augmented training images: calibration, then BN statistics
    progress = not args.quiet
    top1_before = evaluate(model, val, device, progress=progress)["top1"]
    result = prune(
        model,
        calib,
        flops_reduction=args.flops_reduction,
        flops_target=args.flops_target,
        alpha0=args.alpha,
        omega=args.omega,
        tolerance=args.tolerance,
        calib_size=calib_size,
        kernel=args.kernel,
        positive=not args.unconstrained,
        device=device,
        progress=progress,
    )
    pruned = result.model
    top1_pruned = evaluate(pruned, val, device, progress=progress)["top1"]
    report = {"model": args.model, "dataset": args.dataset, **result.to_dict()}
    report["top1_before"], report["top1_pruned"] = top1_before, top1_pruned
    if args.bn_images:
        recalibrate_bn(pruned, calib, args.bn_images, device)
        report["top1_recalibrated"] = evaluate(pruned, val, device, progress=progress)["top1"]
    if args.epochs:
        t0 = time.perf_counter()
        train(pruned, _loader(args, True, True), args.epochs, **_train_kwargs(args, device))
        report["time_s"]["finetune"] = time.perf_counter() - t0
    report["top1_after"] = evaluate(pruned, val, device, progress=progress)["top1"]
    save_pruned(pruned, f"{args.output}/pruned.pt", arch=args.model, num_classes=classes)
    _write_json(report, f"{args.output}/report.json")
    _plot_widths(report["layers"], f"{args.output}/widths.png")
    print(result.table())
    recal = f", {report['top1_recalibrated']:.2f}% with BN statistics re-estimated" if args.bn_images else ""
    print(
        f"top-1: {top1_before:.2f}% before, {top1_pruned:.2f}% right after pruning{recal}, "
        f"{report['top1_after']:.2f}% after {args.epochs} fine-tuning epoch(s)"
    )
    print(f"-> {args.output}/pruned.pt, report.json, widths.png")
    return report


def _cmd_finetune(args) -> dict:
    device = _device(args)
    torch.manual_seed(args.seed)
    ckpt = load_checkpoint(args.pruned)
    model = from_checkpoint(ckpt, path=args.pruned).to(device)
    val = _loader(args, False, False)
    before = evaluate(model, val, device)["top1"]
    history = train(
        model, _loader(args, True, True), args.epochs, val_loader=val, **_train_kwargs(args, device)
    )
    after = evaluate(model, val, device)["top1"]
    save_pruned(model, f"{args.output}/pruned.pt", arch=ckpt["arch"], num_classes=ckpt["num_classes"])
    report = {"pruned": args.pruned, "dataset": args.dataset, "top1_before": before, "top1_after": after}
    report["history"] = history
    _write_json(report, f"{args.output}/report.json")
    print(f"top-1 {before:.2f}% -> {after:.2f}% after {args.epochs} epoch(s) -> {args.output}/pruned.pt")
    return report


def _cmd_eval(args) -> dict:
    device = _device(args)
    if args.pruned is not None:
        model = load_pruned(args.pruned)
    else:
        if args.model is None:
            raise ValueError("--model is required with --ckpt (the architecture of the weights)")
        model = get_model(args.model, num_classes=data.num_classes(args.dataset), pretrained_path=args.ckpt)
    result = evaluate(model.to(device), _loader(args, False, False), device, progress=not args.quiet)
    print(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}")
    return result


_COMMANDS = {"train": _cmd_train, "prune": _cmd_prune, "finetune": _cmd_finetune, "eval": _cmd_eval}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        _COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"apib {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
