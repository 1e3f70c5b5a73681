"""HSIC Lasso selection (`apib_kernels.hsic_lasso`) against the reference code's step and pyHSICLasso.

(a) The per-layer APIB step on ResNet-50 layer shapes, n = 64 images: ours (statistics once, then a C×C
    solve) against the reference code's route — numpy Grams per channel, dense H @ K @ H, the explicit
    n²×C design, scikit-learn Lasso(alpha, fit_intercept=False, positive=True) — at the same alpha, in
    float32 and in float64, and whether each keeps exactly the channels of a converged (tol 1e-8)
    float64 scikit-learn fit. The layers are synthetic: ReLU maps whose strength varies per
    image and channel, and an output (32 maps, ReLU of a random 1×1 mixing) that reads a quarter of the
    input channels. Times are the best of --repeats runs of ours after a warm-up and of --ref-repeats
    runs of the reference route, with a pause before each route (see `_settle`): on a shared machine
    noise only adds time, so the minimum is the stable statistic.
(b) Feature selection on pyHSICLasso's own kind of problem: n samples × d Gaussian features, regression
    (y a non-linear function of 5 planted features) and classification (4 classes from them), top k =
    10. pyHSICLasso's block mode (B = 20, M = 3) against ours with block_size = 20, n_permutations = 3;
    the same with one pass (M = 1) over pyHSICLasso's own partition, where both solve the same problem;
    and its exact mode (B = 0) against ours without blocks, with pyHSICLasso's settings mirrored:
    features and outputs divided by their standard deviation, Gaussian kernel of width 1 (γ = 0.5,
    0.5/dim for y), Frobenius-normalised Grams. Each run is a fresh subprocess (time after a warm-up on
    a tiny problem, peak RSS of that process); pyHSICLasso's exact mode is skipped where its design
    (about 3.5·n²·d·4 bytes: 14.3 GB measured at n = d = 1024) would pass --max-gb.

Writes benchmarks/results/hsic_lasso.jsonl (appended) and hsic_lasso_<device>.md.
"""

import argparse
import functools
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
from common import RESULTS, append_jsonl, bench, environment, write_atomic

import apib_kernels as ak
from apib_kernels.backends import resolve_backend

LAYERS = [(64, 56), (128, 28), (256, 14), (512, 7), (256, 56)]
SOLVER_BATCH = 8
TOP_K = 10
PLANTED = 5
PY_BYTES_PER_ENTRY = 3.5 * 4


# --- (a) per-layer APIB step ----------------------------------------------------------------------


