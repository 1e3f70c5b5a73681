"""The batched projected Newton Lasso solver (`solve_batched`, lasso_gram's solver="torch") against
scikit-learn on the explicit design, the KKT conditions and the CPU solver; float64 on the CPU, plus the
same on CUDA where there is a GPU."""

import logging

import numpy as np
import pytest
import torch
from test_lasso import (
    _nnls_reference,
    assert_kkt,
    correlated_design,
    design_objective,
    gram,
    hsic_design,
    sk_lasso,
)

from apib_kernels import lasso as lasso_module
from apib_kernels.lasso import _solve, alpha_max, lasso_gram, lasso_path
from apib_kernels.lasso_batched import solve_batched

TOL = 1e-10


def symmetric(Q: torch.Tensor) -> torch.Tensor:
    return (Q + Q.transpose(-1, -2)) / 2


def solve(Q, b, alphas, n_rows, positive, coef0=None, tol=TOL, max_iter=10_000):
    """solve_batched on Q (B, C, C), b (B, C) and alphas (B,) (a list or tensor) -> coef, n_iter, viol."""
    Q, b = symmetric(Q.double()), b.double()
    alphas = torch.as_tensor(alphas, dtype=torch.float64, device=b.device)
    coef0 = torch.zeros_like(b) if coef0 is None else coef0.double()
    return solve_batched(Q, b, alphas, coef0, float(n_rows), positive, tol, max_iter)


def solve_cpu(Q, b, alphas, n_rows, positive, tol=TOL):
    """The CPU solver (compiled op or numpy) on the same batch -> coef (B, C)."""
    Q, b = symmetric(Q.double()), b.double()
    alphas = torch.as_tensor(alphas, dtype=torch.float64)
    return _solve(Q, b, alphas, torch.zeros_like(b), float(n_rows), positive, tol, 100_000, True)[0]


def relative_violation(Q, b, coef, alpha, n_rows, positive) -> float:
    """max_j v_j / max|b| of lasso.py's stopping rule for one problem, written out independently."""
    Q, b, w = Q.double().numpy(), b.double().numpy(), coef.double().numpy()
    lam = alpha * n_rows
    g = b - Q @ w
    at_zero = np.maximum((g if positive else np.abs(g)) - lam, 0.0)
    v = np.where(w > 0, np.abs(g - lam), np.where(w < 0, np.abs(g + lam), at_zero))
    v[np.diag(Q) <= 0] = 0.0
    return float(v.max()) / (float(np.abs(b).max()) or 1.0)


def assert_matches_sklearn(A, y, alpha, positive, coef):
    """Objective within 1e-6 (relative) of scikit-learn's, and the same support (well-conditioned designs)."""
    w_sk = sk_lasso(A, y, alpha, positive)
    w = coef.numpy()
    o, o_sk = design_objective(A, y, w, alpha), design_objective(A, y, w_sk, alpha)
    assert abs(o - o_sk) <= 1e-6 * abs(o_sk), f"objective {o!r} vs scikit-learn {o_sk!r}"
    np.testing.assert_array_equal(w != 0, w_sk != 0, err_msg="support differs from scikit-learn's")


def batch_of(*problems):
    """Stacks (Q, b) pairs of one width into Q (B, C, C), b (B, C)."""
    return torch.stack([p[0] for p in problems]), torch.stack([p[1] for p in problems])


