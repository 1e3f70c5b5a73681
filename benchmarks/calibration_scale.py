"""Calibration at scale: APIB's decision on ResNet-50 as the calibration set grows, in bounded memory.

For each n in --images (default 64 → 2048, doubling), one `apib.prune(..., preset="paper")` call (the
paper's global search; block-streamed statistics,
--block-size images per block) on seeded random normal images, each in a fresh subprocess so that its
peak resident memory (VmHWM) is its own. Reported per n: peak memory beyond the loaded model and images
(the RSS after the warm-up forward pass), seconds per phase, calibration images per second, and the
stability of the selection: the mean over layers of |kept(n) ∩ kept(2n)| / |kept(n) ∪ kept(2n)| (Jaccard)
between consecutive sizes. --processes 2 adds the largest n again as two gloo processes (torch.distributed)
over the same blocks, whose selection must equal the one-process run. Writes calibration_scale_<device>.json,
.md and .png under --results (default benchmarks/results/), atomically.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import torch
import torchvision
from common import RESULTS, environment, write_atomic

from apib.pruning import prune

HERE = os.path.dirname(os.path.abspath(__file__))


def _vm(field: str) -> float:
    """A /proc/self/status memory field in GB (VmHWM: peak resident, VmRSS: current)."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    return kb / 2**20


def _images(n: int, size: int, seed: int, start: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(start + n, 3, size, size, generator=g)[start:]


def one_run(n: int, args, rank: int = 0, world: int = 1) -> dict:
    """One prune call on n images (this process's shard of them under a process group)."""
    torch.manual_seed(args.seed)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    share = n // world
    images = _images(share, args.image_size, args.seed + 1, start=rank * share)
    batches = list(images.split(args.batch))
    with torch.no_grad():
        model(images[:2])
    base = _vm("VmRSS")
    start = time.perf_counter()
    r = prune(
        model,
        batches,
        flops_reduction=args.flops_reduction,
        calib_size=share,
        block_size=args.block_size,
        preset="paper",
        progress=False,
    )
    wall = time.perf_counter() - start
    return {
        "images": n,
        "processes": world,
        "peak_gb_beyond_model": _vm("VmHWM") - base,
        "phases": r.timings,
        "images_per_s": n / (r.timings["calibration"] + r.timings["statistics"]),
        "wall_s": wall,
        "kept": {d.producer: list(d.kept) for d in r.layers},
    }


def _child(args) -> None:
    """Runs one size (and, under --world, one rank of a gloo group) and prints its record as JSON."""
    if args.world > 1:
        import torch.distributed as dist

        dist.init_process_group(
            "gloo", init_method=f"file://{args.init}", rank=args.rank, world_size=args.world
        )
    try:
        record = one_run(args.child, args, args.rank, args.world)
    finally:
        if args.world > 1:
            dist.destroy_process_group()
    if args.rank == 0:
        print(json.dumps(record))


def _spawn(n: int, args, world: int = 1) -> dict:
    base = [sys.executable, os.path.abspath(__file__), "--child", str(n)]
    base += [
        "--model",
        args.model,
        "--image-size",
        str(args.image_size),
        "--block-size",
        str(args.block_size),
    ]
    base += [
        "--batch",
        str(args.batch),
        "--seed",
        str(args.seed),
        "--flops-reduction",
        str(args.flops_reduction),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        init = os.path.join(tmp, "init")
        procs = [
            subprocess.Popen(
                [*base, "--world", str(world), "--rank", str(r), "--init", init],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // world))},
            )
            for r in range(world)
        ]
        outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a run of {n} images on {world} process(es) failed")
    return json.loads(outs[0].strip().splitlines()[-1])


def _jaccard(a: dict, b: dict) -> float:
    scores = [len(set(a[k]) & set(b[k])) / len(set(a[k]) | set(b[k])) for k in a]
    return sum(scores) / len(scores)


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ns = [r["images"] for r in rows]
    ax[0].plot(ns, [r["peak_gb_beyond_model"] for r in rows], "o-")
    ax[0].set(xscale="log", xlabel="calibration images", ylabel="peak memory beyond the model (GB)")
    ax[1].plot(ns, [r["phases"]["calibration"] + r["phases"]["statistics"] for r in rows], "o-")
    ax[1].set(xscale="log", yscale="log", xlabel="calibration images", ylabel="calibration + statistics (s)")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--image-size", type=int, default=112, help="112 on CPUs (224 is the paper's)")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--flops-reduction", type=float, default=0.76)
    p.add_argument("--processes", type=int, default=2, help="the largest n again on this many processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=RESULTS)
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--init", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        return _child(args)

    env = environment("cpu")
    rows = []
    for n in args.images:
        rows.append(_spawn(n, args))
        r = rows[-1]
        print(f"n = {n}: peak {r['peak_gb_beyond_model']:.2f} GB, {r['images_per_s']:.1f} img/s", flush=True)
    multi = _spawn(args.images[-1], args, args.processes) if args.processes > 1 else None
    lines = [
        "| images | peak GB beyond model | calibration s | statistics s | search s | img/s | Jaccard, 2n |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(rows):
        nxt = f"{_jaccard(r['kept'], rows[i + 1]['kept']):.3f}" if i + 1 < len(rows) else "—"
        ph = r["phases"]
        lines.append(
            f"| {r['images']} | {r['peak_gb_beyond_model']:.2f} | {ph['calibration']:.1f} "
            f"| {ph['statistics']:.1f} | {ph['search']:.2f} | {r['images_per_s']:.1f} | {nxt} |"
        )
    notes = []
    if multi is not None:
        same = multi["kept"] == rows[-1]["kept"]
        seconds = multi["phases"]["calibration"] + multi["phases"]["statistics"]
        notes.append(
            f"{args.processes} gloo processes on {args.images[-1]} images (each its contiguous shard, the "
            f"same blocks): calibration + statistics {seconds:.1f} s (incl. the all_reduce), peak "
            f"{multi['peak_gb_beyond_model']:.2f} GB per process; selection "
            f"{'identical to' if same else 'DIFFERENT from'} the one-process run"
        )
    record = {"benchmark": "calibration_scale", **env, "config": vars(args), "rows": rows, "multi": multi}
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower()
    stem = os.path.join(args.results, f"calibration_scale_{slug}")
    text = (
        f"# Calibration at scale\n\n{env['device']}; torch {env['torch']}; commit {env['commit']}; "
        f"{env['date']}.\n\n{args.model} at {args.image_size}², random normal images, "
        f"{args.flops_reduction:.0%} FLOPs reduction, blocks of {args.block_size} images, batches of "
        f"{args.batch}; each n in a fresh process.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(f"- {n}" for n in notes)
        + "\n"
    )
    os.makedirs(args.results, exist_ok=True)
    write_atomic(stem + ".json", json.dumps(record, indent=1) + "\n")
    write_atomic(stem + ".md", text)
    _plot(rows, stem + ".png")
    print(text)


if __name__ == "__main__":
    main()
