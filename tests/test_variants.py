"""The method variants of the selection-quality study: presets, per-layer penalties, the median
bandwidth, normalised Grams and the Lasso's own ranking under uniform widths and one threshold."""

from dataclasses import fields

import pytest
import torch

import apib_kernels as ak
from apib.allocation import lasso_ranking, penalty_scales
from apib.groups import dependency_graph, find_groups
from apib.models import get_model
from apib.options import DEFAULT_PRESET, PRESETS, PruneOptions
from apib.pruning import prune
from apib.scoring import score
from apib_kernels.kernels import median_scales

VARIANTS = [
    {},
    {"penalty_scale": "layer"},
    {"bandwidth": "median"},
    {"normalize": True},
    {"allocation": "uniform"},
    {"allocation": "threshold"},
    {"allocation": "threshold", "penalty_scale": "layer"},
]


def _batches(n_batches=2, batch=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g))
        for _ in range(n_batches)
    ]


def _resnet20():
    torch.manual_seed(0)
    return get_model("resnet20", num_classes=10).eval()


def _groups(model):
    return find_groups(model, dependency_graph(model, torch.randn(1, 3, 32, 32)))


def _captured(model, batches, names):
    """Each module's input and output over the batches, captured independently of the pipeline."""
    seen = {name: [] for name in names}
    hooks = [
        model.get_submodule(name).register_forward_hook(lambda _m, a, o, store=store: store.append((a[0], o)))
        for name, store in seen.items()
    ]
    with torch.no_grad():
        for images, _ in batches:
            model(images)
    for h in hooks:
        h.remove()
    return {name: tuple(torch.cat(t) for t in zip(*pairs, strict=True)) for name, pairs in seen.items()}


def _kept(result):
    return [d.kept for d in result.layers]


# --- presets -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["output", "labels"])
def test_no_preset_is_the_default_preset_and_explicit_options_override_a_preset(target):
    model, batches = _resnet20(), _batches()
    assert DEFAULT_PRESET == "uniform-signed"
    for reduction in (0.1, 0.5):
        default = prune(model, batches, flops_reduction=reduction, target=target, progress=False)
        named = prune(
            model, batches, flops_reduction=reduction, target=target, preset=DEFAULT_PRESET, progress=False
        )
        assert _kept(named) == _kept(default) and named.options == default.options
        paper = prune(
            model, batches, flops_reduction=reduction, target=target, preset="paper", progress=False
        )
        assert {k: paper.options[k] for k in PRESETS["paper"] if k != "target"} == {
            k: v for k, v in PRESETS["paper"].items() if k != "target"
        }
        assert paper.to_dict()["options"]["preset"] == "paper" and paper.alpha is not None
        assert _kept(paper) != _kept(default)
    layered = prune(
        model, batches, flops_reduction=0.5, preset="paper", penalty_scale="layer", progress=False
    )
    assert layered.options["penalty_scale"] == "layer" and layered.options["preset"] == "paper"
    assert _kept(layered) != _kept(paper)


def test_preset_uniform_is_the_lassos_ranking_with_one_ratio():
    model, batches = _resnet20(), _batches()
    named = prune(model, batches, flops_reduction=0.5, preset="uniform", progress=False)
    spelled = prune(model, batches, flops_reduction=0.5, preset="paper", allocation="uniform", progress=False)
    assert _kept(named) == _kept(spelled) and named.alpha is None
    assert {d.rule for d in named.layers} == {"uniform"} and named.options["preset"] == "uniform"
    assert _kept(named) != _kept(prune(model, batches, flops_reduction=0.5, preset="paper", progress=False))


def test_preset_uniform_signed_ranks_by_the_signed_lassos_path():
    torch.manual_seed(0)  # VGG-16's wide layers: the non-negative path leaves channels out
    model, batches = get_model("vgg16", num_classes=10).eval(), _batches()
    named = prune(model, batches, flops_reduction=0.5, preset="uniform-signed", progress=False)
    spelled = prune(model, batches, flops_reduction=0.5, preset="uniform", positive=False, progress=False)
    assert _kept(named) == _kept(spelled) and named.alpha is None
    assert named.options["positive"] is False and named.options["allocation"] == "uniform"
    assert named.options["preset"] == "uniform-signed"
    # each layer keeps the first channels of its signed ranking, which differs from the non-negative one
    captured = _captured(model, batches, [d.consumer for d in named.layers])
    differ = 0
    for d in named.layers:
        x, out = captured[d.consumer]
        problem = ak.HSICLassoProblem.from_data(x, out.flatten(1))
        signed, nonneg = (lasso_ranking(problem, positive).order[: d.n_kept] for positive in (False, True))
        assert sorted(signed.tolist()) == list(d.kept)
        differ += sorted(nonneg.tolist()) != list(d.kept)
    assert differ > 0