# ---------------------------------------------------------------------------------------------------
# Against scikit-learn, the KKT conditions and the CPU solver


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
@pytest.mark.parametrize("c", [1, 7, 33, 128])
def test_matches_sklearn_on_random_designs(c, positive):
    rng = np.random.default_rng(c)
    n_rows = int(rng.integers(c + 20, 2 * c + 60))
    A, y = correlated_design(rng, n_rows, c)
    Q, b, _ = gram(A, y)
    fracs = [0.5, 0.05, 0.005]
    alphas = [f * float(alpha_max(b, n_rows, positive)) for f in fracs]
    coef, n_iter, viol = solve(Q.expand(3, c, c), b.expand(3, c), alphas, n_rows, positive)
    assert coef.shape == (3, c) and n_iter.dtype == torch.int64 and viol.dtype == torch.float64
    for p, alpha in enumerate(alphas):
        assert_matches_sklearn(A, y, alpha, positive, coef[p])
        assert_kkt(Q, b, coef[p], alpha, n_rows, positive, tol=TOL)
        assert float(viol[p]) <= TOL
        assert float(viol[p]) == pytest.approx(
            relative_violation(Q, b, coef[p], alpha, n_rows, positive), rel=1e-6, abs=1e-14
        )


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_matches_sklearn_on_centered_gram_design(positive):
    A, y = hsic_design()
    Q, b, _ = gram(A, y)
    n_rows, c = A.shape
    alphas = [f * float(alpha_max(b, n_rows, positive)) for f in (0.3, 0.03, 0.003)]
    coef, _, viol = solve(Q.expand(3, c, c), b.expand(3, c), alphas, n_rows, positive)
    assert bool((viol <= TOL).all())
    for p, alpha in enumerate(alphas):
        assert_matches_sklearn(A, y, alpha, positive, coef[p])
        assert_kkt(Q, b, coef[p], alpha, n_rows, positive, tol=TOL)


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_two_sample_centered_gram_design(positive):
    # with n = 2 samples every centered Gram is a multiple of [[1, -1], [-1, 1]]: Q has rank 1, and the
    # solution is not unique, but its objective is
    A, y = hsic_design(n=2, c=9)
    Q, b, _ = gram(A, y)
    assert int(torch.linalg.matrix_rank(Q)) == 1
    alphas = [f * float(alpha_max(b, 4, positive)) for f in (0.5, 0.01, 0.0)]
    coef, _, viol = solve(Q.expand(3, 9, 9), b.expand(3, 9), alphas, 4, positive)
    cpu = solve_cpu(Q.expand(3, 9, 9), b.expand(3, 9), alphas, 4, positive)
    assert bool((viol <= TOL).all())
    slack = 1e-12 * float(y @ y)  # at alpha = 0 the fit is exact: the optimum is 0
    for p, alpha in enumerate(alphas):
        assert_kkt(Q, b, coef[p], alpha, 4, positive, tol=TOL)
        o = design_objective(A, y, coef[p].numpy(), alpha)
        assert abs(o - design_objective(A, y, cpu[p].numpy(), alpha)) <= 1e-9 * abs(o) + slack
        if alpha > 0:
            o_sk = design_objective(A, y, sk_lasso(A, y, alpha, positive), alpha)
            assert o <= o_sk + 1e-6 * abs(o_sk)


