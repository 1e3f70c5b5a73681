"""hsic_lasso: planted signals are found, the selection rules hold, and the numbers match float64 reference
statistics (apib_kernels.reference) solved by the same Gram-form Lasso."""

import dataclasses
import functools
import logging
import math

import pytest
import torch

import apib_kernels as ak
from apib_kernels import reference as ref
from apib_kernels import selection
from apib_kernels.lasso import alpha_max, lasso_gram
from apib_kernels.selection import DEFAULT_ALPHA_FRACTION


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _planted(n: int = 150, c: int = 30, seed: int = 0, dtype=torch.float32):
    """c Gaussian features; y depends, non-linearly, on features 3 and min(17, c - 1) only."""
    g = _gen(seed)
    x = torch.randn(n, c, generator=g, dtype=dtype)
    a, b = 3, min(17, c - 1)
    y = torch.sin(2 * x[:, a]) + x[:, b] ** 2 + 0.1 * torch.randn(n, generator=g, dtype=dtype)
    return x, y[:, None], {a, b}


@functools.lru_cache(maxsize=1)
def _planted_alpha_max() -> float:
    """alpha_max of the default planted problem, from float64 reference statistics (computed once)."""
    x, y, _ = _planted()
    _, b, _ = ref.hsic_matrix(x, y)
    return float(alpha_max(b, x.shape[0] ** 2, True))


def _normalized(q, b, c):
    d = q.diagonal().sqrt()
    return q / (d[:, None] * d[None, :]), b / (d * math.sqrt(float(c))), 1.0


def _assert_coef_close(actual, expected, rtol=1e-5):
    scale = max(float(expected.abs().max()), 1e-300)
    err = float((actual.double().cpu() - expected.double()).abs().max()) / scale
    assert err <= rtol, f"coefficients differ: relative error {err:.3g} > {rtol:g}"


def _nonzero_set(coef) -> set:
    return set(torch.nonzero(coef).flatten().tolist())


# --- planted signal -------------------------------------------------------------------------------


def test_planted_signal_by_n_select():
    x, y, planted = _planted()
    r = ak.hsic_lasso(x, y, n_select=2)
    assert set(r.selected.tolist()) == planted
    assert r.selected.dtype == torch.int64 and r.selected.shape == (2,)
    assert _nonzero_set(r.coef) == planted


def test_planted_signal_by_alpha():
    x, y, planted = _planted()
    a = 0.3 * _planted_alpha_max()
    r = ak.hsic_lasso(x, y, a)
    assert r.alpha == a
    assert set(r.selected[:2].tolist()) == planted
    assert _nonzero_set(r.coef) == set(r.selected.tolist())


def test_planted_signal_in_feature_maps():
    """(n, C, H, W) maps: only channel 4's map drives y."""
    g = _gen(1)
    x = torch.randn(120, 8, 3, 3, generator=g)
    y = torch.tanh(x[:, 4].flatten(1) @ torch.randn(9, 3, generator=g)) ** 2
    r = ak.hsic_lasso(x, y, n_select=1)
    assert r.selected.tolist() == [4]


def test_default_is_a_fraction_of_alpha_max():
    x, y, planted = _planted()
    r = ak.hsic_lasso(x, y)
    expected = DEFAULT_ALPHA_FRACTION * _planted_alpha_max()
    assert r.alpha == pytest.approx(expected, rel=1e-4)
    assert set(r.selected[:2].tolist()) == planted
    assert set(r.timings) == {"statistics", "solve"} and all(t >= 0 for t in r.timings.values())


# --- the reference numbers ------------------------------------------------------------------------


@pytest.mark.parametrize("positive", [True, False])
def test_coefficients_match_float64_reference(positive):
    g = _gen(2)
    x = torch.randn(40, 12, 3, 3, generator=g, dtype=torch.float64)
    y = torch.randn(40, 5, generator=g, dtype=torch.float64) + x[:, :2].flatten(1)[:, :5]
    q, b, _ = ref.hsic_matrix(x, y)
    n_rows = 40 * 40
    a = 0.05 * alpha_max(b, n_rows, positive)
    r = ak.hsic_lasso(x, y, a, positive=positive)
    torch.testing.assert_close(r.hsic, b, rtol=1e-9, atol=0)
    _assert_coef_close(r.coef, lasso_gram(q, b, a, n_rows, positive=positive))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_normalize_matches_reference(dtype):
    g = _gen(3)
    x = torch.randn(40, 10, 2, 2, generator=g, dtype=torch.float64) * torch.logspace(-1, 1, 10)[:, None, None]
    y = torch.randint(0, 3, (40,), generator=g)
    qn, bn, _ = _normalized(*ref.hsic_matrix(x, y))
    n_rows = 40 * 40
    a = 0.1 * alpha_max(bn, n_rows, True)
    r = ak.hsic_lasso(x.to(dtype), y, a, normalize=True)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(r.hsic, bn, rtol=tol, atol=tol * float(bn.abs().max()))
    _assert_coef_close(r.coef, lasso_gram(qn, bn, a, n_rows), rtol=1e-5 if dtype == torch.float64 else 1e-2)


