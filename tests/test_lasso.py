"""The Gram-form Lasso solver against scikit-learn's Lasso on the explicit design, and its own contract."""

import functools
import logging
import math

import numpy as np
import pytest
import torch
from conftest import assert_kkt, gram

from apib_kernels import extension
from apib_kernels import reference as ref
from apib_kernels.lasso import (
    _solve,
    alpha_max,
    collect_convergence_warnings,
    lasso_gram,
    lasso_objective,
    lasso_path,
)

sklearn_linear = pytest.importorskip("sklearn.linear_model")

COMPILED = extension.has_kernel("lasso_cd", "CPU")
needs_ext = [
    pytest.mark.ext,
    pytest.mark.skipif(not COMPILED, reason="extension with apib::lasso_cd not built"),
]


@pytest.fixture(params=[pytest.param("compiled", marks=needs_ext), "numpy"])
def solver(request, monkeypatch):
    """Each implementation in turn: the compiled op, and the numpy fallback (as without the extension)."""
    if request.param == "numpy":
        monkeypatch.setattr(extension, "has_kernel", lambda op, key: False)
    return request.param


def sk_lasso(A, y, alpha, positive):
    model = sklearn_linear.Lasso(
        alpha=alpha, fit_intercept=False, positive=positive, tol=1e-10, max_iter=100_000
    )
    return model.fit(A, y).coef_


def design_objective(A, y, w, alpha) -> float:
    """scikit-learn's Lasso objective, evaluated on the explicit design."""
    r = y - A @ w
    return float(r @ r) / (2 * A.shape[0]) + alpha * float(np.abs(w).sum())


def correlated_design(rng, n_rows, c):
    """Columns sharing a few latent factors (pairwise correlations ~0.5-0.9), like a layer's channels."""
    latent = rng.standard_normal((n_rows, 4))
    A = latent @ rng.standard_normal((4, c)) + 0.5 * rng.standard_normal((n_rows, c))
    y = latent @ rng.standard_normal(4) + rng.standard_normal(n_rows)
    return A, y


def hsic_design(n=20, c=24, seed=0):
    """The reference code's explicit design: A = [vec(K̄_1) … vec(K̄_C)], y = vec(L̄), n² rows."""
    A, y = _hsic_design(n, c, seed)
    return A.copy(), y.copy()


@functools.lru_cache
def _hsic_design(n, c, seed):
    # n x n products are far too small for threads; on a busy machine their start-up cost dominates
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _centered_gram_design(n, c, seed)
    finally:
        torch.set_num_threads(threads)


def _centered_gram_design(n, c, seed):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(n, 3, 9, generator=g)
    x = torch.relu(
        torch.einsum("nkd,ck->ncd", lat, torch.randn(c, 3, generator=g)) + torch.randn(n, c, 9, generator=g)
    )
    y = lat[:, 0] + 0.3 * torch.randn(n, 9, generator=g)
    k = ref.centered_gram(x.double(), "laplace")
    ell = ref.output_gram(y.double(), "laplace")
    return k.reshape(c, -1).T.numpy(), ell.reshape(-1).numpy()


def assert_matches_sklearn(A, y, alpha, positive, coef):
    w_sk = sk_lasso(A, y, alpha, positive)
    w = coef.numpy()
    o, o_sk = design_objective(A, y, w, alpha), design_objective(A, y, w_sk, alpha)
    assert o <= o_sk + 1e-6 * abs(o_sk), f"objective {o!r} vs scikit-learn {o_sk!r}"
    assert abs(o - o_sk) <= 1e-6 * abs(o_sk)
    np.testing.assert_array_equal(w != 0, w_sk != 0, err_msg="support differs from scikit-learn's")


