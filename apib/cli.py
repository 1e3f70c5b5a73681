"""The `apib` command: train, prune, finetune, eval.

    apib train --model resnet20 --dataset digits --epochs 5 --output runs/base
    apib prune --model resnet20 --dataset digits --ckpt runs/base/model.pt --flops-reduction 0.5 \\
        --finetune-epochs 2 --output runs/pruned
    apib eval --model resnet20 --dataset digits --pruned runs/pruned/pruned.pt

Every command that writes fills --output as a whole or not at all: a checkpoint (loadable with
`torch.load(..., weights_only=True)`), `report.json` (with every setting the run used), and for `prune`
a plot of the widths. An existing non-empty --output is replaced only with --overwrite, and never when
it holds one of the run's inputs.

`apib prune` also runs under torchrun (`torchrun --nproc-per-node=N -m apib.cli prune ...`): every
process calibrates on its own contiguous shard of --calib-size / N images, made of whole blocks of
--block-size images (--calib-size a multiple of N × --block-size), the statistics are summed, every
process reaches the same decisions, and rank 0 alone evaluates, fine-tunes (--finetune-epochs), writes
--output and prints; the other processes end after the decision.

Expected failures (bad arguments or files, mismatched checkpoints, unusable devices, permissions) print
one line and exit with status 2; Ctrl-C exits with 130, SIGTERM with 143. --debug adds the traceback.
"""

import argparse
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager, nullcontext
from importlib import metadata
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import Subset

from apib import data
from apib.checkpoint import from_checkpoint, save_pruned
from apib.criteria import CRITERIA
from apib.io import load_checkpoint
from apib.models import get_model, model_names
from apib.options import ALLOCATIONS, BANDWIDTHS, DEFAULT_PRESET, PENALTY_SCALES, PRESETS, TARGETS
from apib.output import OutputFolder
from apib.pruning import prune
from apib.streaming import distributed, is_main_process
from apib.train import evaluate, recalibrate_bn, train
from apib_kernels import KERNELS
from apib_kernels.validation import check_int, check_number