def _block_reference(x, y, bs, normalize=False, **kw):
    q = b = 0
    blocks = x.shape[0] // bs
    for j in range(blocks):
        s = slice(j * bs, (j + 1) * bs)
        stats = ref.hsic_matrix(x[s], y[s], **kw)
        qj, bj, _ = _normalized(*stats) if normalize else stats
        q, b = q + qj, b + bj
    return q, b, blocks * bs * bs


@pytest.mark.parametrize("normalize", [False, True])
def test_block_size_sums_per_block_reference(normalize):
    """n = 50, B = 16: three blocks of contiguous samples, the last 2 samples unused."""
    g = _gen(4)
    x = torch.randn(50, 9, 2, 3, generator=g, dtype=torch.float64)
    y = x[:, 1].flatten(1).sin() + 0.1 * torch.randn(50, 6, generator=g, dtype=torch.float64)
    q, b, n_rows = _block_reference(x, y, 16, normalize)
    a = 0.05 * alpha_max(b, n_rows, True)
    r = ak.hsic_lasso(x, y, a, block_size=16, normalize=normalize)
    torch.testing.assert_close(r.hsic, b, rtol=1e-9, atol=1e-12)
    _assert_coef_close(r.coef, lasso_gram(q, b, a, n_rows))


def test_block_size_with_labels_and_batches():
    """Label y, gaussian kernel, and a memory limit that forces one block per batch."""
    g = _gen(5)
    x = torch.randn(60, 7, generator=g, dtype=torch.float64)
    y = (x[:, 2] > 0).long() + 2 * (x[:, 5] > 0.3).long()
    q, b, n_rows = _block_reference(x, y, 12, kernel="gaussian")
    a = 0.05 * alpha_max(b, n_rows, True)
    r = ak.hsic_lasso(x, y, a, block_size=12, kernel="gaussian", memory_limit=1)
    torch.testing.assert_close(r.hsic, b, rtol=1e-9, atol=1e-12)
    _assert_coef_close(r.coef, lasso_gram(q, b, a, n_rows))


@pytest.mark.parametrize("y_kernel", ["delta", "delta_norm"])
def test_block_size_label_kernels_count_classes_per_block(y_kernel):
    """delta_norm divides by each class's size within its block (pyHSICLasso's block kernel)."""
    g = _gen(6)
    x = torch.randn(45, 5, generator=g, dtype=torch.float64)
    y = (x[:, 1] > 0.8).long() + (x[:, 3] > 0).long()  # imbalanced classes, varying per block
    q, b, n_rows = _block_reference(x, y, 15, y_kernel=y_kernel)
    r = ak.hsic_lasso(x, y, n_select=2, block_size=15, y_kernel=y_kernel)
    torch.testing.assert_close(r.hsic, b, rtol=1e-9, atol=1e-12)


def test_one_block_is_the_exact_estimator():
    x, y, _ = _planted(n=48, dtype=torch.float64)
    exact = ak.hsic_lasso(x, y, n_select=5)
    block = ak.hsic_lasso(x, y, n_select=5, block_size=48, n_permutations=3)
    torch.testing.assert_close(block.hsic, exact.hsic, rtol=1e-9, atol=0)
    assert block.selected.tolist() == exact.selected.tolist()


def test_block_permutations_are_seeded():
    x, y, _ = _planted(n=100)
    one = ak.hsic_lasso(x, y, n_select=4, block_size=20)
    a = ak.hsic_lasso(x, y, n_select=4, block_size=20, n_permutations=3, seed=7)
    b = ak.hsic_lasso(x, y, n_select=4, block_size=20, n_permutations=3, seed=7)
    torch.testing.assert_close(a.hsic, b.hsic, rtol=0, atol=0)
    assert a.selected.tolist() == b.selected.tolist()
    assert not torch.allclose(a.hsic, 3 * one.hsic)  # the extra passes are other partitions


