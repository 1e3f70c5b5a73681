"""The paper's Table 2 on this machine: seconds to choose ResNet-50's channels at 76% FLOPs reduction.

Every method is one `apib.prune` call on the same model and the same images, one after the other on one
device. Its time is the sum of prune's phase timings except "surgery": from the loaded model to the
chosen channels — setup (model copy, dependency graph, FLOPs count), then calibration + statistics +
the complete global penalty search for APIB, or scoring + the uniform-ratio search for a baseline.

Protocols (the paper's Table 2): L1 and FPGM read only the weights. APIB uses n = 64 calibration images (the
paper's ImageNet protocol, "APIB") and n = 128 ("APIB-128"). HRank and CHIP score 640 images in 5
batches of 128; "HRank"/"CHIP" run the published loops (mode "faithful": the forward pass re-run per
layer, one rank or nuclear norm per image and channel), "HRank-fast"/"CHIP-fast" our batched routes.

--quick (for CPUs) gives HRank and CHIP --images images (default 8) in one batch, and scales only the
image-dependent phase to the protocol's 640 images:  T = setup + scoring × 640 / N + search.
CHIP's faithful loop copies the whole batch for every (image, channel) pair, so its cost per image
grows with the batch size and this linear estimate from a batch of N < 128 is too low; the notes add
the missing copies (elements from the layer shapes, rate from a timed copy of one 128-image batch).

Random normal images (seeded) unless --data-path names an ImageNet-style folder; either way the images
are in memory before the first timing. Writes results/time_cost_<device>[_quick].json and .md (_quick
when HRank/CHIP are extrapolated; rewritten after every method); --json PATH also writes {"device",
"methods": {name: {"seconds", "extrapolated"}}}.
"""

import argparse
import json
import logging
import os
import re
import time

# isort: off
import apib  # noqa: F401  (before torch: huge pages for the forward passes, as under the `apib` command)

# isort: on
import torch
import torchvision
from common import RESULTS, bench, environment, write_atomic

from apib.groups import dependency_graph, find_groups
from apib.pruning import prune

logger = logging.getLogger("time_cost")

PAPER_SECONDS = {"L1": 7, "FPGM": 8, "APIB": 63, "HRank": 9112, "CHIP": 545618}
PROTOCOL_IMAGES = 640
PROTOCOL_BATCH = 128
QUICK_IMAGES = 8  # the whole --quick run: about 7.5 min on 1 thread of a shared 2-core EPYC
# name: (criterion, mode, calibration images; None = the feature-map protocol's 640, or --images)
METHODS = {
    "L1": ("l1", "fast", None),
    "FPGM": ("fpgm", "fast", None),
    "APIB": ("apib", "fast", 64),
    "APIB-128": ("apib", "fast", 128),
    "HRank-fast": ("hrank", "fast", None),
    "CHIP-fast": ("chip", "fast", None),
    "HRank": ("hrank", "faithful", None),
    "CHIP": ("chip", "faithful", None),
}
FMAP_CRITERIA = ("hrank", "chip")


def calibration_images(args, count: int) -> torch.Tensor:
    """(count, 3, S, S) float32 on the CPU: the first images of a seeded shuffle of --data-path, or
    seeded random normal images."""
    if args.data_path is None:
        g = torch.Generator().manual_seed(args.seed)
        return torch.randn(count, 3, args.image_size, args.image_size, generator=g)
    from apib.data import get_dataset, loader

    dataset = get_dataset("imagenet", args.data_path, train=True, augment=False, image_size=args.image_size)
    batches, seen = [], 0
    for images, _ in loader(dataset, PROTOCOL_BATCH, train=True, seed=args.seed):
        batches.append(images)
        seen += len(images)
        if seen >= count:
            break
    if seen < count:
        raise ValueError(f"--data-path has {seen} images; this run needs {count}")
    return torch.cat(batches)[:count]


def chip_copy_seconds(model: torch.nn.Module, x0: torch.Tensor, batch: int) -> float:
    """Seconds of whole-batch copies that CHIP's faithful loop makes for 640 images in batches of 128
    beyond those it makes in batches of `batch`: per image and layer it copies C batches of
    B·C·H·W float32 values, the C×H×W maps being the consumer inputs of the prunable groups."""
    groups = find_groups(model, dependency_graph(model, x0))
    shapes = []
    hooks = [
        model.get_submodule(g.consumer).register_forward_hook(
            lambda _m, inputs, _out: shapes.append(tuple(inputs[0].shape[1:]))
        )
        for g in groups
    ]
    with torch.no_grad():
        model(x0)
    for h in hooks:
        h.remove()
    per_image = sum(c * c * h * w for c, h, w in shapes)  # values copied per image, per image in a batch
    biggest = torch.empty(PROTOCOL_BATCH * max(c * h * w for c, h, w in shapes))
    rate = biggest.numel() / bench(biggest.clone, torch.device("cpu"), repeats=3)
    return PROTOCOL_IMAGES * per_image * (PROTOCOL_BATCH - batch) / rate


