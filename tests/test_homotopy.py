"""The exact regularization path (`lasso_knots`) against scikit-learn's LARS-Lasso and the CD solver."""

import logging

import numpy as np
import pytest
import torch
from conftest import assert_kkt, gram

import apib_kernels as ak
from apib_kernels import homotopy
from apib_kernels.lasso import lasso_gram, lasso_objective

sklearn_linear = pytest.importorskip("sklearn.linear_model")


def design(seed: int, rows: int, c: int):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((rows, c)) + 0.5 * rng.standard_normal((rows, 1))  # correlated columns
    y = A[:, : min(3, c)] @ np.array([1.0, -2.0, 0.5])[: min(3, c)] + rng.standard_normal(rows)
    return A, y


def assert_optimal_along(Q, b, cc, rows, positive, alphas, coefs):
    """Every knot, and the midpoint of every segment (the interpolated coefficients), satisfies the
    optimality conditions and has the optimal objective (that of the CD solver's converged solution)."""
    points = [(float(alphas[k]), coefs[k]) for k in range(len(alphas))]
    for k in range(len(alphas) - 1):
        points.append((0.5 * float(alphas[k] + alphas[k + 1]), 0.5 * (coefs[k] + coefs[k + 1])))
    for alpha, coef in points:
        assert_kkt(Q, b, coef, alpha, rows, positive, tol=1e-9)
        cd = lasso_gram(Q, b, alpha, rows, positive=positive, tol=1e-12)
        o, o_cd = (float(lasso_objective(Q, b, cc, w, alpha, rows)) for w in (coef, cd))
        assert o <= o_cd + 1e-10 * abs(o_cd) + 1e-12


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
@pytest.mark.parametrize("rows, c", [(50, 1), (50, 10), (80, 30), (200, 90)])
def test_knots_match_sklearn_lars(rows, c, positive):
    A, y = design(c, rows, c)
    Q, b, cc = gram(A, y)
    alphas, coefs, n_nonzero = ak.lasso_knots(Q, b, rows, positive=positive)
    a_sk, _, c_sk = sklearn_linear.lars_path_gram(
        A.T @ y, A.T @ A, n_samples=rows, method="lasso", positive=positive, max_iter=10_000
    )
    assert alphas.dtype == torch.float64 and coefs.shape == (len(alphas), c)
    np.testing.assert_allclose(alphas.numpy(), a_sk, rtol=1e-10, atol=1e-14 * a_sk[0])
    # scikit-learn's positive LARS stops short of the exact solution on its last segment (documented):
    # compare the knots before it, and check every knot for optimality.
    last = len(a_sk) - (1 if positive else 0)
    np.testing.assert_allclose(coefs.numpy()[:last], c_sk.T[:last], rtol=0, atol=1e-9 * np.abs(c_sk).max())
    assert torch.equal(n_nonzero, (coefs != 0).sum(1))
    assert float(alphas[0]) == pytest.approx(float(ak.alpha_max(b, rows, positive)), rel=1e-15)
    assert bool((coefs[0] == 0).all()) and float(alphas[-1]) == 0.0
    assert_optimal_along(Q, b, cc, rows, positive, alphas, coefs)


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_duplicated_and_constant_channels(positive):
    A, y = design(5, 60, 12)
    A = np.concatenate([A, A[:, [2, 2]], 3.0 * A[:, [7]], np.zeros((60, 1))], axis=1)
    Q, b, cc = gram(A, y)
    alphas, coefs, _ = ak.lasso_knots(Q, b, 60, positive=positive)
    assert bool(torch.isfinite(coefs).all())
    assert bool((coefs[:, -1] == 0).all())  # the constant channel
    # the copies of a channel never share the active set: their Q_AA would be singular
    assert not bool(((coefs[:, [2, 12, 13]] != 0).sum(1) > 1).any())
    assert_optimal_along(Q, b, cc, 60, positive, alphas, coefs)
    # exact copies change nothing: the same knots as without them (a refused join adds none)
    alone, _, _ = ak.lasso_knots(Q[:12, :12], b[:12], 60, positive=positive)
    dup = torch.cat([torch.arange(12), torch.tensor([2, 2])])
    with_copies, _, _ = ak.lasso_knots(Q[dup][:, dup], b[dup], 60, positive=positive)
    torch.testing.assert_close(with_copies, alone, rtol=1e-12, atol=0)


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_ties(positive):
    # Several coordinates reach the boundary at one penalty: they join one at a time, and a joiner
    # whose direction a later one reverses must leave again (else it stays active at zero and skews
    # the rest: 23% KKT violation on this 3x3 problem, where b ties all three at alpha_max).
    Q = torch.tensor([[1, 0.3525, -0.2083], [0.3525, 1, 0.5776], [-0.2083, 0.5776, 1]], dtype=torch.float64)
    b = torch.ones(3, dtype=torch.float64)
    alphas, coefs, _ = ak.lasso_knots(Q, b, 1, positive=positive)
    assert_optimal_along(Q, b, 3.0, 1, positive, alphas, coefs)
    rng = np.random.default_rng(11)
    for _ in range(30):
        c = int(rng.integers(2, 7))
        A = rng.standard_normal((3 * c, c))
        d = np.sqrt(np.einsum("ij,ij->j", A, A))
        Q = torch.from_numpy((A.T @ A) / np.outer(d, d))  # unit diagonal
        b = torch.from_numpy(np.round(rng.standard_normal(c)) + 2.0)  # ties among integer values
        alphas, coefs, _ = ak.lasso_knots(Q, b, 1, positive=positive)
        assert_optimal_along(Q, b, float(b @ b), 1, positive, alphas, coefs)