@pytest.mark.parametrize("labels", [True, False], ids=["label-y", "float-y"])
def test_label_and_float_outputs(labels):
    g = _gen(6)
    x = torch.randn(120, 10, generator=g, dtype=torch.float64)
    if labels:
        y = (x[:, 2] > 0).long() + 2 * (x[:, 5].abs() > 0.7).long()
    else:
        y = torch.stack([x[:, 2].cos(), x[:, 5].abs()], 1)
    q, b, _ = ref.hsic_matrix(x, y)
    r = ak.hsic_lasso(x, y, n_select=2)
    torch.testing.assert_close(r.hsic, b, rtol=1e-9, atol=0)
    assert set(r.selected.tolist()) == {2, 5}
    _assert_coef_close(r.coef, lasso_gram(q, b, r.alpha, 120 * 120).masked_fill(r.coef == 0, 0), rtol=1e-4)


# --- selection rules ------------------------------------------------------------------------------


def _check_selection(r, c, k, positive=True):
    sel = r.selected.tolist()
    assert len(sel) == k and len(set(sel)) == k and all(0 <= i < c for i in sel)
    coef = r.coef[r.selected]
    score = coef if positive else coef.abs()
    nz = int(torch.count_nonzero(coef))
    assert torch.all(coef[:nz] != 0) and torch.all(coef[nz:] == 0), "non-zero coefficients come first"
    assert torch.all(score[:nz][:-1] >= score[:nz][1:]), "selected is ordered by coefficient"
    fill = r.hsic[r.selected[nz:]]
    assert torch.all(fill[:-1] >= fill[1:]), "filled channels are ordered by relevance"
    out = torch.ones(c, dtype=torch.bool)
    out[r.selected] = False
    assert torch.all(r.coef[out] == 0)
    return nz


@pytest.mark.parametrize("positive", [True, False])
def test_n_select_is_exact_from_one_to_c(positive):
    x, y, _ = _planted(n=80)
    c = x.shape[1]
    for k in (1, 2, c - 1, c):
        r = ak.hsic_lasso(x, y, n_select=k, positive=positive)
        _check_selection(r, c, k, positive)


def test_n_select_fills_when_the_path_is_short(capsys):
    """n = 6 samples: centered Grams span n(n-1)/2 = 15 dimensions, so no solution has more than 15
    non-zeros among C = 30; asking for more must fill by relevance, never return fewer."""
    g = _gen(7)
    x = torch.randn(6, 30, generator=g)
    y = x[:, 0:1] ** 2
    for k in (1, 16, 29, 30):
        r = ak.hsic_lasso(x, y, n_select=k)
        nz = _check_selection(r, 30, k)
        assert nz <= 15
        if k > 15:
            assert nz < k
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("positive", [True, False])
def test_n_select_with_duplicated_channels(positive):
    x, y, planted = _planted(n=80, c=10)
    xx = torch.cat([x, x, x[:, :3]], 1)
    c = xx.shape[1]
    for k in (1, 2, 10, c - 1, c):
        r = ak.hsic_lasso(xx, y, n_select=k, positive=positive)
        _check_selection(r, c, k, positive)
        if k == 2:
            assert {i % 10 for i in r.selected.tolist()} == planted


def test_omega_lowers_a_huge_alpha():
    x, y, _ = _planted()
    r = ak.hsic_lasso(x, y, 1e6, omega=3)
    assert len(r.selected) >= 3 and int(torch.count_nonzero(r.coef)) >= 3
    assert 0 < r.alpha < _planted_alpha_max()
    _check_selection(r, x.shape[1], len(r.selected))


def test_omega_fills_when_even_alpha_zero_keeps_too_few():
    g = _gen(8)
    x = torch.randn(6, 30, generator=g)
    r = ak.hsic_lasso(x, x[:, :1] ** 2, 1e6, omega=20)
    assert len(r.selected) == 20 and r.alpha == 0.0
    _check_selection(r, 30, 20)


def test_alpha_above_alpha_max_with_omega_one_keeps_one():
    x, y, planted = _planted()
    r = ak.hsic_lasso(x, y, 10.0)
    assert len(r.selected) == 1 and r.selected.item() in planted


def test_constant_channels_get_zero():
    x, y, _ = _planted(n=60, c=12)
    x[:, 4] = 3.7
    x[:, 9] = 0.0
    for kw in (
        {"n_select": 12},
        {"alpha": 0.0},
        {"n_select": 12, "normalize": True},
        {"n_select": 12, "block_size": 20},
        {"n_select": 12, "kernel": "linear", "positive": False},
    ):
        r = ak.hsic_lasso(x, y, **kw)
        assert torch.isfinite(r.coef).all() and torch.isfinite(r.hsic).all(), kw
        assert r.coef[4] == 0 and r.coef[9] == 0 and r.hsic[4] == 0 and r.hsic[9] == 0, kw
        if "n_select" in kw:
            assert set(r.selected[-2:].tolist()) == {4, 9}, kw