logger = logging.getLogger("apib")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=data.dataset_names())
    p.add_argument("--data-path", default=None, help="local dataset folder (not needed for digits)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="e.g. cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error")


def _train_args(p: argparse.ArgumentParser, epochs_flag: str, epochs_default: int) -> None:
    p.add_argument(epochs_flag, type=int, default=epochs_default, dest="epochs")
    p.set_defaults(epochs_flag=epochs_flag)
    p.add_argument("--lr", type=float, default=0.1, help="initial learning rate (cosine schedule)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.0)


def _output_args(p: argparse.ArgumentParser, files: str) -> None:
    p.add_argument("--output", required=True, help=f"folder for {files}, written whole when the run ends")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a previous run in --output (not one of its inputs)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apib", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from scratch")
    p.add_argument("--model", required=True, choices=model_names())
    _data_args(p)
    _train_args(p, "--epochs", 200)
    _output_args(p, "model.pt and report.json")

    p = sub.add_parser("prune", help="prune a trained model to a FLOPs budget (APIB or a baseline)")
    p.add_argument("--model", required=True, choices=model_names())
    p.add_argument("--ckpt", default=None, help="trained weights (state dict); default: random weights")
    _data_args(p)
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--flops-reduction", type=float, help="fraction of FLOPs to remove, in (0, 1)")
    goal.add_argument("--flops-target", type=float, help="FLOPs to end at (flop_counter's count)")
    p.add_argument(
        "--criterion",
        default="apib",
        choices=["apib", *CRITERIA],
        help="how channels are scored (default apib)",
    )
    p.add_argument(
        "--allocation",
        default=None,
        choices=ALLOCATIONS,
        help="how many channels each layer keeps: penalty (APIB's global search; apib only), uniform (one "
        "ratio), threshold (one global threshold); default: the preset's for apib, uniform otherwise",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="first penalty of the search (alpha0; with --penalty-scale layer, a fraction of alpha_max)",
    )
    p.add_argument("--omega", type=int, default=1, help="fewest channels any layer keeps")
    p.add_argument("--tolerance", type=float, default=0.01, help="relative FLOPs tolerance")
    p.add_argument(
        "--calib-size", type=int, default=None, help="calibration images (default 128; 64 on imagenet)"
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=128,
        help="calibration images per statistics block: memory holds one block (default 128)",
    )
    p.add_argument(
        "--preset",
        default=None,
        choices=sorted(PRESETS),
        help="a named configuration of APIB's options below, each overridden when given "
        f"(default: {DEFAULT_PRESET})",
    )
    p.add_argument(
        "--kernel",
        default=None,
        choices=sorted(k for k in KERNELS if k != "delta"),
        help="Gram kernel (preset paper: laplace)",
    )
    p.add_argument(
        "--unconstrained",
        action="store_const",
        const=False,
        default=None,
        dest="positive",
        help="allow negative coefficients (reference code; the default preset's ranking)",
    )
    p.add_argument(
        "--target",
        default=None,
        choices=TARGETS,
        help="Y: each layer's output or the class labels (paper: output)",
    )
    p.add_argument(
        "--penalty-scale",
        default=None,
        choices=PENALTY_SCALES,
        help="global: one penalty for every layer (paper); layer: a fraction of each layer's alpha_max",
    )
    p.add_argument(
        "--bandwidth",
        default=None,
        choices=BANDWIDTHS,
        help="input kernel bandwidth: paper (fixed gamma) or median (each channel's median distance)",
    )
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Frobenius-normalise the centered Grams (paper: no)",
    )
    p.add_argument(
        "--prune-residual",
        action="store_true",
        help="also prune residual streams, scored over all their consumers (beyond the paper's policy)",
    )
    p.add_argument(
        "--bn-images",
        type=int,
        default=1024,
        help="training images re-estimating BN statistics after pruning (0: skip)",
    )
    _train_args(p, "--finetune-epochs", 0)
    _output_args(p, "pruned.pt, report.json and widths.png")

    p = sub.add_parser("finetune", help="fine-tune a pruned model")
    p.add_argument("--pruned", required=True, help="a pruned.pt written by `apib prune`")
    _data_args(p)
    _train_args(p, "--epochs", 30)
    _output_args(p, "pruned.pt and report.json")

    p = sub.add_parser("eval", help="top-1/top-5 of a trained or pruned model")
    p.add_argument("--model", choices=model_names(), help="architecture for --ckpt")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="trained weights (state dict)")
    src.add_argument("--pruned", help="a pruned.pt written by `apib prune`")
    _data_args(p)
    return parser


def _check_args(args, world: int) -> None:
    """Every argument that can be checked without reading a file, so that no mistake surfaces only
    after hours of work (and every process of a torchrun of `world` processes finds the same mistakes,
    before any waits for the others); fills in the dataset-dependent default of --calib-size."""
    if world > 1 and args.command != "prune":
        raise ValueError(
            f"apib {args.command} runs in one process; under torchrun ({world} processes) only prune runs"
        )
    check_int(args.batch_size, "--batch-size", 1)
    check_int(args.workers, "--workers", 0)
    check_int(args.seed, "--seed", 0, 2**63 - 1)
    if args.command == "eval":
        if args.ckpt is not None and args.model is None:
            raise ValueError("--model is required with --ckpt (the architecture of the weights)")
        return
    check_int(args.epochs, args.epochs_flag, 0)
    check_number(args.lr, "--lr", positive=True)
    check_number(args.momentum, "--momentum", below=1)
    check_number(args.weight_decay, "--weight-decay")
    check_number(args.label_smoothing, "--label-smoothing", below=1)
    if args.command == "prune":
        if args.flops_reduction is not None:
            check_number(args.flops_reduction, "--flops-reduction", positive=True, below=1)
        else:
            check_number(args.flops_target, "--flops-target", positive=True)
        if args.alpha is not None:
            check_number(args.alpha, "--alpha", positive=True)
        check_int(args.omega, "--omega", 1)
        check_number(args.tolerance, "--tolerance", positive=True, below=1)
        if args.calib_size is None:
            args.calib_size = 64 if args.dataset == "imagenet" else 128
        check_int(args.calib_size, "--calib-size", 2)
        check_int(args.block_size, "--block-size", 2)
        if world > 1:
            _check_calibration_shards(args.calib_size, args.block_size, world)
        check_int(args.bn_images, "--bn-images", 0)
        if args.allocation == "penalty" and args.criterion != "apib":
            raise ValueError(
                f"--allocation penalty searches the HSIC Lasso's penalty and needs --criterion apib, got "
                f"--criterion {args.criterion}: use --allocation uniform or threshold"
            )
        if args.bandwidth == "median" and args.kernel == "linear":
            raise ValueError(
                "--bandwidth median sets a kernel's bandwidth and needs --kernel laplace or gaussian, got "
                "--kernel linear, which has none"
            )


