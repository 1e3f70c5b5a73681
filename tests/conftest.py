import math
import os

import numpy as np
import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter; it must be chosen before they are compiled.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from apib_kernels.backends import BACKENDS, unavailable_reason  # noqa: E402
from apib_kernels.selection import HSICLassoProblem  # noqa: E402


def backend_device(name: str) -> torch.device:
    """Where a backend's test tensors live: GPU backends on the GPU (Triton interpreted on the CPU)."""
    if name == "cuda" or (name == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


_MARKS = {"cuda": pytest.mark.cuda, "triton": pytest.mark.triton, "cpu": pytest.mark.ext}


@pytest.fixture(params=[pytest.param(b, marks=_MARKS.get(b, ())) for b in BACKENDS])
def backend(request):
    """Each backend in turn, skipped with the reason when it cannot run here."""
    name = request.param
    reason = unavailable_reason(name, backend_device(name).type)
    if reason:
        pytest.skip(f"backend {name}: {reason}")
    return name


def gram(A: np.ndarray, y: np.ndarray):
    """The Gram form (Q, b, c) = (AᵀA, Aᵀy, yᵀy) of the explicit design A and target y."""
    return torch.from_numpy(A.T @ A), torch.from_numpy(A.T @ y), float(y @ y)


def assert_kkt(Q, b, coef, alpha, n_rows, positive, tol=1e-7):
    """Optimality conditions of the Gram-form problem: g = b - Qβ equals λ·sign(β) on the support and
    |g| ≤ λ (positive: g ≤ λ) off it, to within tol·max|b|."""
    Q, b, w = Q.double(), b.double(), coef.double()
    lam = alpha * n_rows
    g = b - Q @ w
    slack = 2 * tol * float(b.abs().max())
    on = w != 0
    assert not positive or bool((w >= 0).all())
    assert np.max((g[on] - lam * w[on].sign()).abs().numpy(), initial=0.0) <= slack
    off = g[~on] if positive else g[~on].abs()
    assert np.max(off.numpy(), initial=-math.inf) <= lam + slack


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_sweep_solves(monkeypatch):
    """Every solve of an HSICLassoProblem (each solve of apib_kernels.selection's searches) stops
    after one plain CD sweep, so it does not converge; returns the list that grows by one entry per solve."""
    solves = []
    solve = HSICLassoProblem.solve

    def one_sweep(self, *args, **kwargs):
        solves.append(1)
        return solve(self, *args, **{**kwargs, "max_iter": 1, "newton": False})

    monkeypatch.setattr(HSICLassoProblem, "solve", one_sweep)
    return solves
