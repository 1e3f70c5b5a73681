"""Which models APIB prunes: the torchvision classification zoo and a timm selection, each pruned by
`apib.prune(model, calib, flops_reduction=r, preset="paper")` (the paper's global penalty search) and
by L1 (its papers' one ratio for every layer, the widths the default preset allots, so L1's column is
where the default lands) to 30% and 50% of its FLOPs, as a new user would try it: random weights
(the libraries' own initialisation), 10 classes, 32 random images of 64×64 (224×224 where a model
accepts no other size), the default tolerance (1%).

One row per model: its prunable groups (the default policy), the largest reachable reduction (every
group at omega = 1), the reduction each run reached (marked when outside the tolerance), the time of
the slowest run and the first error. Each model runs in its own process, so that a crash, a memory
blow-up or --timeout ends that model only; models over --max-params are listed as skipped.

    python benchmarks/zoo.py --quick           # one or two small models per family (~15 min, 2 CPU cores)
    python benchmarks/zoo.py                   # all 80 torchvision classification models + the timm list
    python benchmarks/zoo.py --models resnet18 timm:ghostnet_050

Writes atomically under --results (benchmarks/results/): zoo_<device>[_quick].{md,json}, rewritten
after every model, each with the device, versions and commit.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback

import torch
from common import RESULTS, environment, write_atomic

TARGETS = (0.3, 0.5)
CRITERIA = ("apib", "l1")
IMAGES = 32
SIZE = 64

TIMM = (
    "resnet18d",
    "seresnext26d_32x4d",
    "cspresnet50",
    "res2net50_14w_8s",
    "dla34",
    "dpn68",
    "regnetx_002",
    "regnety_002",
    "efficientnet_lite0",
    "mixnet_s",
    "mobilenetv3_large_100",
    "mobilenetv4_conv_small",
    "lcnet_050",
    "ghostnet_100",
    "rexnet_100",
    "repvgg_a0",
    "mobileone_s0",
    "ese_vovnet19b_dw",
    "hrnet_w18_small",
    "convnext_atto",
    "densenet121",
)
"""A timm selection: families torchvision lacks (CSP, Res2Net, DLA, DPN, MixNet, GhostNet, ReXNet,
RepVGG, MobileOne, VoVNet, HRNet, LCNet, MobileNetV4) and timm's own ResNe(X)t, RegNet, ConvNeXt."""

QUICK = (
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "efficientnet_b0",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mnasnet0_5",
    "convnext_tiny",
    "densenet121",
    "googlenet",
    "inception_v3",
    "squeezenet1_1",
    "shufflenet_v2_x0_5",
    "alexnet",
    "vgg11_bn",
    "timm:cspresnet50",
    "timm:mixnet_s",
    "timm:ghostnet_100",
    "timm:rexnet_100",
    "timm:repvgg_a0",
    "timm:convnext_atto",
    "timm:dla34",
)


def all_models() -> list[str]:
    import torchvision

    return [*torchvision.models.list_models(module=torchvision.models), *(f"timm:{m}" for m in TIMM)]


def build(name: str) -> torch.nn.Module:
    """The model `name` (torchvision's, or timm's as timm:NAME), untrained, with 10 classes."""
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name[5:], pretrained=False, num_classes=10)
    import torchvision

    extra = {"aux_logits": False} if name in ("googlenet", "inception_v3") else {}
    return torchvision.models.get_model(name, weights=None, num_classes=10, **extra)


def count_params(name: str) -> int:
    """The model's parameters, counted without allocating them where the constructor allows (RegNet's
    computes its widths with tensors, which the meta device cannot)."""
    try:
        with torch.device("meta"):
            model = build(name)
    except Exception:  # noqa: BLE001 - built for real instead
        model = build(name)
    return sum(p.numel() for p in model.parameters())


def input_size(model: torch.nn.Module) -> int:
    """SIZE, or 224 for models built for one input size (vision transformers, MaxViT)."""
    for size in (SIZE, 224):
        try:
            with torch.no_grad():
                model(torch.randn(1, 3, size, size))
            return size
        except Exception:  # noqa: BLE001 - a model that rejects the size; the next is tried
            continue
    return SIZE


def _error(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text}"[:300]


def run_one(name: str, emit=lambda row: None) -> dict:
    """Everything the table shows for one model, in this process; emit(row) after every phase, so that
    a run cut short still reports what it found."""
    from apib.groups import FlopsModel, count_flops, dependency_graph, find_groups
    from apib.pruning import prune

    row = {"model": name, "runs": {}}
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = build(name).eval()
    row["params"] = sum(p.numel() for p in model.parameters())
    size = row["size"] = input_size(model)
    x0 = torch.randn(1, 3, size, size)
    try:
        groups = find_groups(model, dependency_graph(model, x0))
        total, per_module = count_flops(model, x0)
        row["groups"] = len(groups)
        row["flops"] = total
        row["max_reduction"] = 1 - FlopsModel(groups, total, per_module)([1] * len(groups)) / total
        emit(row)
    except Exception as err:  # noqa: BLE001 - every failure is a row of the table
        row["error"] = _error(err)
        row["time_s"] = time.perf_counter() - t0
        return row
    calib = [torch.randn(IMAGES, 3, size, size, generator=torch.Generator().manual_seed(0))]
    for criterion in CRITERIA:
        for target in TARGETS:
            t1 = time.perf_counter()
            try:
                r = prune(
                    model, calib, flops_reduction=target, criterion=criterion, preset="paper", progress=False
                )
                run = {
                    "reached": r.flops_reduction,
                    "within": abs(r.flops_after - r.flops_target) <= 0.01 * r.flops_target,
                }
            except Exception as err:  # noqa: BLE001
                run = {"error": _error(err)}
                if not isinstance(err, ValueError):
                    run["traceback"] = traceback.format_exc(limit=-3)
            run["time_s"] = time.perf_counter() - t1
            row["runs"][f"{criterion}@{target}"] = run
            emit(row)
    row["time_s"] = time.perf_counter() - t0
    return row