# ---------------------------------------------------------------------------------------------------
# Against scikit-learn


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_sklearn_on_random_designs(solver, seed, positive):
    rng = np.random.default_rng(seed)
    c = [1, 7, 60, 256][seed]
    n_rows = int(rng.integers(c + 20, 2 * c + 60))
    A, y = correlated_design(rng, n_rows, c)
    Q, b, _ = gram(A, y)
    if positive and float(b.max()) <= 0:
        b, y = -b, -y  # keep something to select
    for frac in (0.5, 0.05):
        alpha = frac * float(alpha_max(b, n_rows, positive))
        coef = lasso_gram(Q, b, alpha, n_rows, positive=positive, tol=1e-10)
        assert coef.shape == (c,) and coef.dtype == torch.float64
        assert_matches_sklearn(A, y, alpha, positive, coef)
        assert_kkt(Q, b, coef, alpha, n_rows, positive, tol=1e-10)


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_matches_sklearn_on_centered_gram_design(solver, positive):
    A, y = hsic_design()
    Q, b, c = gram(A, y)
    n_rows = A.shape[0]
    for frac in (0.3, 0.03, 0.003):
        alpha = frac * float(alpha_max(b, n_rows, positive))
        coef = lasso_gram(Q, b, alpha, n_rows, positive=positive, tol=1e-10)
        assert_matches_sklearn(A, y, alpha, positive, coef)
        torch.testing.assert_close(
            lasso_objective(Q, b, c, coef, alpha, n_rows),
            torch.tensor(design_objective(A, y, coef.numpy(), alpha), dtype=torch.float64),
            rtol=1e-12,
            atol=0,
        )


def test_default_tolerance_is_accurate(solver):
    rng = np.random.default_rng(5)
    A, y = correlated_design(rng, 300, 120)
    Q, b, _ = gram(A, y)
    for positive in (True, False):
        alpha = 0.02 * float(alpha_max(b, 300, positive))
        coef = lasso_gram(Q, b, alpha, 300, positive=positive)
        assert_kkt(Q, b, coef, alpha, 300, positive)
        assert_matches_sklearn(A, y, alpha, positive, coef)


# ---------------------------------------------------------------------------------------------------
# Special cases


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_alpha_max_gives_exact_zeros(solver, positive):
    rng = np.random.default_rng(1)
    for n_rows in (7, 100, 3.5):
        A, y = correlated_design(rng, 40, 30)
        Q, b, _ = gram(A, y)
        top = alpha_max(b, n_rows, positive)
        assert top.dtype == torch.float64 and top.shape == ()
        assert float(top) * n_rows >= float(b.max() if positive else b.abs().max())
        for alpha in (float(top), 2 * float(top)):
            assert torch.equal(
                lasso_gram(Q, b, alpha, n_rows, positive=positive), torch.zeros(30, dtype=torch.float64)
            )
        assert bool((lasso_gram(Q, b, 0.999 * float(top), n_rows, positive=positive) != 0).any())
    assert float(alpha_max(-torch.ones(3), 5, True)) == 0.0
    torch.testing.assert_close(
        alpha_max(torch.tensor([[1.0, -4.0], [2.0, 0.0]]), 2, False),
        torch.tensor([2.0, 1.0], dtype=torch.float64),
    )


def _nnls_reference(A, y):
    try:
        from scipy.optimize import nnls
    except ImportError:
        nnls = None
    if nnls is not None:
        return nnls(A, y, maxiter=100 * A.shape[1])[0]
    Q, b = A.T @ A, A.T @ y
    step = 1.0 / np.linalg.eigvalsh(Q)[-1]
    w = np.zeros(A.shape[1])
    for _ in range(200_000):
        w = np.maximum(w - step * (Q @ w - b), 0.0)
    return w


