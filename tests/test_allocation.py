"""Allocation beyond the paper's rule (preset "paper"): targets the least-penalised HSIC Lasso cannot
reach."""

import torch
import torchvision

import apib_kernels as ak
from apib.allocation import path_entry
from apib.pruning import prune
from apib_kernels.lasso import lasso_gram


def _batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)
    ]


def _resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def test_a_target_beyond_the_least_penalised_lasso_is_reached():
    # 32 images: the non-negative Lasso keeps far fewer channels than a 10% reduction needs
    r = prune(_resnet18(), _batches(), flops_reduction=0.1, tolerance=0.02, preset="paper", progress=False)
    assert abs(r.flops_after - r.flops_target) <= 0.02 * r.flops_target
    assert {d.rule for d in r.layers} <= {"lasso", "path", "relevance"} and any(
        d.rule != "lasso" for d in r.layers
    )
    assert all(row["rule"] == d.rule for row, d in zip(r.to_dict()["layers"], r.layers, strict=True))
    assert r.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_where_the_lasso_reaches_the_target_its_rule_alone_chooses():
    r = prune(_resnet18(), _batches(), flops_reduction=0.3, tolerance=0.02, preset="paper", progress=False)
    assert all(d.rule == "lasso" for d in r.layers)


def test_beyond_the_lasso_keeps_the_least_penalised_selection_and_adds_by_path_entry():
    model, batches = _resnet18(), _batches()
    r = prune(model, batches, flops_reduction=0.1, tolerance=0.02, preset="paper", progress=False)
    d = next(d for d in r.layers if d.rule != "lasso" and d.n_kept < d.channels)
    seen = []
    hook = model.get_submodule(d.consumer).register_forward_hook(lambda _m, a, o: seen.append((a[0], o)))
    with torch.no_grad():
        for images, _ in batches:
            model(images)
    hook.remove()
    x, out = (torch.cat(t) for t in zip(*seen, strict=True))
    problem = ak.HSICLassoProblem.from_data(x, out.flatten(1))
    _, _, floor = problem.select(d.alpha)
    assert set(floor.tolist()) <= set(d.kept)
    entry = path_entry(problem, True)
    on_path = torch.isfinite(entry)
    added = torch.tensor(sorted(set(d.kept) - set(floor.tolist())))
    dropped = torch.tensor(sorted(set(range(d.channels)) - set(d.kept)))
    assert added.numel() and dropped.numel()
    if on_path[dropped].any():  # the path's channels come first, the earlier entries first
        assert on_path[added].all() and entry[added].min() >= entry[dropped][on_path[dropped]].max()
    else:  # then the others, by relevance
        late = added[~on_path[added]]
        assert not late.numel() or problem.hsic[late].min() >= problem.hsic[dropped].max()


def test_path_entry_is_the_largest_penalty_at_which_a_channel_is_non_zero():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(200, 12, generator=g, dtype=torch.float64)
    a[:, 5] = a[:, 4]  # a duplicated channel cannot join beside its twin
    y = a[:, :3].sum(1) + 0.3 * torch.randn(200, generator=g, dtype=torch.float64)
    problem = ak.HSICLassoProblem(a.T @ a, a.T @ y, 200.0)
    entry = path_entry(problem, True)
    assert torch.isfinite(entry).any() and not torch.isfinite(entry).all()
    q, b, n = problem.statistics()
    for j in torch.isfinite(entry).nonzero().flatten().tolist():
        above = lasso_gram(q, b, float(entry[j]) * (1 + 1e-6), n, tol=1e-12)
        assert above[j] == 0, j
    mid = float(entry[torch.isfinite(entry)].median())
    active = lasso_gram(q, b, mid, n, tol=1e-12).nonzero().flatten()
    assert bool((entry[active] >= mid * (1 - 1e-9)).all())
