"""hsic_matrix per backend against the idiomatic PyTorch pipeline and the reference code's formulation.

Shapes: ResNet-50 layer inputs (C x D = 64x3136, 128x784, 256x196, 512x49), the stress shape
256x3136 and two few-channel shapes (3x50176, 1x802816), at n = 64 and 128 calibration images; labels as
the output (delta kernel).

FLOP count (nominal, the work of the plain formulation): Gram 2·C·n²·D + Q 2·C²·n². Our kernels use
the symmetry of the Grams and of Q and so do about half of it; GFLOP/s below is nominal FLOPs / time,
so it is comparable across implementations. Ratios are against the idiomatic pipeline and against
"bmm", the plain GEMMs of the same nominal FLOPs (linear Grams by one bmm, Q by one mm, no kernel
function or centering: the ceiling a fused kernel is held to), all measured in the same run.
Writes <results>/hsic_matrix.jsonl (appended) and hsic_matrix_<device>.md (default benchmarks/results).
"""

import argparse
import math
import os
import re

import numpy as np
import torch
from common import RESULTS, append_jsonl, bench, environment, write_atomic

import apib_kernels as ak

# ResNet-50 layer inputs, the stress shape, and two few-channel shapes (the stem's 3×224², one layer's
# output as a single long feature vector) where tile-parallel kernels launch few programs.
LAYERS = [(64, 3136), (128, 784), (256, 196), (512, 49), (256, 3136), (3, 50176), (1, 802816)]


def idiomatic(x, y, gamma):
    """What one writes in plain PyTorch: bmm → distances → exp → mean-centering → mm."""
    n, c = x.shape[:2]
    xt = x.reshape(n, c, -1).transpose(0, 1)
    g = torch.bmm(xt, xt.transpose(1, 2))
    sq = g.diagonal(dim1=1, dim2=2)
    k = torch.exp(-gamma * (sq[:, :, None] + sq[:, None, :] - 2 * g).clamp_min(0).sqrt())
    r = k.mean(2, keepdim=True)
    kbar = (k - r - r.transpose(1, 2) + r.mean(1, keepdim=True)).reshape(c, -1)
    same = (y[:, None] == y[None, :]).to(x.dtype)
    rl = same.mean(1, keepdim=True)
    lbar = same - rl - rl.T + rl.mean()
    return kbar @ kbar.T, kbar @ lbar.reshape(-1), (lbar * lbar).sum()


def gemm_ceiling(x):
    """The same nominal FLOPs as plain GEMMs: the linear Grams by bmm, then Q = G Gᵀ by mm."""
    n, c = x.shape[:2]
    xt = x.reshape(n, c, -1).transpose(0, 1)
    g = torch.bmm(xt, xt.transpose(1, 2)).reshape(c, -1)
    return g @ g.T


def reference_formulation(x: np.ndarray, y: np.ndarray, gamma: float):
    """The reference code's route: numpy Grams per channel, dense H @ K @ H, the explicit n²×C design."""
    n, c = x.shape[:2]
    h = np.eye(n, dtype=x.dtype) - 1.0 / n
    design = np.empty((n * n, c), dtype=x.dtype)
    for k in range(c):
        f = x[:, k].reshape(n, -1)
        sq = (f * f).sum(1)
        dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * f @ f.T, 0))
        design[:, k] = (h @ np.exp(-gamma * dist) @ h).reshape(-1)
    lbar = (h @ (y[:, None] == y[None, :]).astype(x.dtype) @ h).reshape(-1)
    return design.T @ design, design.T @ lbar, lbar @ lbar


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=[64, 128], help="calibration sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) numpy reference route")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--results", default=RESULTS, help="folder for the .jsonl and .md results")
    args = parser.parse_args()
    device = torch.device(args.device)
    env = environment(device)
    backends = [b for b in ak.available_backends(device) if not (b == "triton" and device.type == "cpu")]
    print(f"{env['device']} | torch {env['torch']} | commit {env['commit']}")
    columns = " | ".join(f"{b} s (×, × bmm)" for b in backends)
    head = f"| n | C×D | GFLOP | idiomatic s | bmm s (TFLOP/s) | {columns} |"
    head += "" if args.no_reference else " reference s (×) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    print(head)
    rows = []
    for n in args.n:
        for c, d in LAYERS:
            side = math.isqrt(d)
            x = torch.randn(n, c, side, side, device=device)
            y = torch.randint(0, 10, (n,), device=device)
            gamma = math.sqrt(0.5 / d)
            flops = 2 * c * n * n * d + 2 * c * c * n * n
            t_idiom = bench(lambda x=x, y=y, g=gamma: idiomatic(x, y, g), device, args.repeats)
            t_bmm = bench(lambda x=x: gemm_ceiling(x), device, args.repeats)
            row = {"n": n, "C": c, "D": d, "gflop": flops / 1e9, "idiomatic_s": t_idiom, "bmm_s": t_bmm}
            cells = [f"{n}", f"{c}×{d}", f"{flops / 1e9:.2f}", f"{t_idiom:.4f}"]
            cells.append(f"{t_bmm:.4f} ({flops / t_bmm / 1e12:.2f})")
            for b in backends:
                t = bench(lambda x=x, y=y, b=b: ak.hsic_matrix(x, y, backend=b), device, args.repeats)
                row[f"{b}_s"] = t
                row[f"{b}_gflops"] = flops / t / 1e9
                cells.append(f"{t:.4f} ({t_idiom / t:.2f}×, {t_bmm / t:.2f}×)")
            if not args.no_reference:
                xn, yn = x.cpu().numpy(), y.cpu().numpy()
                t_ref = bench(
                    lambda xn=xn, yn=yn, g=gamma: reference_formulation(xn, yn, g), torch.device("cpu"), 1, 0
                )
                row["reference_s"] = t_ref
                cells.append(f"{t_ref:.4f} ({t_idiom / t_ref:.2f}×)")
            line = "| " + " | ".join(cells) + " |"
            print(line, flush=True)
            lines.append(line)
            rows.append(row)
    record = {"benchmark": "hsic_matrix", **env, "rows": rows}
    os.makedirs(args.results, exist_ok=True)
    append_jsonl(os.path.join(args.results, "hsic_matrix.jsonl"), record)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower()
    text = (
        f"# hsic_matrix benchmark\n\n{env['device']}; torch {env['torch']}, triton {env['triton']}, "
        f"python {env['python']}; commit {env['commit']}; {env['date']}.\n\n"
        "Times are medians in seconds; (×) is the speed-up over the idiomatic PyTorch pipeline "
        "(bmm → distances → exp → centering → mm), (× bmm) the time of the plain GEMMs of the same "
        "nominal FLOPs (linear Grams by bmm, Q by mm) over ours, both measured in the same run. GFLOP is "
        "the nominal 2·C·n²·D + 2·C²·n².\n\n" + "\n".join(lines) + "\n"
    )
    write_atomic(os.path.join(args.results, f"hsic_matrix_{slug}.md"), text)


if __name__ == "__main__":
    main()