def run_isolated(name: str, timeout: float) -> dict:
    """run_one in a child process; a crash or a timeout is the row's error."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        row = _last_row(err.stdout) or {"model": name, "runs": {}}
        doing = next((k for k in _RUNS if k not in row["runs"]), None) if "groups" in row else None
        row["error"] = f"timeout after {timeout:.0f} s" + (f" (in {doing})" if doing else "")
        row["time_s"] = timeout
        return row
    row = _last_row(done.stdout)
    if done.returncode == 0 and row:
        return row
    reason = "killed (out of memory?)" if done.returncode < 0 else f"exit status {done.returncode}"
    tail = (done.stderr.strip().splitlines() or [""])[-1][:200]
    return {"model": name, "runs": {}, "error": f"{reason}: {tail}", "time_s": time.perf_counter() - t0}


_RUNS = [f"{c}@{t}" for c in CRITERIA for t in TARGETS]


def _last_row(stdout) -> dict | None:
    if isinstance(stdout, bytes):
        stdout = stdout.decode(errors="replace")
    lines = [line for line in (stdout or "").splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def _cell(run: dict | None) -> str:
    if not run:
        return "—"
    if "error" in run:
        return "error"
    return f"{run['reached']:.3f}" + ("" if run["within"] else " (off)")


def _first_error(row: dict) -> str:
    if "error" in row:
        return row["error"]
    errors = [f"{k}: {r['error']}" for k, r in row["runs"].items() if "error" in r]
    return errors[0] if errors else ""


def markdown(rows: list[dict], env: dict, args) -> str:
    runs = _RUNS
    reached = {k: sum(1 for r in rows if r.get("runs", {}).get(k, {}).get("within")) for k in runs}
    tried = [r for r in rows if "skipped" not in r]
    lines = [
        "# Model zoo: what APIB prunes",
        "",
        f"{env['device']} (torch device cpu); torch {env['torch']}, python {env['python']}; commit "
        f"{', '.join(sorted({r.get('commit', env['commit']) for r in rows}))}; {env['date']}.",
        "",
        f"Random weights, 10 classes, {IMAGES} random images of {SIZE}² (224² for fixed-size models), "
        "tolerance 1%. `apib`: `apib.prune(model, calib, flops_reduction=r, preset='paper')`; `l1`: "
        "`criterion='l1'` (one pruning ratio for every layer, the widths of the default preset). A cell is "
        "the reduction reached, `(off)` outside the tolerance. "
        "groups: prunable groups of the default policy (residual streams need `prune_residual=True`); "
        "max: the largest reachable reduction (every group at one channel); time: the model's whole row.",
        "",
        "Reached within tolerance, of "
        + f"{len(tried)} models tried: "
        + ", ".join(f"{k} {reached[k]}" for k in runs)
        + ".",
        "",
        "| model | params (M) | groups | max | " + " | ".join(runs) + " | time (s) | error |",
        "|---|---:|---:|---:|" + "---:|" * len(runs) + "---:|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(
                f"| {r['model']} | {r['params'] / 1e6:.1f} | | | "
                + " | " * len(runs)
                + f" | {r['skipped']} |"
            )
            continue
        params = f"{r['params'] / 1e6:.1f}" if "params" in r else "—"
        groups = r.get("groups", "—")
        top = f"{r['max_reduction']:.3f}" if "max_reduction" in r else "—"
        cells = " | ".join(_cell(r.get("runs", {}).get(k)) for k in runs)
        error = _first_error(r).replace("|", "\\|")
        lines.append(
            f"| {r['model']} | {params} | {groups} | {top} | {cells} | {r.get('time_s', 0):.0f} | {error} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{len(QUICK)} models, one or two per family")
    parser.add_argument("--models", nargs="+", help="these models (torchvision names, or timm:NAME)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per model (default 1800)")
    parser.add_argument("--max-params", type=float, default=150e6, help="skip larger models (default 150e6)")
    parser.add_argument("--results", default=RESULTS, help="output folder (default benchmarks/results/)")
    parser.add_argument(
        "--update", action="store_true", help="rerun these models into the existing table, keeping the others"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_one(args.worker, emit=lambda row: print(json.dumps(row), flush=True))))
        return 0
    names = args.models or (list(QUICK) if args.quick else all_models())
    env = environment("cpu")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower()
    stem = os.path.join(args.results, f"zoo_{slug}" + ("_quick" if args.quick else ""))
    rows = []
    if args.update and os.path.exists(stem + ".json"):
        with open(stem + ".json") as f:
            old = json.load(f)
        rows = [r for r in old["rows"] if r["model"] not in names]
        for r in rows:
            r.setdefault("commit", old["environment"]["commit"])
    for name in names:
        params = count_params(name)
        if params > args.max_params:
            row = {
                "model": name,
                "params": params,
                "skipped": f"skipped: over {args.max_params / 1e6:.0f}M params",
            }
        else:
            row = run_isolated(name, args.timeout)
        row["commit"] = env["commit"]
        rows.append(row)
        print(f"{name}: {json.dumps({k: v for k, v in row.items() if k != 'runs'})}", flush=True)
        record = {"environment": env, "images": IMAGES, "size": SIZE, "targets": TARGETS, "rows": rows}
        write_atomic(stem + ".json", json.dumps(record, indent=1) + "\n")
        write_atomic(stem + ".md", markdown(rows, env, args))
    print(markdown(rows, env, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
