"""Backend registry: which implementations of the kernel ops exist here, and which one a call uses.

Choice order: the explicit `backend=` argument, else the APIB_BACKEND environment variable, else
automatic by device (CUDA tensors: cuda → triton → torch; CPU tensors: cpu → torch). Under
torch.use_deterministic_algorithms(True) the automatic choice for CUDA tensors is torch: the cuda and
triton kernels add row sums with float atomics, and raise (or warn, if warn_only) when asked for.
Given the work's shape, the automatic choice also takes torch for CUDA tensors when the tile-parallel
kernels would launch too few programs to fill a GPU (few channels of long feature vectors, such as
the one-channel output Gram of a layer): cuBLAS's split-K GEMM then spreads the features instead.
An explicit choice that cannot run raises BackendUnavailableError with the reason; the automatic
choice falls back to the next one quietly (see `python -m apib_kernels.info` for what is available and why).
"""

import importlib
import os
from dataclasses import dataclass
from types import ModuleType

import torch

from apib_kernels import extension, torch_backend

BACKENDS = ("cuda", "triton", "cpu", "torch")
_AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}
_ATOMIC_BACKENDS = ("cuda", "triton")  # not deterministic: row sums by float atomics
# The cuda and triton kernels run one program per (64-sample tile pair, channel), each walking all D
# features: with fewer programs than a GPU has multiprocessors (an H100/H200's 132) and long features,
# most of it idles. Measured on an H200 (benchmarks/results/hsic_matrix_nvidia-h200.md): 1×802816 at
# n = 64 and 512 (1 and 36 programs), cuda 58× and 11× torch's time; 3×50176 (3 and 108), 2.0× and 1.6×;
# 64×3136 at n = 64 (64 programs, short features), cuda 0.5-0.8× torch's time.
_MIN_GPU_PROGRAMS = 132
_LONG_FEATURES = 8192


def _too_few_programs(shape: tuple[int, int, int]) -> bool:
    n, c, d = shape
    tiles = -(-n // 64)
    return c * tiles * (tiles + 1) // 2 < _MIN_GPU_PROGRAMS and d >= _LONG_FEATURES


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here; the message says why."""


@dataclass(frozen=True)
class Backend:
    """The two kernel ops of one backend, with the contract of csrc/common.h."""

    name: str
    kernel_row_means: object
    centered_gram: object


def _compiled(name: str) -> Backend:
    ops = torch.ops.apib
    return Backend(name, ops.kernel_row_means, ops.centered_gram)


def _from_module(name: str, module: ModuleType) -> Backend:
    return Backend(name, module.kernel_row_means, module.centered_gram)


def _triton_import_error() -> str | None:
    try:
        importlib.import_module("triton")
    except ImportError as err:
        return f"triton is not installed ({err})"
    try:
        importlib.import_module("apib_kernels.triton_backend")
    except Exception as err:  # noqa: BLE001  (any failure makes the backend unavailable, with its reason)
        return f"apib_kernels.triton_backend failed to import: {err!r}"
    return None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(name: str, device_type: str | None = None) -> str | None:
    """None if backend `name` can run on `device_type` ("cpu", "cuda"; None: on any device), else why not."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {name!r}")
    if name == "torch":
        return None
    if name == "cpu":
        if device_type == "cuda":
            return "the cpu backend runs on CPU tensors only; x is on a CUDA device"
        if not extension.has_kernel("centered_gram", "CPU"):
            return extension.EXT_ERROR or "apib_kernels._C has no CPU kernels"
        return None
    if name == "cuda":
        if device_type == "cpu":
            return "the cuda backend runs on CUDA tensors only; x is on the CPU"
        if not extension.has_kernel("centered_gram", "CUDA"):
            return extension.EXT_ERROR or (
                "apib_kernels._C was built without CUDA kernels (no CUDA toolkit at build time, or "
                "APIB_BUILD_CUDA=0)"
            )
        if not torch.cuda.is_available():
            return "no CUDA GPU is visible to torch"
        return None
    reason = _triton_import_error()
    if reason:
        return reason
    if device_type == "cpu" and not _interpreting():
        return "triton runs CPU tensors only in its interpreter: set TRITON_INTERPRET=1"
    if device_type is None and not torch.cuda.is_available() and not _interpreting():
        return "no CUDA GPU is visible to torch, and TRITON_INTERPRET=1 is not set"
    return None


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends that can run here (on `device` if given), from "cuda", "triton", "cpu", "torch"."""
    device_type = None if device is None else torch.device(device).type
    return [name for name in BACKENDS if unavailable_reason(name, device_type) is None]


def _load(name: str) -> Backend:
    if name in ("cpu", "cuda"):
        return _compiled(name)
    if name == "triton":
        return _from_module(name, importlib.import_module("apib_kernels.triton_backend"))
    return _from_module(name, torch_backend)


def resolve_backend(
    backend: str | None, device: torch.device, shape: tuple[int, int, int] | None = None
) -> Backend:
    """The backend a call on tensors on `device` uses (see the module docstring for the order); `shape`,
    the (n, C, D) of the work, lets the automatic choice avoid kernels that could not fill a GPU."""
    if backend is None:
        backend = os.environ.get("APIB_BACKEND") or None
    if backend is not None:
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
        reason = unavailable_reason(backend, device.type)
        if reason:
            raise BackendUnavailableError(f"backend {backend!r} is unavailable: {reason}")
        return _load(backend)
    order = _AUTO_ORDER.get(device.type, ("torch",))
    if device.type == "cuda" and shape is not None and _too_few_programs(tuple(shape)):
        order = ("torch",)
    for name in order:
        if name in _ATOMIC_BACKENDS and torch.are_deterministic_algorithms_enabled():
            continue
        if unavailable_reason(name, device.type) is None:
            return _load(name)
    return _load("torch")


def synchronize(device: torch.device) -> None:
    """Waits for the work queued on a CUDA device (a no-op elsewhere), so that wall-clock timings measure
    the work rather than its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