def run_method(name: str, model, images: torch.Tensor, fmap_images: int, args, device) -> dict:
    """One timed `prune` call; the feature-map criteria's scoring is scaled to 640 images. APIB runs the
    paper's configuration (preset "paper": the complete global penalty search), as the paper timed it."""
    criterion, mode, calib = METHODS[name]
    n = fmap_images if criterion in FMAP_CRITERIA else calib or 1
    batches = list(images[:n].split(PROTOCOL_BATCH))
    logger.info("%s: %s (%s), %d image(s)", name, criterion, mode, n)
    result = prune(
        model,
        batches,
        flops_reduction=args.flops_reduction,
        criterion=criterion,
        preset="paper",
        mode=mode,
        calib_size=n if n >= 2 else None,
        device=device,
        progress=not args.quiet,
    )
    phases = {k: v for k, v in result.timings.items() if k != "surgery"}
    measured = sum(phases.values())
    extrapolated = criterion in FMAP_CRITERIA and n < PROTOCOL_IMAGES
    seconds = measured + (phases["scoring"] * (PROTOCOL_IMAGES / n - 1) if extrapolated else 0.0)
    logger.info("%s: %.2f s measured, %.0f s for the protocol", name, measured, seconds)
    return {
        "seconds": seconds,
        "extrapolated": extrapolated,
        "measured_seconds": measured,
        "images": n,
        "batch": min(n, PROTOCOL_BATCH),
        "phases": result.timings,
        "flops_reduction": result.flops_reduction,
        "paper_seconds": PAPER_SECONDS.get(name),
    }


def _fmt(s: float) -> str:
    return f"{s:.3g}" if s < 100 else f"{s:,.0f}"


def render(record: dict) -> tuple[str, list[str]]:
    """The table (Markdown) and the ratio and note lines."""
    methods = record["methods"]
    rows = [
        "| method | ours (s) | extrapolated? | paper (s) | paper / ours |",
        "|---|---:|---|---:|---:|",
    ]
    for name, m in methods.items():
        paper = m["paper_seconds"]
        flag = f"yes, from {m['images']} images" if m["extrapolated"] else "no"
        ratio = f"{paper / m['seconds']:.3g}" if paper else "—"
        rows.append(f"| {name} | {_fmt(m['seconds'])} | {flag} | {_fmt(paper) if paper else '—'} | {ratio} |")
    lines = []
    if "APIB" in methods:
        apib = methods["APIB"]["seconds"]
        for name in ("L1", "FPGM", "HRank", "CHIP", "HRank-fast", "CHIP-fast"):
            if name in methods:
                paper = PAPER_SECONDS.get(name)
                was = f" (paper: {paper / PAPER_SECONDS['APIB']:.3g})" if paper else ""
                lines.append(f"{name} / APIB = {methods[name]['seconds'] / apib:.3g}{was}")
    for slow in ("HRank", "CHIP"):
        if slow in methods and f"{slow}-fast" in methods:
            speedup = methods[slow]["seconds"] / methods[f"{slow}-fast"]["seconds"]
            lines.append(f"{slow} / {slow}-fast = {speedup:.3g} (the published loop against ours)")
    return "\n".join(rows), lines + record["notes"]