def test_every_preset_sets_only_options_that_exist():
    names = {f.name for f in fields(PruneOptions)}
    for preset, values in PRESETS.items():
        assert set(values) <= names - {"preset", "criterion"}, preset
        opts = PruneOptions(preset=preset)
        assert all(getattr(opts, k) == v for k, v in values.items())


def test_a_baseline_keeps_its_own_allocation_under_a_preset():
    assert PruneOptions(criterion="l1", preset="paper").allocation == "uniform"
    assert PruneOptions(criterion="l1", allocation="threshold").allocation == "threshold"
    assert PruneOptions(preset="paper").allocation == "penalty"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"preset": "best"}, "preset must be one of"),
        ({"penalty_scale": "local"}, "penalty_scale must be one of"),
        ({"bandwidth": "silverman"}, "bandwidth must be one of"),
        ({"normalize": "yes"}, "normalize must be True or False"),
        ({"positive": 1}, "positive must be True or False"),
        ({"bandwidth": "median", "kernel": "linear"}, "bandwidth 'median'"),
    ],
)
def test_bad_variant_values_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruneOptions(**kwargs)
    with pytest.raises(ValueError, match=match):
        prune(_resnet20(), _batches(1, 4), flops_reduction=0.5, progress=False, **kwargs)


# --- every target reachable ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=lambda v: ",".join(f"{k}={v}" for k, v in v.items()) or "paper"
)
@pytest.mark.parametrize("target", ["output", "labels"])
def test_every_flops_target_is_reachable_with_each_variant(variant, target):
    model, batches = _resnet20(), _batches()
    for reduction in (0.1, 0.5, 0.8):
        r = prune(
            model,
            batches,
            flops_reduction=reduction,
            tolerance=0.02,
            target=target,
            progress=False,
            **variant,
        )
        assert abs(r.flops_after - r.flops_target) <= 0.02 * r.flops_target, (variant, reduction)
        assert all(d.n_kept >= 1 for d in r.layers)
        assert r.options["target"] == target and all(r.options[k] == v for k, v in variant.items())
    assert r.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# --- per-layer penalties -------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", [0.5, 0.1])
def test_layer_penalties_solve_each_layer_at_the_fraction_times_its_alpha_max(reduction):
    model, batches = _resnet20(), _batches()
    r = prune(
        model,
        batches,
        flops_reduction=reduction,
        tolerance=0.02,
        preset="paper",
        penalty_scale="layer",
        progress=False,
    )
    acts = _captured(model, batches, [d.consumer for d in r.layers])
    for d in r.layers:
        x, y = acts[d.consumer]
        problem = ak.HSICLassoProblem.from_data(x, y.flatten(1))
        assert d.alpha == pytest.approx(r.alpha * problem.alpha_max(), rel=1e-9)
        _, _, selected = problem.select(d.alpha)
        if d.rule == "lasso":  # the paper's rule at the layer's own penalty
            assert sorted(selected.tolist()) == list(d.kept)
        else:  # beyond the Lasso: its least-penalised selection, then the ranking
            assert set(selected.tolist()) <= set(d.kept)
    assert (reduction == 0.1) == any(d.rule != "lasso" for d in r.layers)
    assert f"alpha {r.alpha:.4g} x each layer's alpha_max" in r.table()


def test_penalty_scales():
    problems = [
        ak.HSICLassoProblem(torch.eye(3, dtype=torch.float64) * s, torch.tensor([1.0, 2, 0]) * s, 4.0)
        for s in (1.0, 10.0)
    ]
    assert penalty_scales(problems, "global") == [1.0, 1.0]
    assert penalty_scales(problems, "layer") == pytest.approx([p.alpha_max() for p in problems])
    dead = ak.HSICLassoProblem(torch.eye(2, dtype=torch.float64), torch.tensor([-1.0, 0.0]), 4.0)
    assert penalty_scales([dead], "layer") == [1.0]  # keeps nothing at any penalty