def _check_calibration_shards(calib_size: int, block_size: int, world: int) -> None:
    """Under torchrun, the calibration set (the first --calib-size images) is cut into `world`
    contiguous shards of as many whole blocks, one per process in rank order: the blocks of one process
    over the same images."""
    step = world * block_size
    if calib_size % step:
        hint = f", or a --block-size that divides {calib_size // world}" if calib_size % world == 0 else ""
        raise ValueError(
            f"--calib-size {calib_size} cannot be cut into {world} equal shards of whole --block-size "
            f"{block_size} blocks, one per torchrun process: pass a --calib-size that is a multiple of "
            f"{step} ({world} processes × --block-size){hint}"
        )


def _torchrun() -> tuple[int, int]:
    """(rank, number of processes) of this process as torchrun's environment gives them: (0, 1) outside
    torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _device(spec: str | None, world: int) -> torch.device:
    """The --device, checked by allocating on it: an unknown name, a CUDA device on a machine without
    one, or a GPU index past the last all fail here rather than at the first batch. Under torchrun
    (`world` > 1) each process takes the GPU of its LOCAL_RANK."""
    if spec is None:
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
        if world > 1 and device.type == "cuda":
            if device.index is not None:
                raise ValueError(
                    "under torchrun every process takes the GPU of its LOCAL_RANK: pass --device cuda"
                )
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.type == "meta":
            raise ValueError("the meta device holds no data")
        torch.empty(1, device=device)
    except Exception as err:  # torch raises RuntimeError, AssertionError, ... by backend
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"--device {spec!r} is not usable here: {reason}") from err
    return device


def _loader(args, train_split: bool, augment: bool, classes: int, shard: range | None = None):
    """Batches of the dataset's split (only the images of the calibration `shard`, when given), for a
    model with `classes` outputs."""
    ds = data.get_dataset(args.dataset, args.data_path, train=train_split, augment=augment)
    found = len(getattr(ds, "classes", None) or ())
    if found > classes:
        raise ValueError(
            f"--data-path {args.data_path!r} has {found} classes, more than the model's {classes} outputs"
        )
    if shard is not None:
        if args.calib_size > len(ds):  # not shard.stop: every process fails alike
            raise ValueError(
                f"--calib-size {args.calib_size} is more than the {len(ds)} training images of --dataset "
                f"{args.dataset}: under torchrun every process needs a whole shard"
            )
        ds = Subset(ds, shard)
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


def _write_json(obj, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _run_record(args, device: torch.device) -> dict:
    """What a report records about how it was made: every setting, the device, versions, commit."""
    settings = {k: v for k, v in vars(args).items() if k not in ("command", "epochs_flag", "quiet", "debug")}
    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("apib-kernels", "torchvision", "torch-pruning", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "command": args.command,
        "settings": settings,
        "device": str(device),
        "processes": dist.get_world_size() if distributed() else 1,
        "versions": versions,
        "commit": _source_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def _source_commit() -> str | None:
    """The git commit of the apib sources running (with -dirty for local changes), when they are a
    checkout; None for an installed copy."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cmd_train(args, device: torch.device, out: OutputFolder) -> dict:
    torch.manual_seed(args.seed)
    classes = data.num_classes(args.dataset)
    model = get_model(args.model, num_classes=classes)
    training, val = _loader(args, True, True, classes), _loader(args, False, False, classes)
    history = train(model, training, args.epochs, val_loader=val, **_train_kwargs(args, device))
    torch.save(
        {"arch": args.model, "num_classes": classes, "state_dict": model.state_dict()}, out / "model.pt"
    )
    final = history[-1] if history else evaluate(model, val, device)
    report = {"model": args.model, "dataset": args.dataset, "epochs": args.epochs, "history": history}
    report.update(top1=final["top1"], top5=final["top5"], run=_run_record(args, device))
    _write_json(report, out / "report.json")
    print(f"{args.model} on {args.dataset}: top-1 {final['top1']:.2f}%  -> {args.output}/model.pt")
    return report