def write_results(record: dict, path: str) -> str:
    """Writes path.md and path.json (atomically); returns the table and lines for the terminal."""
    table, lines = render(record)
    env, cfg = record["environment"], record["config"]
    text = (
        f"# Time cost (the paper's Table 2)\n\n{env['device']} (torch device {cfg['device']}); "
        f"torch {env['torch']}, python {env['python']}; commit {env['commit']}; {env['date']}.\n\n"
        f"{cfg['model']} at {cfg['image_size']}², {100 * cfg['flops_reduction']:.0f}% FLOPs reduction, "
        f"{cfg['images']} images.\n\n{table}\n\n" + "".join(f"- {line}\n" for line in lines)
    )
    if "wall_s" not in record:
        text += "- partial: written after each method; the run is going on or was interrupted\n"
    write_atomic(path + ".md", text)
    write_atomic(path + ".json", json.dumps(record, indent=1) + "\n")
    return table + "\n\n" + "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"HRank/CHIP on {QUICK_IMAGES} images, scaled")
    parser.add_argument(
        "--images", type=int, help=f"HRank/CHIP images (default {PROTOCOL_IMAGES}; --quick: {QUICK_IMAGES})"
    )
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--flops-reduction", type=float, default=0.76)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice); 1 on a shared machine, where MKL's threads "
        "spin-wait for a core another process holds and small LAPACK calls slow down 100-fold",
    )
    parser.add_argument("--model", default="resnet50", help="a torchvision model name")
    parser.add_argument("--ckpt", help="a state dict for the model (default: random weights)")
    parser.add_argument("--data-path", help="ImageNet-style folder (default: random normal images)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=RESULTS, help="folder for the .json and .md results")
    parser.add_argument(
        "--json", metavar="PATH", help="also write {device, methods: {seconds, extrapolated}}"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or info logging")
    args = parser.parse_args(argv)
    if args.images is None:
        args.images = QUICK_IMAGES if args.quick else PROTOCOL_IMAGES
    if not 2 <= args.images <= PROTOCOL_IMAGES:  # prune's calibration needs 2 images at least
        parser.error(f"--images must be in [2, {PROTOCOL_IMAGES}], got {args.images}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = torchvision.models.get_model(args.model, weights=None)
    if args.ckpt:
        model.load_state_dict(torch.load(args.ckpt, map_location="cpu", weights_only=True))
    model = model.to(device).eval()
    needed = [args.images if METHODS[m][0] in FMAP_CRITERIA else METHODS[m][2] or 1 for m in args.methods]
    images = calibration_images(args, max(needed))
    with torch.no_grad():  # warm-up: no method pays for first-call initialisation of the forward pass
        model(images[:2].to(device))

    env = environment(device)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower()
    path = os.path.join(
        args.results, f"time_cost_{slug}" + ("_quick" if args.images < PROTOCOL_IMAGES else "")
    )
    fmap_batch = min(args.images, PROTOCOL_BATCH)
    record = {
        "benchmark": "time_cost",
        "environment": env,
        "config": {
            "model": args.model,
            "image_size": args.image_size,
            "flops_reduction": args.flops_reduction,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "images": "random normal" if args.data_path is None else args.data_path,
            "fmap_images": args.images,
            "checkpoint": args.ckpt,
        },
        "methods": {},
        "notes": [
            "time = sum of prune's phases except surgery (setup + calibration + statistics + search for "
            "APIB, setup + scoring + search for the baselines); one run each, no repeats",
            f"HRank/CHIP protocol: {PROTOCOL_IMAGES} images in batches of {PROTOCOL_BATCH}; this run: "
            f"{args.images} images in batches of {fmap_batch}",
        ],
    }
    if args.images < PROTOCOL_IMAGES:
        record["notes"].append(
            f"extrapolated = setup + scoring × {PROTOCOL_IMAGES} / {args.images} + search "
            "(only the image-dependent scoring is scaled; the forward pass and the fast routes run "
            "bigger batches more efficiently, on GPUs especially, so for them the scaling errs high)"
        )
    if (args.model, args.image_size, args.flops_reduction) != ("resnet50", 224, 0.76):
        record["notes"].append("not the paper's configuration (ResNet-50, 224², 76%): paper columns differ")
    if device.type == "cpu":
        record["notes"].append(
            f"CPU run, {torch.get_num_threads()} torch thread(s), THP_MEM_ALLOC_ENABLE="
            f"{os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')} (huge pages for large tensors); other "
            "processes on the machine inflate timings"
        )

    start = time.perf_counter()
    for name in args.methods:
        record["methods"][name] = run_method(name, model, images, args.images, args, device)
        if name == "CHIP" and fmap_batch < PROTOCOL_BATCH:
            extra = chip_copy_seconds(model, images[:1].to(device), fmap_batch)
            record["chip_missing_copies_s"] = extra
            record["notes"].append(
                f"CHIP's linear estimate misses the larger copies of batches of {PROTOCOL_BATCH}: about "
                f"{_fmt(extra)} s more (CHIP ≈ {_fmt(record['methods']['CHIP']['seconds'] + extra)} s)"
            )
        write_results(record, path)
    record["wall_s"] = time.perf_counter() - start
    report = write_results(record, path)
    print(f"\n{env['device']} | torch {env['torch']} | {args.model} {args.image_size}² on {device}\n")
    print(report)
    print(f"\nwall time {record['wall_s']:.0f} s; wrote {path}.json and .md")
    if args.json:
        short = {
            k: {"seconds": m["seconds"], "extrapolated": m["extrapolated"]}
            for k, m in record["methods"].items()
        }
        write_atomic(args.json, json.dumps({"device": env["device"], "methods": short}, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