def test_a_path_that_misses_a_tie_is_reported(monkeypatch, caplog):
    # The leave rule without signs (the earlier, wrong one) misses the tie above: the knots' KKT check
    # must say so rather than return the wrong path silently.
    def unsigned_leave(beta_a, signs, u):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(beta_a * u < 0, -beta_a / u, np.inf)
        r = int(np.argmin(t))
        return float(t[r]), r

    monkeypatch.setattr(homotopy, "_first_leave", unsigned_leave)
    Q = torch.tensor([[1, 0.3525, -0.2083], [0.3525, 1, 0.5776], [-0.2083, 0.5776, 1]], dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="apib_kernels"):
        ak.lasso_knots(Q, torch.ones(3, dtype=torch.float64), 1)
    assert "violates the optimality conditions" in caplog.text


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_more_channels_than_rows(positive):
    # Q has rank 25 < C: the path reaches supports of the design's rank, where minimisers stop being unique
    A, y = design(7, 25, 40)
    Q, b, cc = gram(A, y)
    alphas, coefs, n_nonzero = ak.lasso_knots(Q, b, 25, positive=positive)
    assert int(n_nonzero.max()) <= 25
    assert_optimal_along(Q, b, cc, 25, positive, alphas, coefs)


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_hsic_statistics_of_a_layer(positive):
    # HSIC Grams of one layer are strongly correlated: stepping by δ from knot to knot let rounding
    # grow until the active set was wrong (KKT violations up to 7% on ResNet-50 shapes); every knot is
    # now placed on the line of the coordinate that joins or leaves there.
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(24, 160, 4, 4, generator=g) + 0.5 * torch.randn(24, 1, 4, 4, generator=g))
    y = torch.relu(x[:, :40].sum(1)).flatten(1)
    q, b, c = (t.double() for t in ak.hsic_matrix(x, y))
    alphas, coefs, _ = ak.lasso_knots(q, b, 24**2, positive=positive)
    assert len(alphas) > 100
    for k in range(len(alphas)):
        assert_kkt(q, b, coefs[k], float(alphas[k]), 24**2, positive, tol=1e-12)


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
def test_alpha_min_ends_the_path_there(positive):
    A, y = design(3, 80, 20)
    Q, b, cc = gram(A, y)
    full, full_coefs, _ = ak.lasso_knots(Q, b, 80, positive=positive)
    stop = 0.5 * float(full[1] + full[2])
    alphas, coefs, _ = ak.lasso_knots(Q, b, 80, positive=positive, alpha_min=stop)
    assert float(alphas[-1]) == stop and torch.equal(alphas[:-1], full[:2])
    torch.testing.assert_close(coefs[-1], 0.5 * (full_coefs[1] + full_coefs[2]), rtol=0, atol=1e-12)
    above, above_coefs, _ = ak.lasso_knots(Q, b, 80, positive=positive, alpha_min=2 * float(full[0]))
    assert above.tolist() == [2 * float(full[0])] and bool((above_coefs == 0).all())


def test_zero_paths():
    Q = torch.eye(3, dtype=torch.float64)
    alphas, coefs, _ = ak.lasso_knots(Q, torch.tensor([-1.0, 0.0, -2.0], dtype=torch.float64), 5)
    assert alphas.tolist() == [0.0] and bool((coefs == 0).all())  # positive: no b_j > 0
    alphas, coefs, _ = ak.lasso_knots(Q, torch.zeros(3, dtype=torch.float64), 5, positive=False)
    assert alphas.tolist() == [0.0] and bool((coefs == 0).all())
    alphas, coefs, _ = ak.lasso_knots(torch.zeros(3, 3), torch.zeros(3), 5, positive=False)  # all constant
    assert alphas.tolist() == [0.0] and bool((coefs == 0).all())


def test_float32_inputs_and_max_steps(caplog):
    A, y = design(4, 100, 30)
    Q, b, _ = gram(A, y)
    alphas, coefs, _ = ak.lasso_knots(Q.float(), b.float(), 100, positive=False)
    assert coefs.dtype == torch.float32 and alphas.dtype == torch.float64
    with caplog.at_level(logging.WARNING, logger="apib_kernels"):
        short, _, _ = ak.lasso_knots(Q, b, 100, positive=False, max_steps=3)
    assert "stopped" in caplog.text and float(short[-1]) > 0 and len(short) <= 4
    torch.testing.assert_close(short, alphas[: len(short)].double(), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"Q": torch.eye(2).expand(3, 2, 2), "b": torch.ones(3, 2)}, "one problem"),
        ({"alpha_min": -1.0}, "alpha_min"),
        ({"max_steps": 0}, "max_steps"),
        ({"n_rows": 0}, "n_rows"),
        ({"b": torch.tensor([1.0, float("nan")])}, "b contains"),
    ],
)
def test_bad_input_is_rejected(kwargs, match):
    args = {"Q": torch.eye(2), "b": torch.ones(2), "n_rows": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        ak.lasso_knots(args.pop("Q"), args.pop("b"), args.pop("n_rows"), **args)