def _cmd_prune(args, device: torch.device, out: OutputFolder | None) -> dict | None:
    """Prunes; `out` is None on the processes of a torchrun other than rank 0, which end after the
    decision (returning None)."""
    torch.manual_seed(args.seed)
    classes = data.num_classes(args.dataset)
    model = get_model(args.model, num_classes=classes, pretrained_path=args.ckpt).to(device)
    if args.ckpt is None:
        logger.warning("no --ckpt given: pruning a randomly initialised %s", args.model)
    val = _loader(args, False, False, classes)
    calib = _loader(args, True, False, classes)  # un-augmented training images: calibration, BN statistics
    training = _loader(args, True, True, classes) if args.epochs else None
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed() else (0, 1)
    per_process = args.calib_size // world
    shard = range(rank * per_process, (rank + 1) * per_process)
    progress = not args.quiet
    # Pruning comes first: it checks the FLOPs target before anything slow (prune leaves `model` as is).
    result = prune(
        model,
        calib if world == 1 else _loader(args, True, False, classes, shard),
        flops_reduction=args.flops_reduction,
        flops_target=args.flops_target,
        criterion=args.criterion,
        allocation=args.allocation,
        alpha0=args.alpha,
        omega=args.omega,
        tolerance=args.tolerance,
        calib_size=per_process,
        block_size=args.block_size,
        kernel=args.kernel,
        positive=args.positive,
        target=args.target,
        penalty_scale=args.penalty_scale,
        bandwidth=args.bandwidth,
        normalize=args.normalize,
        preset=args.preset,
        prune_residual=args.prune_residual,
        device=device,
        progress=progress,
    )
    if out is None:
        return None
    # the report's settings are those in force: options left to the preset hold the preset's values
    vars(args).update({k: v for k, v in result.options.items() if k in vars(args)})
    top1_before = evaluate(model, val, device, progress=progress)["top1"]
    pruned = result.model
    top1_pruned = evaluate(pruned, val, device, progress=progress)["top1"]
    report = {"model": args.model, "dataset": args.dataset, **result.to_dict()}
    report["top1_before"], report["top1_pruned"] = top1_before, top1_pruned
    if args.bn_images:
        recalibrate_bn(pruned, calib, args.bn_images, device)
        report["top1_recalibrated"] = evaluate(pruned, val, device, progress=progress)["top1"]
    if args.epochs:
        t0 = time.perf_counter()
        train(pruned, training, args.epochs, **_train_kwargs(args, device))
        report["time_s"]["finetune"] = time.perf_counter() - t0
    report["top1_after"] = evaluate(pruned, val, device, progress=progress)["top1"]
    report["run"] = _run_record(args, device)
    save_pruned(pruned, out / "pruned.pt", arch=args.model, num_classes=classes)
    _write_json(report, out / "report.json")
    _plot_widths(report["layers"], out / "widths.png")
    print(result.table())
    recal = f", {report['top1_recalibrated']:.2f}% with BN statistics re-estimated" if args.bn_images else ""
    print(
        f"top-1: {top1_before:.2f}% before, {top1_pruned:.2f}% right after pruning{recal}, "
        f"{report['top1_after']:.2f}% after {args.epochs} fine-tuning epoch(s)"
    )
    print(f"-> {args.output}/pruned.pt, report.json, widths.png")
    return report