# --- the Lasso's own ranking under uniform widths and one threshold -----------------------------------


def test_apib_with_uniform_widths_keeps_each_layers_first_channels_in_the_lassos_order():
    model, batches = _resnet20(), _batches()
    r = prune(model, batches, flops_reduction=0.5, tolerance=0.05, allocation="uniform", progress=False)
    ratios = [d.n_kept / d.channels for d in r.layers]
    assert max(ratios) - min(ratios) <= 1 / 16 + 1e-9 and r.alpha is None
    acts = _captured(model, batches, [d.consumer for d in r.layers])
    for d in r.layers:
        x, y = acts[d.consumer]
        ranking = lasso_ranking(ak.HSICLassoProblem.from_data(x, y.flatten(1)), True)
        assert sorted(ranking.order[: d.n_kept].tolist()) == list(d.kept)
        assert sorted(ranking.order.tolist()) == list(range(d.channels))


def test_the_lassos_order_is_path_entry_then_relevance():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(200, 12, generator=g, dtype=torch.float64)
    a[:, 5] = a[:, 4]
    y = a[:, :3].sum(1) + 0.3 * torch.randn(200, generator=g, dtype=torch.float64)
    problem = ak.HSICLassoProblem(a.T @ a, a.T @ y, 200.0)
    r = lasso_ranking(problem, True, scale=2.0)
    on = r.tier == 0
    assert on.any() and (~on).any() and bool((r.tier[:-1] <= r.tier[1:]).all())
    assert bool((r.key[on][:-1] >= r.key[on][1:]).all()) and bool((r.key[~on][:-1] >= r.key[~on][1:]).all())
    from apib.allocation import path_entry

    torch.testing.assert_close(r.key[on], path_entry(problem, True)[r.order[on]] / 2.0)