def test_alpha_zero_positive_is_nnls(solver):
    rng = np.random.default_rng(2)
    A, y = correlated_design(rng, 80, 25)
    Q, b, _ = gram(A, y)
    coef = lasso_gram(Q, b, 0.0, 80, positive=True, tol=1e-12).numpy()
    ref_w = _nnls_reference(A, y)
    assert design_objective(A, y, coef, 0.0) <= design_objective(A, y, ref_w, 0.0) * (1 + 1e-10)
    np.testing.assert_allclose(coef, ref_w, atol=1e-7 * np.abs(ref_w).max())
    assert (coef == 0).any() and (coef > 0).any()


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_duplicated_channels(solver, positive):
    rng = np.random.default_rng(3)
    A, y = correlated_design(rng, 120, 20)
    A = np.concatenate([A, A[:, [3, 3, 11]]], axis=1)  # channel 3 three times, channel 11 twice
    Q, b, _ = gram(A, y)
    for frac in (0.3, 0.01):
        alpha = frac * float(alpha_max(b, 120, positive))
        coef = lasso_gram(Q, b, alpha, 120, positive=positive, tol=1e-10)
        assert bool(torch.isfinite(coef).all())
        w_sk = sk_lasso(A, y, alpha, positive)
        o, o_sk = design_objective(A, y, coef.numpy(), alpha), design_objective(A, y, w_sk, alpha)
        assert abs(o - o_sk) <= 1e-6 * o_sk
        assert_kkt(Q, b, coef, alpha, 120, positive, tol=1e-10)
        # the copies share one weight between them
        np.testing.assert_allclose(
            float(coef[[3, 20, 21]].sum()), w_sk[[3, 20, 21]].sum(), rtol=1e-5, atol=1e-9
        )


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_more_channels_than_rows(solver, positive, caplog):
    # Q has rank 30 < C: supports the design cannot pin down make Q_SS singular along the way
    rng = np.random.default_rng(9)
    A = rng.standard_normal((30, 90))
    y = A[:, :4] @ np.array([1.0, 2.0, -1.0, 0.5]) + 0.1 * rng.standard_normal(30)
    Q, b, _ = gram(A, y)
    with caplog.at_level(logging.WARNING, logger="apib_kernels"):
        for frac in (0.1, 1e-3):
            alpha = frac * float(alpha_max(b, 30, positive))
            coef = lasso_gram(Q, b, alpha, 30, positive=positive, tol=1e-10)
            o, o_sk = (
                design_objective(A, y, coef.numpy(), alpha),
                design_objective(A, y, sk_lasso(A, y, alpha, positive), alpha),
            )
            assert o <= o_sk * (1 + 1e-6)
            assert_kkt(Q, b, coef, alpha, 30, positive, tol=1e-10)
            assert int((coef != 0).sum()) <= 30
    assert "did not converge" not in caplog.text


