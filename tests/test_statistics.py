"""GramStatistics: blocks of samples add, accumulators merge, one block is hsic_matrix exactly; and the
one problem type built on it (HSICLassoProblem.from_statistics, select_count along the exact path)."""

import pytest
import torch

import apib_kernels as ak
from apib_kernels import selection
from apib_kernels.statistics import GramStatistics, Samples


def _data(n=48, c=6, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, d, generator=g, dtype=dtype)
    y = (x[:, 0] ** 2 + x[:, 2]).sum(-1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g, dtype=dtype)
    return x, y


def _close(a, b, rtol=1e-12):
    scale = max(float(b.abs().max()), 1e-300)
    assert float((a - b).abs().max()) <= rtol * scale


def test_one_block_is_hsic_matrix_exactly():
    x, y = _data()
    stats = GramStatistics().add(Samples.check(x, y))
    q, b, c = ak.hsic_matrix(x, y)
    assert torch.equal(stats.q, q) and torch.equal(stats.b, b) and torch.equal(stats.c, c)
    assert stats.n_rows == 48 * 48
    assert torch.equal(stats.q, stats.q.T)


@pytest.mark.parametrize("normalize", [False, True])
def test_blocks_added_one_by_one_equal_the_block_estimator(normalize):
    # `add` per block of 12 samples and `add_blocks(block_size=12)` are the same sums; so is merging two
    # accumulators that each hold half of the blocks (a shard each, as two processes would).
    x, y = _data()
    whole = GramStatistics(normalize=normalize).add_blocks(Samples.check(x, y), 12)
    one_by_one = GramStatistics(normalize=normalize)
    for s in range(0, 48, 12):
        one_by_one.add(Samples.check(x[s : s + 12], y[s : s + 12]))
    first, second = GramStatistics(normalize=normalize), GramStatistics(normalize=normalize)
    first.add_blocks(Samples.check(x[:24], y[:24]), 12)
    second.add_blocks(Samples.check(x[24:], y[24:]), 12)
    merged = first.merge(second)
    for other in (one_by_one, merged):
        _close(other.q, whole.q)
        _close(other.b, whole.b)
        _close(other.c, whole.c)
        assert other.n_rows == whole.n_rows == 4 * 12 * 12
        assert normalize or torch.equal(other.q, other.q.T)


def test_statistics_read_before_are_not_changed_by_later_blocks():
    x, y = _data()
    stats = GramStatistics().add(Samples.check(x[:24], y[:24]))
    q, b = stats.q.clone(), stats.b.clone()
    first_q = stats.q
    stats.add(Samples.check(x[24:], y[24:]))
    assert torch.equal(first_q, q) and not torch.equal(stats.q, q)
    assert torch.equal(GramStatistics().merge(stats).b, stats.b) and not torch.equal(stats.b, b)


def test_constant_channels_over_every_block():
    x, y = _data()
    x[:, 1] = 0.25  # constant in every sample
    x[:24, 3], x[24:, 3] = 1.0, -1.0  # constant within each half, not over all samples
    stats = GramStatistics().add(Samples.check(x[:24], y[:24])).add(Samples.check(x[24:], y[24:]))
    assert stats.constant.tolist() == [False, True, False, False, False, False]
    first = GramStatistics().add(Samples.check(x[:24], y[:24]))
    second = GramStatistics().add(Samples.check(x[24:], y[24:]))
    assert first.constant[3] and second.constant[3]
    assert first.merge(second).constant.tolist() == [False, True, False, False, False, False]
    q, b, n_rows = stats.lasso_statistics()
    assert q.dtype == b.dtype == torch.float64 and n_rows == 2 * 24 * 24
    assert not q[1].any() and not q[:, 1].any() and b[1] == 0


def test_misuse_is_refused():
    x, y = _data()
    with pytest.raises(ValueError, match="no samples"):
        GramStatistics().lasso_statistics()
    with pytest.raises(TypeError, match="Samples.check"):
        GramStatistics().add(x)
    stats = GramStatistics().add(Samples.check(x, y))
    with pytest.raises(ValueError, match="channels and features"):
        stats.add(Samples.check(x[:, :3], y))
    with pytest.raises(ValueError, match="other settings"):
        stats.merge(GramStatistics(kernel="gaussian").add(Samples.check(x, y)))
    with pytest.raises(ValueError, match="features"):
        stats.merge(GramStatistics().add(Samples.check(x[:, :, :2], y)))
    with pytest.raises(ValueError, match="kernel must be one of"):
        GramStatistics(kernel="cosine")
    with pytest.raises(ValueError, match="y must have n = 48"):
        Samples.check(x, y[:5])


def test_problem_from_statistics_is_from_data():
    x, y = _data()
    a = ak.HSICLassoProblem.from_data(x, y, block_size=16)
    b = ak.HSICLassoProblem.from_statistics(GramStatistics().add_blocks(Samples.check(x, y), 16))
    for s, t in zip(a.statistics(), b.statistics(), strict=True):
        assert torch.equal(torch.as_tensor(s), torch.as_tensor(t))
    assert a.select_count(3)[2].tolist() == b.select_count(3)[2].tolist()


def _first_stretch(problem, k):
    """(top, bottom, its channels) of the first stretch of the exact path whose solutions keep at least k
    channels, or None if none does."""
    q, b, n_rows = problem.statistics()
    alphas, coefs, _ = ak.lasso_knots(q, b, n_rows, positive=problem.positive)
    counts = ((coefs[:-1] != 0) | (coefs[1:] != 0)).sum(1)
    if not bool((counts >= k).any()):
        return None
    i = int(torch.nonzero(counts >= k)[0])
    return (
        float(alphas[i]),
        float(alphas[i + 1]),
        set(torch.nonzero(coefs[i + 1] + coefs[i]).flatten().tolist()),
    )


@pytest.mark.parametrize("positive", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_select_count_is_the_first_stretch_of_the_exact_path(positive, seed):
    # n_select channels: those of the largest penalties keeping that many, which the exact path knows
    # (the grid walk, the fallback, can step over a short stretch where the count dips and rises again)
    x, y = _data(n=40, c=24, d=3, seed=seed)
    problem = ak.HSICLassoProblem.from_data(x, y, positive=positive)
    for k in (1, 2, 5, 12):
        alpha, coef, selected = problem.select_count(k)
        stretch = _first_stretch(problem, k)
        if stretch is None:  # the path never keeps k: the least-penalised solution, filled by relevance
            assert alpha == pytest.approx(selection.PATH_EPS * problem.alpha_max()) and len(selected) == k
            continue
        top, bottom, support = stretch
        assert bottom < alpha < top
        if len(support) == k:
            assert set(selected.tolist()) == support


def test_the_grid_walk_agrees_where_the_count_grows_steadily(monkeypatch):
    x, y = _data(n=40, c=24, d=3, seed=1)
    problem = ak.HSICLassoProblem.from_data(x, y)
    along = [set(problem.select_count(k)[2].tolist()) for k in (1, 2, 3)]
    monkeypatch.setattr(selection, "KNOTS_MAX_CHANNELS", 0)
    walked = [set(problem.select_count(k)[2].tolist()) for k in (1, 2, 3)]
    assert along == walked