@pytest.mark.parametrize("positive", [True, False])
def test_a_ranking_stopped_after_its_first_k_channels_keeps_the_full_rankings_first_k(positive):
    g = torch.Generator().manual_seed(4)
    a = torch.randn(300, 40, generator=g, dtype=torch.float64) @ torch.randn(40, 40, generator=g).double()
    y = a[:, :8] @ torch.randn(8, generator=g, dtype=torch.float64) + torch.randn(300, generator=g).double()
    problem = ak.HSICLassoProblem(a.T @ a, a.T @ y, 300.0)
    full = lasso_ranking(problem, positive)
    entered = int((full.tier == 0).sum())
    for k in (1, 2, 7, entered // 2, entered, 40):
        stopped = lasso_ranking(problem, positive, first=k)
        assert sorted(stopped.order[:k].tolist()) == sorted(full.order[:k].tolist()), k
        if k < entered // 2:  # the stopped path leaves channels beyond the first k out
            assert int((stopped.tier == 0).sum()) < entered


@pytest.mark.parametrize("penalty_scale", ["global", "layer"])
def test_apib_with_one_threshold_cuts_the_lassos_ranking_across_layers(penalty_scale):
    model, batches = _resnet20(), _batches()
    r = prune(
        model,
        batches,
        flops_reduction=0.5,
        tolerance=0.02,
        allocation="threshold",
        penalty_scale=penalty_scale,
        progress=False,
    )
    assert {d.rule for d in r.layers} == {"threshold"} and r.alpha is None
    acts = _captured(model, batches, [d.consumer for d in r.layers])
    kept_keys, dropped_keys = [], []
    for d in r.layers:
        x, y = acts[d.consumer]
        problem = ak.HSICLassoProblem.from_data(x, y.flatten(1))
        (scale,) = penalty_scales([problem], penalty_scale)
        ranking = lasso_ranking(problem, True, scale)
        assert sorted(ranking.order[: d.n_kept].tolist()) == list(d.kept)  # a prefix of the layer's order
        on_path = ranking.tier == 0
        kept_keys += ranking.key[1 : d.n_kept][on_path[1 : d.n_kept]].tolist()  # beyond omega = 1
        dropped_keys += ranking.key[d.n_kept :][on_path[d.n_kept :]].tolist()
    assert kept_keys and dropped_keys and min(kept_keys) >= max(dropped_keys)  # one threshold


# --- the median bandwidth and normalised Grams ---------------------------------------------------------


def _median_ref(f: torch.Tensor) -> float:
    """The lower median of the pairwise distances of f (n, D) float64, of the non-zero ones if that is 0."""
    n = f.shape[0]
    d = sorted(float((f[i] - f[j]).pow(2).sum().sqrt()) for i in range(n) for j in range(i + 1, n))
    m = d[(len(d) - 1) // 2]
    if m == 0:
        nz = [v for v in d if v > 0]
        m = nz[(len(nz) - 1) // 2] if nz else 0.0
    return m


@pytest.mark.parametrize("kernel", ["laplace", "gaussian"])
def test_median_scales_make_the_fixed_gamma_kernel_the_median_heuristic(kernel):
    g = torch.Generator().manual_seed(0)
    x = (
        torch.randn(9, 4, 3, 3, generator=g, dtype=torch.float64)
        * torch.tensor([1.0, 5.0, 0.1, 1.0])[:, None, None]
    )
    x[:, 2] = 0.0  # constant: factor 1
    x[:6, 3] = 0.0  # equal on most samples: the median of its non-zero distances
    s = median_scales(x, kernel)
    assert s[2] == 1.0
    for k in (0, 1, 3):
        f = x[:, k].reshape(9, -1)
        m = _median_ref(f)
        d = (f[:, None] - f[None]).pow(2).sum(-1).sqrt()
        want = torch.exp(-d / m) if kernel == "laplace" else torch.exp(-d.square() / (2 * m * m))
        torch.testing.assert_close(ak.reference.kernel_matrix(f * s[k], kernel), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="kernel must be 'laplace' or 'gaussian'"):
        median_scales(x, "linear")


def test_median_bandwidth_is_the_fixed_gamma_path_on_features_scaled_by_the_first_blocks_factors():
    model, batches = _resnet20(), _batches()
    groups = _groups(model)
    opts = PruneOptions(bandwidth="median", block_size=16)  # two blocks of 16 images
    layers = score(model, batches, groups, opts, torch.device("cpu"), False, {})
    acts = _captured(model, batches, [g.consumer for g in groups])
    for g, layer in list(zip(groups, layers, strict=True))[::3]:
        x, y = acts[g.consumer]
        s = median_scales(x[:16], "laplace")
        assert not torch.allclose(median_scales(x[16:], "laplace"), s)  # the second block's would differ
        xs = x.double() * s.float().double()[None, :, None, None]
        parts = [ak.reference.hsic_matrix(xs[i : i + 16], y[i : i + 16].flatten(1).double()) for i in (0, 16)]
        q, b, n_rows = layer.problem.statistics()
        assert n_rows == 2 * 16**2
        top = float(parts[0][0].abs().max())
        torch.testing.assert_close(q, parts[0][0] + parts[1][0], rtol=1e-4, atol=1e-5 * top)
        torch.testing.assert_close(b, parts[0][1] + parts[1][1], rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_median_bandwidth_is_refused_under_torch_distributed(monkeypatch):
    import apib.scoring

    monkeypatch.setattr(apib.scoring, "distributed", lambda: True)
    with pytest.raises(ValueError, match="bandwidth 'median'.*torch.distributed"):
        prune(_resnet20(), _batches(1, 4), flops_reduction=0.5, bandwidth="median", progress=False)


def test_normalize_gives_the_statistics_of_frobenius_normalised_grams():
    model, batches = _resnet20(), _batches()
    groups = _groups(model)
    layers = score(model, batches, groups, PruneOptions(normalize=True), torch.device("cpu"), False, {})
    g, layer = groups[0], layers[0]
    x, y = _captured(model, batches, [g.consumer])[g.consumer]
    k = ak.reference.centered_gram(x)
    ell = ak.reference.output_gram(y.flatten(1))
    k = k / k.flatten(1).norm(dim=1)[:, None, None]
    ell = ell / ell.norm()
    q, b, _ = layer.problem.statistics()
    torch.testing.assert_close(q, torch.einsum("kij,lij->kl", k, k), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b, torch.einsum("kij,ij->k", k, ell), rtol=1e-4, atol=1e-6)
    active = q.diagonal() > 0
    torch.testing.assert_close(q.diagonal()[active], torch.ones_like(q.diagonal()[active]))  # one block