@pytest.mark.parametrize("seed", range(4))
def test_unpenalised_signed_fit_on_dependent_columns(solver, seed, caplog):
    # alpha = 0, positive=False: plain least squares whose minimisers form an affine set (columns that
    # are multiples of others, sometimes fewer rows than columns). The support Newton step used to move
    # along that set without bound (beta past 1e100) and never converge; it must stay bounded.
    rng = np.random.default_rng(seed)
    c = int(rng.integers(8, 40))
    rows = int(rng.integers(c // 2, 2 * c))
    A = rng.standard_normal((rows, c))
    k = int(rng.integers(1, c // 2))
    src, dst = rng.choice(c, size=k, replace=False), rng.choice(c, size=k, replace=False)
    A[:, dst] = A[:, src] * rng.uniform(-2, 2, size=k)
    y = rng.standard_normal(rows)
    Q, b, _ = gram(A, y)
    with caplog.at_level(logging.WARNING, logger="apib_kernels"):
        coef = lasso_gram(Q, b, 0.0, rows, positive=False)
    assert "did not converge" not in caplog.text
    assert_kkt(Q, b, coef, 0.0, rows, False)
    w_min, *_ = np.linalg.lstsq(A, y, rcond=None)
    o, o_min = design_objective(A, y, coef.numpy(), 0.0), design_objective(A, y, w_min, 0.0)
    assert o <= o_min + 1e-9 * float(y @ y) / rows


def test_single_channel_closed_form(solver):
    Q, b = torch.tensor([[4.0]]), torch.tensor([3.0])
    assert lasso_gram(Q, b, 1.0, 2, positive=True).item() == pytest.approx((3.0 - 2.0) / 4.0, rel=1e-15)
    assert lasso_gram(Q, -b, 1.0, 2, positive=True).item() == 0.0
    assert lasso_gram(Q, -b, 1.0, 2, positive=False).item() == pytest.approx(-0.25, rel=1e-15)
    assert lasso_gram(Q, b, 0.0, 2).item() == pytest.approx(0.75, rel=1e-15)


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_constant_channels_get_zero(solver, positive):
    rng = np.random.default_rng(4)
    A, y = correlated_design(rng, 60, 10)
    A[:, [0, 6]] = 0.0
    Q, b, _ = gram(A, y)
    coef0 = torch.ones(10, dtype=torch.float64)  # even a warm start on them is discarded
    for alpha in (0.0, 0.01 * float(alpha_max(b, 60, positive))):
        coef = lasso_gram(Q, b, alpha, 60, positive=positive, coef0=coef0)
        assert bool(torch.isfinite(coef).all()) and coef[0] == 0 and coef[6] == 0
        assert bool((coef != 0).any())
    # a constant channel in the HSIC design: its centered Gram is exactly zero
    A, y = hsic_design(n=12, c=6)
    A[:, 2] = 0.0
    Q, b, _ = gram(A, y)
    coef = lasso_gram(Q, b, 0.01 * float(alpha_max(b, 144, positive)), 144, positive=positive)
    assert bool(torch.isfinite(coef).all()) and coef[2] == 0


def test_plain_coordinate_descent_agrees(solver):
    A, y = hsic_design(seed=1)
    Q, b, _ = gram(A, y)
    alpha = 0.02 * float(alpha_max(b, A.shape[0]))
    fast = lasso_gram(Q, b, alpha, A.shape[0], tol=1e-10)
    plain = lasso_gram(Q, b, alpha, A.shape[0], tol=1e-10, newton=False, max_iter=200_000)
    np.testing.assert_array_equal(fast != 0, plain != 0)
    torch.testing.assert_close(plain, fast, rtol=0, atol=1e-6 * float(fast.abs().max()))


# ---------------------------------------------------------------------------------------------------
# Batching, warm starts, dtypes and devices


def _batch(rng, B=6, c=40, n_rows=90):
    Qs, bs = [], []
    for _ in range(B):
        A, y = correlated_design(rng, n_rows, c)
        Q, b, _ = gram(A, y)
        Qs.append(Q)
        bs.append(b)
    return torch.stack(Qs), torch.stack(bs)


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_batched_equals_one_at_a_time(solver, positive):
    Q, b = _batch(np.random.default_rng(6))
    alphas = torch.tensor([0.5, 0.1, 0.02, 0.005, 0.0, 1.5], dtype=torch.float64) * alpha_max(b, 90, positive)
    coef = lasso_gram(Q, b, alphas, 90, positive=positive)
    assert coef.shape == (6, 40)
    for p in range(6):
        assert torch.equal(coef[p], lasso_gram(Q[p], b[p], float(alphas[p]), 90, positive=positive))
    # one scalar alpha for every problem (several layers at one penalty)
    same = lasso_gram(Q, b, float(alphas[2]), 90, positive=positive)
    assert torch.equal(same[1], lasso_gram(Q[1], b[1], float(alphas[2]), 90, positive=positive))
    # several penalties for one layer
    many = lasso_gram(Q[:1].expand(6, -1, -1), b[:1].expand(6, -1), alphas, 90, positive=positive)
    assert torch.equal(many[3], lasso_gram(Q[0], b[0], float(alphas[3]), 90, positive=positive))


def test_warm_start(solver):
    A, y = hsic_design(seed=2)
    Q, b, _ = gram(A, y)
    n_rows = A.shape[0]
    top = float(alpha_max(b, n_rows))
    cold = lasso_gram(Q, b, 0.01 * top, n_rows, tol=1e-10)
    near = lasso_gram(Q, b, 0.02 * top, n_rows, tol=1e-10)
    warm = lasso_gram(Q, b, 0.01 * top, n_rows, tol=1e-10, coef0=near)
    torch.testing.assert_close(warm, cold, rtol=0, atol=1e-8 * float(cold.abs().max()))
    # a start outside the feasible set is projected onto beta >= 0
    bad = lasso_gram(Q, b, 0.01 * top, n_rows, tol=1e-10, coef0=-torch.ones_like(b))
    torch.testing.assert_close(bad, cold, rtol=0, atol=1e-8 * float(cold.abs().max()))


def test_float32_inputs_give_float32(solver):
    A, y = hsic_design(n=10, c=5)
    Q, b, _ = gram(A, y)
    out = lasso_gram(Q.float(), b.float(), 0.01 * float(alpha_max(b, 100)), 100)
    assert out.dtype == torch.float32 and out.shape == (5,)
    assert lasso_gram(Q.float(), b, 0.0, 100).dtype == torch.float64


def test_non_convergence_is_logged(solver, caplog):
    A, y = hsic_design(seed=3)
    Q, b, _ = gram(A, y)
    with caplog.at_level(logging.WARNING, logger="apib_kernels"):
        lasso_gram(Q, b, 1e-3 * float(alpha_max(b, A.shape[0])), A.shape[0], max_iter=1, newton=False)
    assert "did not converge" in caplog.text


def _unconverged(caplog):
    return [r for r in caplog.records if r.name == "apib_kernels" and "did not converge" in r.getMessage()]


def test_non_convergence_is_summarised_once_in_a_collecting_block(caplog):
    A, y = hsic_design(seed=3)
    Q, b, _ = gram(A, y)
    alpha, n_rows = 1e-3 * float(alpha_max(b, A.shape[0])), A.shape[0]

    def solve(**kwargs):
        return lasso_gram(Q, b, alpha, n_rows, max_iter=1, newton=False, **kwargs)

    with caplog.at_level(logging.WARNING, logger="apib_kernels"):
        for _ in range(3):
            solve()
        assert len(_unconverged(caplog)) == 3, "a direct call warns every time"
        caplog.clear()
        with collect_convergence_warnings():
            for _ in range(3):
                solve()
            lasso_gram(Q, b, alpha, n_rows)  # converges: counted, not reported
            with collect_convergence_warnings():  # a nested block reports to the outer one
                solve(tol=1e-3)
                lasso_gram(Q.expand(2, -1, -1), b.expand(2, -1), alpha, n_rows, max_iter=1, newton=False)
            assert not _unconverged(caplog)
    (record,) = _unconverged(caplog)
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert message.startswith("lasso: 5 of 6 solves (6 of 7 problems) did not converge")
    # the worst relative to its tol: a tol=1e-7 solve, not the tol=1e-3 one
    assert "> tol=1e-07 after max_iter=1 sweeps" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="apib_kernels"):
        with collect_convergence_warnings():
            lasso_gram(Q, b, alpha, n_rows)
        solve()
    assert len(_unconverged(caplog)) == 1, "nothing to report from the block; the direct call warns"


# ---------------------------------------------------------------------------------------------------
# Regularization path


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_lasso_path(solver, positive):
    A, y = hsic_design(seed=4)
    Q, b, _ = gram(A, y)
    n_rows, c = A.shape
    alphas, coefs, nnz = lasso_path(Q, b, n_rows, positive=positive, n_alphas=12, eps=1e-3)
    assert (
        alphas.shape == (12,) and coefs.shape == (12, c) and nnz.shape == (12,) and nnz.dtype == torch.int64
    )
    assert bool((alphas[1:] < alphas[:-1]).all())
    assert float(alphas[0]) == float(alpha_max(b, n_rows, positive))
    torch.testing.assert_close(alphas[-1], alphas[0] * 1e-3, rtol=1e-12, atol=0)
    assert bool((coefs[0] == 0).all()) and nnz[0] == 0 and nnz[-1] > 0
    assert torch.equal(nnz, (coefs != 0).sum(1))
    for k in (3, 11):
        cold = lasso_gram(Q, b, float(alphas[k]), n_rows, positive=positive)
        assert_kkt(Q, b, coefs[k], float(alphas[k]), n_rows, positive)
        torch.testing.assert_close(coefs[k], cold, rtol=0, atol=1e-5 * float(cold.abs().max()))
        np.testing.assert_array_equal(coefs[k] != 0, cold != 0)


def test_lasso_path_given_alphas_are_sorted(solver):
    A, y = hsic_design(n=10, c=6)
    Q, b, _ = gram(A, y)
    top = float(alpha_max(b, 100))
    alphas, coefs, _ = lasso_path(Q, b, 100, alphas=[0.1 * top, 2 * top, 0.5 * top])
    assert alphas.tolist() == [2 * top, 0.5 * top, 0.1 * top]
    assert torch.equal(coefs[2], lasso_gram(Q, b, 0.1 * top, 100, coef0=coefs[1]))
    # nothing to select: the grid is flat, as in scikit-learn
    alphas, coefs, nnz = lasso_path(Q, -b.abs(), 100, n_alphas=3)
    assert bool((alphas > 0).all()) and bool((coefs == 0).all()) and bool((nnz == 0).all())


# ---------------------------------------------------------------------------------------------------
# The compiled op


@pytest.mark.ext
@pytest.mark.skipif(not COMPILED, reason="extension with apib::lasso_cd not built")
@pytest.mark.parametrize("newton", [True, False])
def test_compiled_equals_fallback(newton):
    # plain CD needs thousands of sweeps at a tight tol: a smaller problem keeps the numpy side quick
    c, tol = (64, 1e-10) if newton else (24, 1e-8)
    Q, b = _batch(np.random.default_rng(7), B=4, c=c, n_rows=150)
    for positive in (True, False):
        alpha = torch.tensor([0.3, 0.05, 0.01, 0.0], dtype=torch.float64) * alpha_max(b, 150, positive)
        args = (Q, b, alpha, torch.zeros_like(b), 150.0, positive, tol, 100_000, newton)
        c_coef, c_it, c_v = _solve(*args, compiled=True)
        n_coef, n_it, n_v = _solve(*args, compiled=False)
        torch.testing.assert_close(c_coef, n_coef, rtol=0, atol=1e-10 * float(n_coef.abs().max()))
        assert torch.equal(c_coef != 0, n_coef != 0)
        assert bool((c_v <= tol).all()) and bool((n_v <= tol).all())
        if not newton:
            assert torch.equal(c_it, n_it)


@pytest.mark.ext
@pytest.mark.skipif(not COMPILED, reason="extension with apib::lasso_cd not built")
def test_compiled_op_passes_opcheck():
    Q, b = _batch(np.random.default_rng(8), B=3, c=7, n_rows=20)
    alpha = torch.tensor([0.1, 0.01, 0.0], dtype=torch.float64)
    torch.library.opcheck(
        torch.ops.apib.lasso_cd.default, (Q, b, alpha, torch.zeros_like(b), 20.0, True, 1e-8, 1000, True)
    )


# ---------------------------------------------------------------------------------------------------
# Input checks


Q2 = torch.eye(3, dtype=torch.float64)
B2 = torch.ones(3, dtype=torch.float64)
BAD = [
    (lambda: lasso_gram(Q2.numpy(), B2, 0.1, 4), TypeError, "Q must be a torch.Tensor"),
    (lambda: lasso_gram(Q2.int(), B2, 0.1, 4), TypeError, "Q must be float32 or float64"),
    (lambda: lasso_gram(Q2.half(), B2, 0.1, 4), TypeError, "Q must be float32 or float64"),
    (lambda: lasso_gram(Q2, B2.long(), 0.1, 4), TypeError, "b must be float32 or float64"),
    (lambda: lasso_gram(torch.ones(3, 4), B2, 0.1, 4), ValueError, "Q must be a square"),
    (lambda: lasso_gram(torch.ones(3), B2, 0.1, 4), ValueError, "Q must be a square"),
    (lambda: lasso_gram(torch.ones(2, 2, 3, 3), B2, 0.1, 4), ValueError, "Q must be a square"),
    (lambda: lasso_gram(torch.ones(0, 0), torch.ones(0), 0.1, 4), ValueError, "Q must be a square"),
    (lambda: lasso_gram(Q2, torch.ones(4), 0.1, 4), ValueError, "b must have shape"),
    (lambda: lasso_gram(Q2.expand(2, 3, 3), torch.ones(3, 3), 0.1, 4), ValueError, "b must have shape"),
    (lambda: lasso_gram(Q2 * math.nan, B2, 0.1, 4), ValueError, "Q contains NaN"),
    (lambda: lasso_gram(Q2, B2 * math.inf, 0.1, 4), ValueError, "b contains NaN"),
    (lambda: lasso_gram(-Q2, B2, 0.1, 4), ValueError, "Q must be positive semidefinite"),
    (lambda: lasso_gram(Q2, B2, -0.1, 4), ValueError, "alpha must be finite and >= 0"),
    (lambda: lasso_gram(Q2, B2, math.nan, 4), ValueError, "alpha must be finite and >= 0"),
    (lambda: lasso_gram(Q2, B2, "0.1", 4), TypeError, "alpha must be a number or a tensor"),
    (lambda: lasso_gram(Q2, B2, torch.ones(3), 4), ValueError, "alpha must be a scalar"),
    (
        lambda: lasso_gram(Q2.expand(2, 3, 3), B2.expand(2, 3), torch.ones(3), 4),
        ValueError,
        "alpha must be a scalar",
    ),
    (
        lambda: lasso_gram(Q2.expand(2, 3, 3), B2.expand(2, 3), torch.tensor([1.0, -1.0]), 4),
        ValueError,
        "alpha",
    ),
    (lambda: lasso_gram(Q2, B2, 0.1, 0), ValueError, "n_rows must be a positive"),
    (lambda: lasso_gram(Q2, B2, 0.1, -4), ValueError, "n_rows must be a positive"),
    (lambda: lasso_gram(Q2, B2, 0.1, math.inf), ValueError, "n_rows must be a positive"),
    (lambda: lasso_gram(Q2, B2, 0.1, 4, tol=-1.0), ValueError, "tol must be"),
    (lambda: lasso_gram(Q2, B2, 0.1, 4, max_iter=0), ValueError, "max_iter must be an integer >= 1"),
    (lambda: lasso_gram(Q2, B2, 0.1, 4, max_iter=2.5), ValueError, "max_iter must be an integer >= 1"),
    (lambda: lasso_gram(Q2, B2, 0.1, 4, coef0=torch.ones(4)), ValueError, "coef0 must have b's shape"),
    (lambda: lasso_gram(Q2, B2, 0.1, 4, coef0=B2 * math.nan), ValueError, "coef0 contains NaN"),
    (lambda: lasso_gram(Q2, B2, 0.1, 4, coef0=B2[None]), ValueError, "coef0 must have b's shape"),
    (
        lambda: lasso_gram(Q2.expand(2, 3, 3), B2.expand(2, 3), 0.1, 4, coef0=B2),
        ValueError,
        "coef0 must have",
    ),
    (lambda: lasso_objective(Q2, B2, 1.0, torch.ones(4), 0.1, 4), ValueError, "coef must have b's shape"),
    (lambda: alpha_max(torch.ones(2, 2, 2), 4), ValueError, "b must have shape"),
    (lambda: alpha_max(B2, 0), ValueError, "n_rows must be a positive"),
    (lambda: lasso_path(Q2.expand(2, 3, 3), B2.expand(2, 3), 4), ValueError, "Q must be \\(C, C\\)"),
    (lambda: lasso_path(Q2, B2, 4, n_alphas=0), ValueError, "n_alphas must be an integer >= 1"),
    (lambda: lasso_path(Q2, B2, 4, eps=0.0), ValueError, "eps must be a positive"),
    (lambda: lasso_path(Q2, B2, 4, eps=2.0), ValueError, "eps must be in"),
    (lambda: lasso_objective(Q2, B2, torch.ones(3), B2, 0.1, 4), ValueError, "c must be a number"),
    (lambda: lasso_path(Q2, B2, 4, alphas=[0.1, -1.0]), ValueError, "alphas must be"),
    (lambda: lasso_path(Q2, B2, 4, alphas=[]), ValueError, "alphas must be"),
]


@pytest.mark.parametrize("call, exc, match", BAD)
def test_bad_input_is_rejected_with_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("seed", [0, 2, 4])
def test_ill_conditioned_gram_converges_in_few_sweeps(solver, seed):
    # Near rank-3 columns (eigenvalues spanning ~1e9, like random-weight ResNet-50 layers): after a
    # Newton step blocked where a coefficient reaches zero, returning to the sweeps let them re-add it,
    # and this zig-zag took 500-650 sweeps here (past 10^4 on real layers); the active-set loop takes ~10.
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((300, 3))
    A = latent @ rng.standard_normal((3, 60)) + 1e-3 * rng.standard_normal((300, 60))
    y = latent @ rng.standard_normal(3) + 0.1 * rng.standard_normal(300)
    Q, b, _ = gram(A, y)
    alpha = 1e-3 * alpha_max(b, 300, True)
    coef, sweeps, viol = _solve(
        Q[None],
        b[None],
        alpha.reshape(1),
        torch.zeros(1, 60, dtype=torch.float64),
        300.0,
        True,
        1e-7,
        10_000,
        True,
    )
    assert float(viol[0]) <= 1e-7
    assert int(sweeps[0]) <= 60, f"{int(sweeps[0])} sweeps"
    assert_kkt(Q, b, coef[0], float(alpha), 300, True)
