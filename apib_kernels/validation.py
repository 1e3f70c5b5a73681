"""Argument checks shared by apib_kernels and apib.

Numbers: each check returns the value as a plain int or float, or raises ValueError naming the
argument, the value expected and the value given (bools are rejected as numbers). Tensors: `check_tensor`,
`check_finite`, `features` and `check_samples` raise TypeError or ValueError naming the argument.
"""

import math
from numbers import Integral, Real

import torch


def is_int(v) -> bool:
    """Whether v is an integer (int, numpy integer, ...) and not a bool."""
    return isinstance(v, Integral) and not isinstance(v, bool)


def check_int(v, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """v as an int if it is an integer (not a bool) in [minimum, maximum] (either bound may be None)."""
    if is_int(v) and (minimum is None or v >= minimum) and (maximum is None or v <= maximum):
        return int(v)
    if minimum is not None and maximum is not None:
        need = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        need = f"an integer >= {minimum}"
    elif maximum is not None:
        need = f"an integer <= {maximum}"
    else:
        need = "an integer"
    raise ValueError(f"{name} must be {need}, got {v!r}")


def check_number(v, name: str, *, positive: bool = False, below: float | None = None) -> float:
    """v as a float if it is a finite real number (not a bool) >= 0 (> 0 when positive) and, when
    `below` is given, < below."""
    if (
        isinstance(v, Real)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and (v > 0 if positive else v >= 0)
        and (below is None or v < below)
    ):
        return float(v)
    if below is not None:
        need = f"a finite number in {'(' if positive else '['}0, {below})"
    else:
        need = "a positive finite number" if positive else "a finite number >= 0"
    raise ValueError(f"{name} must be {need}, got {v!r}")


def check_tensor(t, name: str) -> None:
    """TypeError unless t is a real (not complex) torch.Tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_complex():
        raise TypeError(f"{name} must be real, got complex dtype {t.dtype}")


def check_finite(t: torch.Tensor, name: str) -> None:
    """ValueError if a floating-point t holds NaN or ±inf."""
    # aminmax is exact here (NaN propagates, ±inf is an extreme) and ~20x faster than isfinite().all()
    if t.is_floating_point() and t.numel():
        lo, hi = torch.aminmax(t)
        if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
            raise ValueError(f"{name} contains NaN or infinite values")


def features(x, name: str = "x", scan: bool = True) -> torch.Tensor:
    """Checks a layer's feature maps x (n, C, *spatial) and returns their (n, C, D) view in the compute
    dtype (float32 for half precision, else x's float32 or float64). scan=False skips the NaN/Inf scan,
    for callers that check their results instead."""
    check_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (n, C, *spatial), got shape {tuple(x.shape)}")
    n, c = x.shape[:2]
    if n < 2:
        raise ValueError(f"{name} must hold at least 2 samples (n >= 2) to center a Gram matrix, got n={n}")
    if c == 0:
        raise ValueError(f"{name} must have at least one channel, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} has an empty spatial size, got shape {tuple(x.shape)}")
    if scan:
        check_finite(x, name)
    f = x.reshape(n, c, -1)
    return f if f.dtype in (torch.float32, torch.float64) else f.float()


def check_samples(y, n: int, device: torch.device, name: str = "y") -> torch.Tensor:
    """Checks that y is a real tensor with n samples in its first dimension, on `device` (x's)."""
    check_tensor(y, name)
    if y.dim() == 0 or y.shape[0] != n:
        raise ValueError(
            f"{name} must have n = {n} samples in its first dimension (like x), got shape {tuple(y.shape)}"
        )
    if y.device != device:
        raise ValueError(f"{name} must be on x's device {device}, got {y.device}")
    return y