def test_constant_output_selects_without_nan():
    x, _, _ = _planted(n=40, c=6)
    r = ak.hsic_lasso(x, torch.ones(40, 2), n_select=3, normalize=True)
    assert torch.all(r.coef == 0) and torch.all(r.hsic == 0) and len(r.selected) == 3


def test_result_is_frozen():
    x, y, _ = _planted(n=30, c=5)
    r = ak.hsic_lasso(x, y, n_select=2)
    assert isinstance(r, ak.HSICLassoResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.alpha = 1.0


# --- bad input ------------------------------------------------------------------------------------

BAD = [
    ({"alpha": -1e-4}, "alpha"),
    ({"alpha": float("nan")}, "alpha"),
    ({"alpha": 1e-4, "n_select": 2}, "n_select"),
    ({"n_select": 0}, "n_select"),
    ({"n_select": 9}, "n_select"),
    ({"n_select": 2.0}, "n_select"),
    ({"n_select": True}, "n_select"),
    ({"omega": 0}, "omega"),
    ({"omega": 9}, "omega"),
    ({"block_size": 1}, "block_size"),
    ({"block_size": 21}, "block_size"),
    ({"block_size": 4, "n_permutations": 0}, "n_permutations"),
    ({"n_permutations": 2}, "n_permutations"),
    ({"kernel": "cosine"}, "kernel"),
    ({"gamma": -1.0}, "gamma"),
]


@pytest.mark.parametrize("kwargs,name", BAD, ids=[f"{k}" for k, _ in BAD])
def test_bad_arguments(kwargs, name):
    g = _gen(9)
    x, y = torch.randn(20, 8, generator=g), torch.randn(20, 2, generator=g)
    with pytest.raises(ValueError, match=name):
        ak.hsic_lasso(x, y, **kwargs)


def test_bad_tensors():
    x, y = torch.randn(20, 8), torch.randn(20, 2)
    with pytest.raises(ValueError, match="y"):
        ak.hsic_lasso(x, y[:19], n_select=2)
    with pytest.raises(ValueError, match="y"):
        ak.hsic_lasso(x, y[:19], n_select=2, block_size=5)
    with pytest.raises(ValueError, match="x"):
        ak.hsic_lasso(torch.randn(20), y)
    with pytest.raises(TypeError, match="x"):
        ak.hsic_lasso(x.numpy(), y)
    with pytest.raises(ValueError, match="x"):
        ak.hsic_lasso(x.masked_fill(x > 1, float("nan")), y)


def test_non_finite_statistics():
    x = torch.randn(20, 4) * 1e25
    with pytest.raises(ValueError, match="statistics"):
        ak.hsic_lasso(x, torch.randn(20, 1), n_select=2, kernel="linear")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    x, y, planted = _planted(n=100)
    cpu = ak.hsic_lasso(x, y, n_select=4, block_size=25)
    gpu = ak.hsic_lasso(x.cuda(), y.cuda(), n_select=4, block_size=25)
    assert gpu.selected.device.type == "cuda" and gpu.coef.device.type == "cuda"
    torch.testing.assert_close(gpu.hsic.cpu(), cpu.hsic, rtol=1e-4, atol=1e-6)
    assert set(gpu.selected[:2].tolist()) == planted


def test_path_warns_about_non_convergence_once(one_sweep_solves, caplog, monkeypatch):
    # Every solve stopped after one plain CD sweep: the n_select grid walk (the exact path's fallback above
    # KNOTS_MAX_CHANNELS channels) makes dozens of unconverged solves.
    monkeypatch.setattr(selection, "KNOTS_MAX_CHANNELS", 0)
    x, y, _ = _planted(n=40)
    with caplog.at_level(logging.WARNING, logger="apib_kernels"):
        ak.hsic_lasso(x, y, n_select=6)
    warnings = [r for r in caplog.records if "did not converge" in r.getMessage()]
    assert len(one_sweep_solves) > 5
    assert len(warnings) == 1, f"{len(warnings)} convergence warnings for one hsic_lasso() call"


def test_a_loose_search_tolerance_does_not_stick(monkeypatch):
    # select(tol=...) is for one call: a later select_count solves at LASSO_TOL again.
    x, y, _ = _planted(n=40, dtype=torch.float64)
    problem = ak.HSICLassoProblem.from_data(x, y)
    tols = []

    solve = ak.HSICLassoProblem.solve

    def spy(self, *args, **kwargs):
        tols.append(kwargs["tol"])
        return solve(self, *args, **kwargs)

    monkeypatch.setattr(ak.HSICLassoProblem, "solve", spy)
    problem.select(0.5 * problem.alpha_max(), tol=1e-2)
    assert tols and set(tols) == {1e-2}
    tols.clear()
    problem.select_count(4)
    assert tols and set(tols) == {selection.LASSO_TOL}