def _assert_optimal_as_the_cpu_solver(designs, Q, b, alphas, n_rows, positive, coef):
    """coef (B, C) meets the KKT conditions of each problem and its design objective equals the CPU
    solver's to 1e-9 relative."""
    cpu = solve_cpu(Q, b, alphas, n_rows, positive)
    for p, (A, y) in enumerate(designs):
        alpha = float(alphas[p])
        assert_kkt(Q[p], b[p], coef[p], alpha, n_rows, positive, tol=TOL)
        o, o_cpu = (
            design_objective(A, y, coef[p].numpy(), alpha),
            design_objective(A, y, cpu[p].numpy(), alpha),
        )
        assert abs(o - o_cpu) <= 1e-9 * max(abs(o_cpu), 1e-300)


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
@pytest.mark.parametrize("batch, c", [(1, 1), (1, 64), (3, 5), (4, 17), (2, 96)])
def test_agrees_with_the_cpu_solver(batch, c, positive):
    rng = np.random.default_rng(100 * batch + c)
    n_rows = int(rng.integers(c // 2 + 2, 2 * c + 40))  # some designs have fewer rows than channels
    designs = [correlated_design(rng, n_rows, c) for _ in range(batch)]
    Q, b = batch_of(*(gram(A, y)[:2] for A, y in designs))
    alphas = torch.from_numpy(rng.uniform(0.0, 1.2, batch)) * alpha_max(b, n_rows, positive)
    coef, _, viol = solve(Q, b, alphas, n_rows, positive)
    assert bool((viol <= TOL).all())
    _assert_optimal_as_the_cpu_solver(designs, Q, b, alphas, n_rows, positive, coef)


def test_mixed_batch_of_easy_and_hard_problems():
    rng = np.random.default_rng(11)
    c, n_rows = 48, 144
    A0, y0 = hsic_design(n=12, c=c)
    A1, y1 = correlated_design(rng, n_rows, c)
    A2, y2 = correlated_design(rng, n_rows, c)
    designs = [(A0, y0), (A1, y1), (A2, y2), (A0, y0), (A1, y1), (A2, 0 * y2)]
    Q, b = batch_of(*(gram(A, y)[:2] for A, y in designs))
    top = alpha_max(b, n_rows, positive=True)
    # above alpha_max (nothing to do), hard, NNLS, moderate, small, all-zero b
    alphas = top * torch.tensor([2.0, 0.001, 0.0, 0.2, 0.01, 1.0], dtype=torch.float64)
    coef, n_iter, viol = solve(Q, b, alphas, n_rows, True)
    assert bool((viol <= TOL).all())
    assert torch.equal(coef[0], torch.zeros(c, dtype=torch.float64)) and int(n_iter[0]) == 0
    assert torch.equal(coef[5], torch.zeros(c, dtype=torch.float64)) and int(n_iter[5]) == 0
    assert bool((n_iter[1:5] > 0).all())
    _assert_optimal_as_the_cpu_solver(designs, Q, b, alphas, n_rows, True, coef)
    for p in range(len(designs)):
        # a problem's result does not depend on the others in its batch
        alone, _, _ = solve(Q[p : p + 1], b[p : p + 1], alphas[p : p + 1], n_rows, True)
        torch.testing.assert_close(alone[0], coef[p], rtol=0, atol=1e-12 * float(coef[p].abs().max()))


# ---------------------------------------------------------------------------------------------------
# Degenerate problems


def test_single_channel_closed_form():
    # β = soft-threshold(b, λ) / Q (positive: clipped at 0), λ = alpha·n_rows with n_rows = 2
    Q = torch.tensor([4.0, 4.0, 4.0, 0.5], dtype=torch.float64).reshape(4, 1, 1)
    b = torch.tensor([[3.0], [-3.0], [3.0], [-1.0]], dtype=torch.float64)
    alphas = [1.0, 1.0, 0.0, 0.25]
    for positive, want in ((True, [0.25, 0.0, 0.75, 0.0]), (False, [0.25, -0.25, 0.75, -1.0])):
        coef, _, viol = solve(Q, b, alphas, 2, positive)
        assert coef[:, 0].tolist() == pytest.approx(want, rel=1e-15)
        assert bool((viol <= TOL).all())


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_zero_b_gives_zeros(positive):
    A, _ = correlated_design(np.random.default_rng(12), 40, 10)
    Q = torch.from_numpy(A.T @ A).expand(3, 10, 10)
    coef, n_iter, viol = solve(Q, torch.zeros(3, 10), [0.0, 0.1, 10.0], 40, positive)
    assert torch.equal(coef, torch.zeros(3, 10, dtype=torch.float64))
    assert n_iter.tolist() == [0, 0, 0] and viol.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_alpha_max_gives_exact_zeros(positive):
    A, y = correlated_design(np.random.default_rng(1), 40, 30)
    Q, b, _ = gram(A, y)
    top = float(alpha_max(b, 40, positive))
    # cold, and warm-started from a dense solution that must be driven exactly to zero
    dense, _, _ = solve(Q[None], b[None], [0.01 * top], 40, positive)
    assert bool((dense != 0).sum() > 5)
    for start in (None, dense.expand(2, -1)):
        coef, _, viol = solve(Q.expand(2, 30, 30), b.expand(2, 30), [top, 2 * top], 40, positive, coef0=start)
        assert torch.equal(coef, torch.zeros(2, 30, dtype=torch.float64)) and bool((viol <= TOL).all())
    coef, _, _ = solve(Q[None], b[None], [0.999 * top], 40, positive)
    assert bool((coef != 0).any())


def test_alpha_zero_positive_is_nnls():
    A, y = correlated_design(np.random.default_rng(2), 80, 25)
    Q, b, _ = gram(A, y)
    coef, _, viol = solve(Q[None], b[None], [0.0], 80, True, tol=1e-12)
    coef = coef[0].numpy()
    ref_w = _nnls_reference(A, y)
    assert float(viol[0]) <= 1e-12
    assert design_objective(A, y, coef, 0.0) <= design_objective(A, y, ref_w, 0.0) * (1 + 1e-10)
    np.testing.assert_allclose(coef, ref_w, atol=1e-7 * np.abs(ref_w).max())
    assert (coef == 0).any() and (coef > 0).any()


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_duplicated_channels(positive):
    rng = np.random.default_rng(3)
    A, y = correlated_design(rng, 120, 20)
    A = np.concatenate([A, A[:, [3, 3, 11]]], axis=1)  # channel 3 three times, channel 11 twice
    Q, b, _ = gram(A, y)
    alphas = [f * float(alpha_max(b, 120, positive)) for f in (0.3, 0.01, 0.0)]
    coef, _, viol = solve(Q.expand(3, 23, 23), b.expand(3, 23), alphas, 120, positive)
    assert bool(torch.isfinite(coef).all()) and bool((viol <= TOL).all())
    for p, alpha in enumerate(alphas):
        assert_kkt(Q, b, coef[p], alpha, 120, positive, tol=TOL)
        if alpha > 0:
            w_ref = sk_lasso(A, y, alpha, positive)
        else:  # least squares, whose solutions here form a line (or, β ≥ 0, a segment)
            w_ref = _nnls_reference(A, y) if positive else np.linalg.lstsq(A, y, rcond=None)[0]
        o, o_ref = design_objective(A, y, coef[p].numpy(), alpha), design_objective(A, y, w_ref, alpha)
        assert abs(o - o_ref) <= 1e-6 * o_ref
        # the copies share one weight between them
        np.testing.assert_allclose(
            float(coef[p, [3, 20, 21]].sum()), w_ref[[3, 20, 21]].sum(), rtol=1e-5, atol=1e-9
        )


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_more_channels_than_the_rank_of_q(positive):
    rng = np.random.default_rng(9)
    A = rng.standard_normal((30, 90))
    y = A[:, :4] @ np.array([1.0, 2.0, -1.0, 0.5]) + 0.1 * rng.standard_normal(30)
    Q, b, _ = gram(A, y)
    alphas = [f * float(alpha_max(b, 30, positive)) for f in (0.1, 1e-3)]
    coef, _, viol = solve(Q.expand(2, 90, 90), b.expand(2, 90), alphas, 30, positive)
    assert bool((viol <= TOL).all())
    for p, alpha in enumerate(alphas):
        o = design_objective(A, y, coef[p].numpy(), alpha)
        o_sk = design_objective(A, y, sk_lasso(A, y, alpha, positive), alpha)
        assert o <= o_sk * (1 + 1e-6)
        assert_kkt(Q, b, coef[p], alpha, 30, positive, tol=TOL)
        assert int((coef[p] != 0).sum()) <= 30
    # the HSIC design of n = 8 samples: centered Grams span at most n(n-1)/2 = 28 dimensions < C
    A, y = hsic_design(n=8, c=40)
    Q, b, _ = gram(A, y)
    alphas = [f * float(alpha_max(b, 64, positive)) for f in (0.1, 0.01, 0.001)]
    coef, _, viol = solve(Q.expand(3, 40, 40), b.expand(3, 40), alphas, 64, positive)
    cpu = solve_cpu(Q.expand(3, 40, 40), b.expand(3, 40), alphas, 64, positive)
    assert bool((viol <= TOL).all())
    for p, alpha in enumerate(alphas):
        assert_kkt(Q, b, coef[p], alpha, 64, positive, tol=TOL)
        o, o_cpu = (
            design_objective(A, y, coef[p].numpy(), alpha),
            design_objective(A, y, cpu[p].numpy(), alpha),
        )
        assert abs(o - o_cpu) <= 1e-9 * abs(o_cpu)


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_zero_diagonal_entries_stay_zero(positive):
    A, y = correlated_design(np.random.default_rng(4), 60, 10)
    A[:, [0, 6]] = 0.0
    Q, b, _ = gram(A, y)
    alphas = [0.0, 0.01 * float(alpha_max(b, 60, positive))]
    coef0 = torch.ones(2, 10, dtype=torch.float64)  # even a warm start on them is discarded
    coef, _, viol = solve(Q.expand(2, 10, 10), b.expand(2, 10), alphas, 60, positive, coef0=coef0)
    assert bool((coef[:, [0, 6]] == 0).all()) and bool((coef != 0).any(1).all())
    assert bool((viol <= TOL).all())
    for p, alpha in enumerate(alphas):
        assert_kkt(Q, b, coef[p], alpha, 60, positive, tol=TOL)
    # a zero diagonal entry with a large b_j would make the objective unbounded: it is left out
    Q = torch.tensor([[[0.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    coef, _, viol = solve(Q, torch.tensor([[5.0, 1.0]]), [0.25], 2, positive)
    assert coef[0].tolist() == [0.0, 0.25] and float(viol[0]) == 0.0


# ---------------------------------------------------------------------------------------------------
# Warm starts and iteration limits


def test_warm_start():
    A, y = hsic_design(seed=2)
    Q, b, _ = gram(A, y)
    n_rows, c = A.shape
    top = float(alpha_max(b, n_rows))
    (cold, near), _, _ = solve(Q.expand(2, c, c), b.expand(2, c), [0.01 * top, 0.02 * top], n_rows, True)
    atol = 1e-8 * float(cold.abs().max())
    # from the solution itself: nothing to do
    again, n_iter, viol = solve(Q[None], b[None], [0.01 * top], n_rows, True, coef0=cold[None])
    assert int(n_iter[0]) == 0 and torch.equal(again[0], cold) and float(viol[0]) <= TOL
    # from the solution at a nearby penalty, and from a start outside the feasible set
    for start in (near, -torch.ones(c, dtype=torch.float64)):
        warm, _, viol = solve(Q[None], b[None], [0.01 * top], n_rows, True, coef0=start[None])
        torch.testing.assert_close(warm[0], cold, rtol=0, atol=atol)
        assert float(viol[0]) <= TOL


def test_max_iter_bounds_the_iterations(caplog):
    A, y = hsic_design(seed=3)
    Q, b, _ = gram(A, y)
    n_rows, c = A.shape
    alpha = 1e-3 * float(alpha_max(b, n_rows))
    coef, n_iter, viol = solve(Q[None], b[None], [alpha], n_rows, True, max_iter=1)
    assert int(n_iter[0]) == 1 and float(viol[0]) > TOL
    assert float(viol[0]) == pytest.approx(relative_violation(Q, b, coef[0], alpha, n_rows, True), rel=1e-9)
    with caplog.at_level(logging.WARNING, logger="apib_kernels"):
        lasso_gram(Q, b, alpha, n_rows, max_iter=1, solver="torch")
    assert "did not converge in max_iter=1 iterations" in caplog.text


# ---------------------------------------------------------------------------------------------------
# lasso_gram and lasso_path with solver="torch"


@pytest.fixture
def batched_calls(monkeypatch):
    """Records Q's device for every call of solve_batched made through apib_kernels.lasso."""
    calls = []
    solver = lasso_module.solve_batched

    def spy(Q, *args):
        calls.append(Q.device.type)
        return solver(Q, *args)

    monkeypatch.setattr(lasso_module, "solve_batched", spy)
    return calls


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_lasso_gram_torch_solver(positive, batched_calls):
    rng = np.random.default_rng(6)
    Q, b = batch_of(*(gram(*correlated_design(rng, 90, 40))[:2] for _ in range(4)))
    alphas = torch.tensor([0.5, 0.05, 0.005, 0.0], dtype=torch.float64) * alpha_max(b, 90, positive)
    coef = lasso_gram(Q, b, alphas, 90, positive=positive, tol=TOL, solver="torch")
    assert batched_calls == ["cpu"] and coef.shape == (4, 40) and coef.dtype == torch.float64
    cpu = lasso_gram(Q, b, alphas, 90, positive=positive, tol=TOL, solver="cpu")
    assert batched_calls == ["cpu"]
    np.testing.assert_array_equal(coef != 0, cpu != 0)
    torch.testing.assert_close(coef, cpu, rtol=0, atol=1e-7 * float(cpu.abs().max()))
    # one problem, float32 in and out
    q32, b32, alpha = Q[1].float(), b[1].float(), float(alphas[1])
    one = lasso_gram(q32, b32, alpha, 90, positive=positive, tol=TOL, solver="torch")
    assert one.dtype == torch.float32 and one.shape == (40,)
    one_cpu = lasso_gram(q32, b32, alpha, 90, positive=positive, tol=TOL, solver="cpu")
    torch.testing.assert_close(one, one_cpu, rtol=0, atol=1e-6 * float(one_cpu.abs().max()))


def test_default_solver_for_cpu_tensors_is_cpu(batched_calls):
    A, y = hsic_design(n=10, c=6)
    Q, b, _ = gram(A, y)
    lasso_gram(Q, b, 1e-4, 100)
    lasso_path(Q, b, 100, n_alphas=3)
    assert batched_calls == []


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_lasso_path_torch_solver(positive, batched_calls):
    A, y = hsic_design(seed=4)
    Q, b, _ = gram(A, y)
    n_rows = A.shape[0]
    alphas, coefs, nnz = lasso_path(Q, b, n_rows, positive=positive, n_alphas=12, solver="torch")
    assert batched_calls == ["cpu"] * 12
    cpu_alphas, cpu_coefs, cpu_nnz = lasso_path(Q, b, n_rows, positive=positive, n_alphas=12, solver="cpu")
    assert torch.equal(alphas, cpu_alphas) and torch.equal(nnz, cpu_nnz)
    assert bool((coefs[0] == 0).all()) and nnz.dtype == torch.int64
    torch.testing.assert_close(coefs, cpu_coefs, rtol=0, atol=1e-5 * float(cpu_coefs.abs().max()))
    for k in (3, 11):
        assert_kkt(Q, b, coefs[k], float(alphas[k]), n_rows, positive)


def test_unknown_solver_is_rejected():
    Q, b = torch.eye(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="solver must be one of \\('cpu', 'torch'\\) or None, got 'bogus'"):
        lasso_gram(Q, b, 0.1, 4, solver="bogus")
    with pytest.raises(ValueError, match="solver must be one of"):
        lasso_path(Q, b, 4, solver="gpu")


# ---------------------------------------------------------------------------------------------------
# On the GPU


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(positive):
    rng = np.random.default_rng(13)
    c, n_rows = 96, 144
    designs = [hsic_design(n=12, c=c), correlated_design(rng, n_rows, c), correlated_design(rng, 60, c)]
    Q, b = batch_of(*(gram(A, y)[:2] for A, y in designs))
    alphas = torch.tensor([0.3, 0.01, 0.001], dtype=torch.float64) * alpha_max(b, n_rows, positive)
    coef, n_iter, viol = solve(Q.cuda(), b.cuda(), alphas.cuda(), n_rows, positive)
    assert {t.device.type for t in (coef, n_iter, viol)} == {"cuda"}
    assert bool((viol <= TOL).all())
    ref, _, _ = solve(Q, b, alphas, n_rows, positive)
    coef = coef.cpu()
    for p in range(3):
        assert_kkt(Q[p], b[p], coef[p], float(alphas[p]), n_rows, positive, tol=TOL)
        np.testing.assert_array_equal(coef[p] != 0, ref[p] != 0)
        torch.testing.assert_close(coef[p], ref[p], rtol=0, atol=1e-8 * float(ref[p].abs().max()))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_inputs_are_solved_on_the_device(batched_calls):
    A, y = hsic_design(n=12, c=16)
    Q, b, _ = gram(A, y)
    n_rows = A.shape[0]
    alpha = 0.01 * float(alpha_max(b, n_rows))
    cpu = lasso_gram(Q, b, alpha, n_rows, tol=1e-10)
    out = lasso_gram(Q.cuda(), b.cuda(), alpha, n_rows, tol=1e-10)
    assert batched_calls == ["cuda"], "CUDA inputs should go to the batched solver, on the GPU"
    assert out.device.type == "cuda" and out.dtype == torch.float64
    np.testing.assert_array_equal(out.cpu() != 0, cpu != 0)
    torch.testing.assert_close(out.cpu(), cpu, rtol=0, atol=1e-8 * float(cpu.abs().max()))
    # the CPU solver on request: solved on the CPU, returned on the device
    on_cpu = lasso_gram(Q.cuda(), b.cuda(), alpha, n_rows, tol=1e-10, solver="cpu")
    assert batched_calls == ["cuda"] and on_cpu.device.type == "cuda"
    assert torch.equal(on_cpu.cpu(), cpu)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_lasso_path_on_cuda_uses_the_batched_solver(batched_calls):
    A, y = hsic_design(seed=4)
    Q, b, _ = gram(A, y)
    n_rows = A.shape[0]
    alphas, coefs, nnz = lasso_path(Q.cuda(), b.cuda(), n_rows, n_alphas=8)
    assert batched_calls == ["cuda"] * 8
    assert {t.device.type for t in (alphas, coefs, nnz)} == {"cuda"}
    _, cpu_coefs, cpu_nnz = lasso_path(Q, b, n_rows, n_alphas=8)
    assert torch.equal(nnz.cpu(), cpu_nnz)
    torch.testing.assert_close(coefs.cpu(), cpu_coefs, rtol=0, atol=1e-5 * float(cpu_coefs.abs().max()))