def _load_pruned(args):
    """The --pruned model and its checkpoint, checked against --dataset's class count."""
    ckpt = load_checkpoint(args.pruned)
    model = from_checkpoint(ckpt, path=args.pruned)
    classes = data.num_classes(args.dataset)
    if ckpt["num_classes"] != classes:
        raise ValueError(
            f"--pruned {args.pruned!r} is a model for {ckpt['num_classes']} classes; "
            f"--dataset {args.dataset} has {classes}"
        )
    return model, ckpt


def _cmd_finetune(args, device: torch.device, out: OutputFolder) -> dict:
    torch.manual_seed(args.seed)
    model, ckpt = _load_pruned(args)
    model.to(device)
    classes = ckpt["num_classes"]
    training, val = _loader(args, True, True, classes), _loader(args, False, False, classes)
    before = evaluate(model, val, device)["top1"]
    history = train(model, training, args.epochs, val_loader=val, **_train_kwargs(args, device))
    after = evaluate(model, val, device)["top1"]
    save_pruned(model, out / "pruned.pt", arch=ckpt["arch"], num_classes=classes)
    report = {"pruned": args.pruned, "dataset": args.dataset, "top1_before": before, "top1_after": after}
    report.update(history=history, run=_run_record(args, device))
    _write_json(report, out / "report.json")
    print(f"top-1 {before:.2f}% -> {after:.2f}% after {args.epochs} epoch(s) -> {args.output}/pruned.pt")
    return report


def _cmd_eval(args, device: torch.device, out: None) -> dict:
    classes = data.num_classes(args.dataset)
    if args.pruned is not None:
        model, _ = _load_pruned(args)
    else:
        model = get_model(args.model, num_classes=classes, pretrained_path=args.ckpt)
    loader = _loader(args, False, False, classes)
    result = evaluate(model.to(device), loader, device, progress=not args.quiet)
    print(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}")
    return result


_COMMANDS = {"train": _cmd_train, "prune": _cmd_prune, "finetune": _cmd_finetune, "eval": _cmd_eval}
# The failures a user can cause (arguments, files, devices, permissions, a full disk or GPU); anything
# else is a bug and keeps its traceback.
_EXPECTED = (ValueError, OSError, torch.OutOfMemoryError)


class _Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that the output folder is cleaned up on the way out."""


def _raise_terminated(signum, frame):
    raise _Terminated


@contextmanager
def _sigterm_raises():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextmanager
def _process_group(world: int, device: torch.device):
    """torchrun's default process group for the run, destroyed at its end: gloo on the CPU; on GPUs
    nccl, with gloo beside it for the few numbers the processes compare. Nothing outside torchrun."""
    if world == 1:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def _run(args) -> None:
    _, world = _torchrun()
    _check_args(args, world)
    inputs = {f"--{k.replace('_', '-')}": getattr(args, k, None) for k in ("ckpt", "pruned", "data_path")}
    # Every process checks --output (a few reads, the same everywhere) before any waits for the others;
    # only rank 0 writes it.
    folder = (
        OutputFolder(args.output, overwrite=args.overwrite, inputs=inputs) if args.command != "eval" else None
    )
    device = _device(args.device, world)
    with _process_group(world, device):
        with folder if folder is not None and is_main_process() else nullcontext() as out:
            _COMMANDS[args.command](args, device, out)


def _one_line(err: BaseException) -> str:
    """The message of `err` on one line. An error in a DataLoader worker is re-raised here with the
    worker's traceback in its message, which ends with the original error, "Type: message"."""
    text = str(err).strip()
    lines = text.splitlines() or [type(err).__name__]
    return (lines[-1].partition(": ")[2] or lines[-1]) if "Original Traceback" in text else lines[0]


def _fail(args, message: str, code: int) -> int:
    if args.debug:
        traceback.print_exc()
    print(f"apib {args.command}: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    rank, _ = _torchrun()
    level = logging.WARNING if args.quiet else logging.INFO
    # Under torchrun the other processes repeat rank 0's messages: they log only errors.
    logging.basicConfig(level=level if rank == 0 else logging.ERROR, format="%(levelname)s %(message)s")
    try:
        with _sigterm_raises():
            _run(args)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", 130)
    except _Terminated:
        return _fail(args, "terminated", 143)
    except _EXPECTED as err:
        return _fail(args, f"error: {_one_line(err)}", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
