"""Shared benchmark plumbing: environment capture, timing, atomic result files."""

import json
import os
import platform
import statistics
import subprocess
import tempfile
import time

import torch

from apib_kernels.backends import synchronize

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def device_name(device: torch.device | str) -> str:
    """The hardware behind a torch device: the GPU's name, or the CPU's with the threads torch uses."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return str(device)
    name = f"{platform.processor() or platform.machine()} CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    return f"{name}, {threads} thread{'' if threads == 1 else 's'}"


def environment(device: torch.device | str) -> dict:
    """The device the benchmark runs on (see `device_name`), versions, driver and commit, recorded beside
    every result. APIB_COMMIT names the commit where the tree is a copy without git (a lent GPU machine)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit += "-dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    commit = os.environ.get("APIB_COMMIT", commit)
    driver = None
    if torch.device(device).type == "cuda":
        try:
            driver = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            driver = "unknown"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "driver": driver,
        "triton": triton_version,
        "python": platform.python_version(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def bench(fn, device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_atomic(path: str, text: str) -> None:
    """Write text to path via a temporary file and rename, so an interrupted run leaves no half file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def append_jsonl(path: str, record: dict) -> None:
    """Append one result row (read, extend, atomic rewrite: a crash never truncates earlier rows)."""
    old = open(path).read() if os.path.exists(path) else ""
    write_atomic(path, old + json.dumps(record) + "\n")