def layer_data(n: int, c: int, side: int, seed: int = 0):
    """x (n, C, side, side) ReLU maps; y (n, 32·side²), the ReLU of a 1×1 mixing of C/4 channels."""
    g = torch.Generator().manual_seed(seed)
    strength = torch.exp(0.5 * torch.randn(n, c, 1, 1, generator=g))
    shift = 0.5 * torch.randn(n, c, 1, 1, generator=g)
    x = torch.relu(torch.randn(n, c, side, side, generator=g) * strength + shift)
    relevant = torch.randperm(c, generator=g)[: c // 4]
    w = torch.randn(32, relevant.numel(), generator=g) / math.sqrt(relevant.numel())
    y = torch.relu(torch.einsum("oc,nchw->nohw", w, x[:, relevant]))
    return x, y.flatten(1)


def reference_step(
    x: np.ndarray, y: np.ndarray, alpha: float, h_dtype, tol: float = 1e-4, max_iter: int = 1000
):
    """The reference code's per-layer step. H = I − 11ᵀ/n in h_dtype: float32 keeps the design in x's
    dtype; float64 (numpy's default for np.eye) promotes the design and the Lasso to float64.
    Returns (kept channel indices, seconds in Grams, seconds in the Lasso, design, target)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso

    start = time.perf_counter()
    n, c = x.shape[:2]
    h = np.eye(n, dtype=h_dtype) - 1.0 / n

    def gram(f: np.ndarray) -> np.ndarray:
        gamma = math.sqrt(0.5 / f.shape[1])
        sq = (f * f).sum(1)
        dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * f @ f.T, 0))
        return h @ np.exp(-gamma * dist) @ h

    design = np.empty((n * n, c), dtype=np.result_type(x.dtype, h_dtype))
    for k in range(c):
        design[:, k] = gram(x[:, k].reshape(n, -1)).reshape(-1)
    target = gram(y).reshape(-1)
    mid = time.perf_counter()
    lasso = Lasso(alpha=alpha, fit_intercept=False, positive=True, tol=tol, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        lasso.fit(design, target)
    end = time.perf_counter()
    return np.flatnonzero(lasso.coef_), mid - start, end - mid, design, target


def _converged_set(design, target, alpha: float) -> set:
    """The exact answer to compare against: scikit-learn's Lasso on the float64 design run to tol 1e-8."""
    from sklearn.linear_model import Lasso

    lasso = Lasso(alpha=alpha, fit_intercept=False, positive=True, tol=1e-8, max_iter=500_000)
    return set(np.flatnonzero(lasso.fit(design, target).coef_).tolist())


def _best(fn, device, repeats: int) -> float:
    """Best wall time of fn() over `repeats` runs after one warm-up (synchronised on CUDA)."""
    return min(bench(fn, device, repeats=1, warmup=1 if i == 0 else 0) for i in range(repeats))


def _settle() -> None:
    """Pause between routes: torch's OpenMP and numpy's OpenBLAS worker threads spin for a while after
    their last call, and two spinning pools on two cores slow the next route by up to 50×."""
    time.sleep(1.0)


def part_a(args, device):
    lines = [
        "| C×H×W | ours s (stats + solve) | kept | reference f32 s (Grams + Lasso) | kept | × "
        "| reference f64 s (Grams + Lasso) | kept | × "
        "| ours = converged | f32 = converged | f64 = converged |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for c, side in LAYERS:
        x, y = layer_data(args.n, c, side)
        xd, yd = x.to(device), y.to(device)
        ours_runs = []

        def ours(xd=xd, yd=yd, ours_runs=ours_runs):
            ours_runs.append(ak.hsic_lasso(xd, yd, args.alpha))

        _settle()
        t_ours = _best(ours, device, args.repeats)
        # the phase times of the run whose phases were fastest (t_ours is the best wall time)
        r = min(ours_runs, key=lambda res: res.timings["statistics"] + res.timings["solve"])
        mine = set(r.selected.tolist())
        row = {
            "C": c,
            "H": side,
            "W": side,
            "n": args.n,
            "alpha": args.alpha,
            "alpha_used": r.alpha,
            "ours_s": t_ours,
            "ours_statistics_s": r.timings["statistics"],
            "ours_solve_s": r.timings["solve"],
            "ours_kept": len(mine),
        }
        lowered = "" if r.alpha == args.alpha else f" (α→{r.alpha:.2g})"
        t_stats, t_solve = r.timings["statistics"], r.timings["solve"]
        cells = [
            f"{c}×{side}×{side}",
            f"{t_ours:.3f} ({t_stats:.3f} + {t_solve:.3f})",
            f"{len(mine)}{lowered}",
        ]
        sets = {}
        for name, h_dtype in (("f32", np.float32), ("f64", np.float64)):
            runs = []
            for _ in range(args.ref_repeats):
                _settle()
                kept, t_gram, t_lasso, design, target = reference_step(
                    x.numpy(), y.numpy(), args.alpha, h_dtype
                )
                runs.append((t_gram + t_lasso, t_gram, t_lasso))
            _, t_gram, t_lasso = min(runs)
            t_ref = t_gram + t_lasso
            sets[name] = set(kept.tolist())
            row.update(
                {
                    f"reference_{name}_s": t_ref,
                    f"reference_{name}_grams_s": t_gram,
                    f"reference_{name}_lasso_s": t_lasso,
                    f"reference_{name}_kept": len(kept),
                    f"speedup_{name}": t_ref / t_ours,
                }
            )
            cells += [f"{t_ref:.3f} ({t_gram:.3f} + {t_lasso:.3f})", f"{len(kept)}", f"{t_ref / t_ours:.1f}×"]
        exact = _converged_set(design, target, args.alpha)
        row["converged_kept"] = len(exact)
        for name, chosen in (("ours", mine), ("f32", sets["f32"]), ("f64", sets["f64"])):
            diff = len(chosen ^ exact)
            row[f"{name}_equals_converged"] = diff == 0
            row[f"{name}_differs_from_converged"] = diff
            cells.append("yes" if diff == 0 else f"no ({diff} differ)")
        rows.append(row)
        line = "| " + " | ".join(cells) + " |"
        print(line, flush=True)
        lines.append(line)
    return rows, lines


def part_a_solvers(args, device):
    """(a2) The two Lasso solvers on each layer's (Q, b): the compiled CPU solver ("cpu") against the
    batched projected Newton solver ("torch") on `device`, for one penalty and for a batch of
    SOLVER_BATCH penalties in one call (a search step over several layers, or a path)."""
    lines = [
        "| C×H×W | kept | cpu s (1 α) | torch s (1 α) | cpu / torch | "
        f"cpu s ({SOLVER_BATCH} α) | torch s ({SOLVER_BATCH} α) | cpu / torch | same support |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for c, side in LAYERS:
        x, y = layer_data(args.n, c, side)
        q, b, _ = ak.hsic_matrix(x.to(device), y.to(device))
        q, b, n_rows = q.double(), b.double(), args.n**2
        alphas = args.alpha * torch.logspace(0, -1, SOLVER_BATCH, dtype=torch.float64, device=device)
        qs, bs = q.expand(SOLVER_BATCH, -1, -1).contiguous(), b.expand(SOLVER_BATCH, -1).contiguous()
        times, supports = {}, {}
        for solver in ("cpu", "torch"):
            one = functools.partial(ak.lasso_gram, q, b, args.alpha, n_rows, solver=solver)
            many = functools.partial(ak.lasso_gram, qs, bs, alphas, n_rows, solver=solver)
            _settle()
            times[solver] = (_best(one, device, args.repeats), _best(many, device, args.repeats))
            supports[solver] = set(torch.nonzero(one()).flatten().tolist())
        same = supports["cpu"] == supports["torch"]
        (c1, cb), (t1, tb) = times["cpu"], times["torch"]
        rows.append(
            {
                "C": c,
                "H": side,
                "W": side,
                "cpu_s": c1,
                "torch_s": t1,
                "cpu_batch_s": cb,
                "torch_batch_s": tb,
                "batch": SOLVER_BATCH,
                "kept": len(supports["cpu"]),
                "same_support": same,
            }
        )
        cells = [
            f"{c}×{side}×{side}",
            str(len(supports["cpu"])),
            f"{c1:.4f}",
            f"{t1:.4f}",
            f"{c1 / t1:.2f}×",
            f"{cb:.4f}",
            f"{tb:.4f}",
            f"{cb / tb:.2f}×",
            "yes" if same else "no",
        ]
        line = "| " + " | ".join(cells) + " |"
        print(line, flush=True)
        lines.append(line)
    return rows, lines


# --- (b) against pyHSICLasso ----------------------------------------------------------------------


def feature_data(task: str, n: int, d: int, seed: int = 0):
    """X (n, d) standard normal; y from PLANTED features at random positions."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    p = rng.choice(d, PLANTED, replace=False)
    a, b, c, e, f = (x[:, i] for i in p)
    signal = np.sin(2 * a) + b**2 + c * e + 0.5 * np.tanh(2 * f)
    noise = 0.1 * rng.standard_normal(n).astype(np.float32)
    if task == "regression":
        y = (signal + noise).astype(np.float32)
    else:
        y = (np.sin(2 * a) + b**2 + 0.5 * np.tanh(2 * f) + noise > 1).astype(np.int64) + 2 * (
            c * e > 0
        ).astype(np.int64)
    return x, y, sorted(p.tolist())


def _pyhsiclasso_partition(n: int) -> np.ndarray:
    """The sample order of pyHSICLasso's first block pass (its compute_kernel seeds numpy with 0)."""
    np.random.seed(0)
    return np.random.permutation(np.arange(n))


def _run_pyhsiclasso(task, x, y, mode, repeats):
    from pyHSICLasso import HSICLasso

    blocks = {"block": {"B": 20, "M": 3}, "partition": {"B": 20, "M": 1}, "exact": {"B": 0, "M": 1}}[mode]

    def run(xx, yy):
        h = HSICLasso()
        h.input(xx, yy)
        fit = h.regression if task == "regression" else h.classification
        fit(TOP_K, **blocks)
        return [int(i) for i in h.get_index()]

    return _timed(run, x, y, repeats)


def _run_ours(task, x, y, mode, repeats):
    if mode == "partition":
        order = _pyhsiclasso_partition(len(x))
        x, y = x[order], y[order]
    blocks = {"block": {"block_size": 20, "n_permutations": 3}, "partition": {"block_size": 20}}.get(mode, {})

    def run(xx, yy):
        xt = torch.from_numpy(xx / (xx.std(0) + 1e-20))
        if task == "regression":
            yt = torch.from_numpy(yy / (yy.std() + 1e-20))[:, None]
            kw = {"y_kernel": "gaussian", "y_gamma": 0.5}
        else:
            yt, kw = torch.from_numpy(yy), {"y_kernel": "delta_norm"}
        kw.update(blocks)
        r = ak.hsic_lasso(xt, yt, n_select=TOP_K, kernel="gaussian", gamma=0.5, normalize=True, **kw)
        return r.selected.tolist()

    return _timed(run, x, y, repeats)


def _timed(run, x, y, repeats: int):
    """(run's answer, best time of `repeats` runs) after a warm-up on a tiny problem (thread pools,
    joblib workers, first-call costs)."""
    run(x[:40, :12], y[:40])
    times, index = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        index = run(x, y)
        times.append(time.perf_counter() - start)
    return index, min(times)


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; getrusage's ru_maxrss would include the parent's,
    which it inherits across fork and exec)."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kb / 1024


def worker(spec: dict) -> None:
    """One (implementation, task, mode, n, d) run in this process; prints one RESULT line of JSON."""
    x, y, planted = feature_data(spec["task"], spec["n"], spec["d"])
    base = _peak_rss_mb()
    fn = _run_pyhsiclasso if spec["impl"] == "pyhsiclasso" else _run_ours
    index, seconds = fn(spec["task"], x, y, spec["mode"], spec["repeats"])
    out = {
        "index": index,
        "seconds": seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "base_rss_mb": base,
        "planted": planted,
    }
    print("RESULT " + json.dumps(out), flush=True)


def _spawn(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: " + " / ".join(tail)}


def part_b(args):
    head = (
        "| task | mode | n | d | pyHSICLasso s | ours s | × | top-10 overlap | planted found (pyH / ours) "
        "| peak RSS MB (pyH / ours) |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    plan = [("block", n, d) for n, d in args.block_sizes]
    plan += [("partition", n, d) for n, d in args.block_sizes[:1]]
    plan += [("exact", n, d) for n, d in args.exact_sizes]
    labels = {"block": "block (B=20, M=3)", "partition": "block (B=20, M=1), pyHSICLasso's partition"}
    for task in args.tasks:
        for mode, n, d in plan:
            spec = {"task": task, "n": n, "d": d, "mode": mode, "repeats": args.repeats_b}
            est_gb = PY_BYTES_PER_ENTRY * n * n * d / 1e9
            if mode == "exact" and est_gb > args.max_gb:
                py = {"error": f"skipped: its exact design needs about {est_gb:.0f} GB > {args.max_gb:g} GB"}
            elif args.no_pyhsiclasso:
                py = {"error": "skipped (--no-pyhsiclasso)"}
            else:
                py = _spawn({**spec, "impl": "pyhsiclasso"}, args.timeout)
            ours = _spawn({**spec, "impl": "ours"}, args.timeout)
            row = {"task": task, "mode": mode, "n": n, "d": d, "k": TOP_K, "pyhsiclasso": py, "ours": ours}
            cells = [task, labels.get(mode, mode), str(n), str(d)]
            ok_py, ok_ours = "error" not in py, "error" not in ours
            cells.append(f"{py['seconds']:.2f}" if ok_py else py["error"])
            cells.append(f"{ours['seconds']:.2f}" if ok_ours else ours["error"])
            if ok_py and ok_ours:
                overlap = len(set(py["index"]) & set(ours["index"]))
                row["speedup"] = py["seconds"] / ours["seconds"]
                row["overlap"] = overlap
                row["same_order"] = py["index"] == ours["index"]
                same = " (same order)" if row["same_order"] else ""
                cells += [f"{row['speedup']:.1f}×", f"{overlap}/{TOP_K}{same}"]
            else:
                cells += ["—", "—"]
            found = []
            for res in (py, ours):
                found.append(
                    f"{len(set(res['index']) & set(res['planted']))}/{PLANTED}" if "index" in res else "—"
                )
            cells.append(" / ".join(found))
            rss = [f"{res['peak_rss_mb']:.0f}" if "peak_rss_mb" in res else "—" for res in (py, ours)]
            cells.append(" / ".join(rss))
            line = "| " + " | ".join(cells) + " |"
            print(line, flush=True)
            lines.append(line)
            rows.append(row)
    return rows, lines


def _load(avg) -> str:
    return ", ".join(f"{v:.1f}" for v in avg)


def _sizes(text: str):
    n, d = text.lower().split("x")
    return int(n), int(d)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=["a", "b", "ab"], default="ab")
    parser.add_argument("--n", type=int, default=64, help="(a) calibration images")
    parser.add_argument(
        "--alpha", type=float, default=5e-5, help="(a) the Lasso penalty, scikit-learn's scale"
    )
    parser.add_argument("--repeats", type=int, default=9, help="(a) timed runs of ours (best)")
    parser.add_argument("--ref-repeats", type=int, default=3, help="(a) timed runs of the reference (best)")
    parser.add_argument("--repeats-b", type=int, default=2, help="(b) timed runs of each library (best)")
    parser.add_argument("--tasks", nargs="+", default=["regression", "classification"])
    parser.add_argument(
        "--block-sizes",
        type=_sizes,
        nargs="*",
        default=[(500, 500), (1000, 1000)],
        metavar="NxD",
        help="(b) sizes for the block mode",
    )
    parser.add_argument(
        "--exact-sizes",
        type=_sizes,
        nargs="*",
        default=[(400, 400)],
        metavar="NxD",
        help="(b) sizes for the exact mode",
    )
    parser.add_argument(
        "--big",
        action="store_true",
        help="(b) add the large sizes: block 2000x2000, exact 1024x1024 (pyHSICLasso skipped there)",
    )
    parser.add_argument(
        "--max-gb", type=float, default=8.0, help="(b) skip pyHSICLasso exact runs above this"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="(b) seconds per subprocess run")
    parser.add_argument("--no-pyhsiclasso", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.big:
        args.block_sizes = [*args.block_sizes, (2000, 2000)]
        args.exact_sizes = [*args.exact_sizes, (1024, 1024)]
    load_start = os.getloadavg()
    device = torch.device(args.device)
    env = environment(device)
    backend = resolve_backend(None, device).name
    print(f"{env['device']} | torch {env['torch']} | backend {backend} | commit {env['commit']}")
    record = {
        "benchmark": "hsic_lasso",
        **env,
        "backend": backend,
        "args": {k: v for k, v in vars(args).items() if k != "worker"},
    }
    sections = {}
    part_load = os.getloadavg()

    def provenance() -> str:
        nonlocal part_load
        line = (
            f"_Run: commit {env['commit']}, {env['date']}; torch {env['torch']}, python {env['python']}, "
            f"backend {backend}; load average (1, 5, 15 min) {_load(part_load)} at start, "
            f"{_load(os.getloadavg())} at end, on {os.cpu_count()} CPUs (above the CPU count: other jobs "
            "shared the machine)._\n\n"
        )
        part_load = os.getloadavg()
        return line

    has_sklearn = importlib.util.find_spec("sklearn") is not None
    if "a" in args.part and not has_sklearn:
        print("(a) skipped: the reference step needs scikit-learn, which is not installed; (a2) runs")
    if "a" in args.part and has_sklearn:
        rows, lines = part_a(args, device)
        record["per_layer"] = rows
        sections["a"] = (
            f"## (a) Per-layer APIB step, ResNet-50 layer shapes, n = {args.n}, α = {args.alpha:g}\n\n"
            "Ours: `hsic_lasso(x, y, alpha)` on float32 maps (Gram-form statistics, then the C×C "
            f"non-negative Lasso in float64), best of {args.repeats} after a warm-up. Reference: numpy "
            "Grams per channel, dense H·K·H, the explicit n²×C design and scikit-learn "
            "`Lasso(alpha, fit_intercept=False, positive=True)` (its defaults tol 1e-4, max_iter 1000), "
            f"best of {args.ref_repeats}, in two precisions: f64 builds H = np.eye(n) − 1/n in numpy's "
            "default float64, which promotes the design and the Lasso to float64 — the published reference "
            "code's route (its `centering` tiles np.eye(n)), so f64 is the reference step; f32 keeps the "
            "design in the maps' float32, a faster variant the reference code does not run. (The published "
            "code fits Lasso with its defaults, positive=False and selection='random'; both sides here "
            "solve the paper's positive problem, so that they solve the same one.) "
            "Converged: scikit-learn's Lasso on the f64 design run to tol 1e-8 "
            "(untimed), the exact kept set; the columns say whether each route keeps exactly that set. "
            "Synthetic layers (see the script's docstring); the output is 32 ReLU maps of the input's "
            "size. Times on a shared machine vary by several × between runs (load average below).\n\n"
            + provenance()
            + "\n".join(lines)
            + "\n"
        )
    if "a" in args.part:
        rows, lines = part_a_solvers(args, device)
        record["solvers"] = rows
        sections["a2"] = (
            f"## (a2) The Lasso solvers on the same (Q, b), device {device.type}\n\n"
            "`lasso_gram(Q, b, alpha, n², solver=...)` on each layer's statistics from (a): the compiled "
            'CPU coordinate descent ("cpu") against the batched projected Newton solver in tensor ops '
            f'("torch", on the device), at α = {args.alpha:g} and for {SOLVER_BATCH} penalties from α to '
            f"α/10 in one batched call; best of {args.repeats} after a warm-up. This decides which solver "
            "CUDA inputs should use by default (today: torch).\n\n" + provenance() + "\n".join(lines) + "\n"
        )
    if "b" in args.part:
        rows, lines = part_b(args)
        record["pyhsiclasso"] = rows
        try:
            from importlib.metadata import version

            pyh = version("pyhsiclasso")
        except Exception:  # noqa: BLE001  (any failure: report it as not installed)
            pyh = "not installed"
        sections["b"] = (
            f"## (b) Against pyHSICLasso {pyh} on n × d feature selection, top {TOP_K}\n\n"
            "Same data, same k; pyHSICLasso's settings mirrored (standardised features, Gaussian kernel "
            "of width 1, normalised Grams; block B = 20 with M = 3 permutations vs our block_size = 20, "
            "n_permutations = 3; for classes both use the delta kernel divided by the class sizes, "
            '`y_kernel="delta_norm"`). The "pyHSICLasso\'s partition" rows give ours the samples in the '
            "order of pyHSICLasso's first block pass (numpy seed 0) with one pass on both sides: the same "
            f"blocks, so the same problem. Seconds: best of {args.repeats_b} after a warm-up, each library "
            f"in its own process; × = pyHSICLasso time / ours. Overlap: features in both top-{TOP_K} lists. "
            f"Planted: how many of the {PLANTED} features y depends on are in the top {TOP_K}. Peak RSS: "
            "the run's process (VmHWM), interpreter, torch and data included; pyHSICLasso's joblib worker "
            "processes, which build its per-feature kernels, are not counted.\n\n"
            + provenance()
            + "\n".join(lines)
            + "\n"
        )
    record["load_average"] = {"start": load_start, "end": os.getloadavg()}
    append_jsonl(os.path.join(RESULTS, "hsic_lasso.jsonl"), record)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower()
    path = os.path.join(RESULTS, f"hsic_lasso_{slug}.md")
    kept = {k: v for k, v in _sections(path).items() if k not in sections}
    parts = {**kept, **sections}
    text = [
        f"# hsic_lasso benchmark\n\n{env['device']}. Each part names the run it comes from: a run of some "
        "parts keeps the other parts' latest results.\n",
        *(parts[k] for k in ("a", "a2", "b") if k in parts),
    ]
    write_atomic(path, "\n".join(text))


def _sections(path: str) -> dict:
    """The "## (part)" sections of an existing results file, by part ("a", "a2", "b"); {} if none. A
    section from a file written before sections named their run gets the file's commit and date."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        chunks = re.split(r"^(?=## \()", fh.read(), flags=re.M)
    old = re.search(r"commit (\S+); (\d{4}-\d\d-\d\d [\d:]+)\.", chunks[0])
    out = {}
    for chunk in chunks:
        m = re.match(r"## \((\w+)\)", chunk)
        if not m:
            continue
        if old and "_Run: " not in chunk:
            head, _, rest = chunk.partition("\n\n| ")
            run = f"_Run: commit {old.group(1)}, {old.group(2)} (load average: hsic_lasso.jsonl)._"
            chunk = f"{head}\n\n{run}\n\n| {rest}"
        out[m.group(1)] = chunk.rstrip("\n") + "\n"
    return out


if __name__ == "__main__":
    main()
