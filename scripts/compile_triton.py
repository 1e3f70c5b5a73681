"""Compiles every Triton kernel variant the triton backend can launch for GPU targets, offline.

No GPU is needed: Triton lowers to PTX and assembles it with its bundled ptxas for the given target, so
a kernel that does not compile for sm_90 (or only compiles with a newer Triton) fails here, on a CPU
machine, rather than on the GPU. Prints one line per variant with its registers, spills and shared
memory (from the bundled cuobjdump), and exits 1 if any variant fails.

Usage: python scripts/compile_triton.py [--arch 90 80]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

os.environ.pop("TRITON_INTERPRET", None)  # interpreted kernels cannot be compiled

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from apib_kernels import triton_backend  # noqa: E402

_POINTER = {torch.float32: "*fp32", torch.float64: "*fp64"}
_NUM_WARPS = 4  # what the launchers pass


def signature(fn, dtype: torch.dtype, constexprs: dict) -> dict:
    """Argument types: pointers (named *_ptr) of the dtype, 32-bit integers, and the constexprs."""
    return {
        name: "constexpr" if name in constexprs else _POINTER[dtype] if name.endswith("_ptr") else "i32"
        for name in fn.arg_names
    }


def resources(cubin: bytes) -> str:
    """Registers, spill stores and shared memory of a cubin, from the cuobjdump that ships with Triton."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True)
    fields = dict(re.findall(r"\b(REG|SHARED|LOCAL):(\d+)", out.stdout))
    if not fields:
        return "resources n/a"
    reg, local, shared = (fields.get(k, "?") for k in ("REG", "LOCAL", "SHARED"))
    return f"{reg} regs, {local} B local, {shared} B smem"


def describe(fn, dtype: torch.dtype, constexprs: dict) -> str:
    args = " ".join(f"{k}={int(v)}" for k, v in constexprs.items())
    return f"{fn.__name__} {str(dtype).removeprefix('torch.')} {args}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], help="compute capabilities")
    args = parser.parse_args(argv)
    print(f"triton {triton.__version__}, torch {torch.__version__}", flush=True)
    failures = 0
    count = 0
    start = time.perf_counter()
    for arch in args.arch:
        target = GPUTarget("cuda", arch, 32)
        for fn, dtype, constexprs in triton_backend.launch_variants():
            count += 1
            name = f"sm_{arch} {describe(fn, dtype, constexprs)}"
            try:
                src = ASTSource(fn, signature(fn, dtype, constexprs), constexprs)
                kernel = triton.compile(src, target=target, options={"num_warps": _NUM_WARPS})
            except Exception as err:  # noqa: BLE001  (report every failing variant, then fail)
                failures += 1
                cause = err.__cause__ or err  # Triton wraps the cause in a CompilationError
                where = traceback.extract_tb(cause.__traceback__)[-1]
                print(
                    f"FAIL {name}: {type(cause).__name__} {str(cause).strip()[:300]} "
                    f"(at {os.path.basename(where.filename)}:{where.lineno})",
                    flush=True,
                )
                continue
            print(f"ok   {name}: {resources(kernel.asm['cubin'])}", flush=True)
    seconds = time.perf_counter() - start
    archs = ", ".join(f"sm_{a}" for a in args.arch)
    print(f"{count - failures} of {count} variants compiled for {archs} in {seconds:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
