"""The APIB pipeline: prunable groups, the FLOPs model, the global search, surgery, save/load."""

import copy
import logging
import random

import pytest
import torch
import torchvision
from torch import nn

import apib_kernels as ak
from apib.checkpoint import load_pruned, save_pruned
from apib.groups import FlopsModel, count_flops, dependency_graph, find_groups, prune_group
from apib.models import get_model
from apib.pruning import apply_pruning, prune


def _batches(n_batches=2, batch=16, size=32, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 3, size, size, generator=g), torch.randint(0, classes, (batch,), generator=g))
        for _ in range(n_batches)
    ]


def _resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def _groups(model, size=32):
    return find_groups(model, dependency_graph(model.eval(), torch.randn(1, 3, size, size)))


def _convs(model, prefix=""):
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n.startswith(prefix)]


def _reference_policy(name, model):
    """The reference code's prunable layers, written out per architecture."""
    if name == "vgg16":  # the input channels of every conv but the first
        convs = _convs(model)
        return list(zip(convs[:-1], convs[1:], strict=True))
    blocks = [n for n, m in model.named_modules() if hasattr(m, "conv2") and not hasattr(m, "b1")]
    if name == "resnet50":  # bottlenecks: the inputs of conv2 and conv3
        return [p for b in blocks for p in ((f"{b}.conv1", f"{b}.conv2"), (f"{b}.conv2", f"{b}.conv3"))]
    if name == "googlenet":  # the inner channels of the 3x3 and the (double 3x3) 5x5 branches
        modules = [n for n, m in model.named_modules() if hasattr(m, "b1")]
        return [
            p
            for i in modules
            for p in ((f"{i}.b2.0", f"{i}.b2.3"), (f"{i}.b3.0", f"{i}.b3.3"), (f"{i}.b3.3", f"{i}.b3.6"))
        ]
    return [(f"{b}.conv1", f"{b}.conv2") for b in blocks]  # CIFAR basic blocks: the inner channels


@pytest.mark.parametrize(
    "name, size, count",
    [
        ("resnet20", 32, 9),
        ("resnet56", 32, 27),
        ("resnet110", 32, 54),
        ("vgg16", 32, 12),
        ("googlenet", 32, 27),
        ("resnet50", 64, 32),
    ],
)
def test_groups_reproduce_the_reference_policy(name, size, count):
    model = get_model(name, num_classes=10)
    groups = _groups(model, size)
    if name == "googlenet":  # beyond the reference: the stem and the concatenated branch outputs
        groups = [g for g in groups if g.producer not in _googlenet_concatenated(model)]
    found = [(g.producer, g.consumers) for g in groups]
    assert found == [(p, (c,)) for p, c in _reference_policy(name, model)]
    assert len(found) == count
    assert all(g.channels == g.width and not g.residual for g in groups)


def _inception_modules(model):
    return [n for n, m in model.named_modules() if hasattr(m, "b1")]


def _googlenet_concatenated(model) -> dict[str, set[str]]:
    """GoogLeNet's groups beyond the reference: the stem, read by the first module's four branches, and
    every branch output of a module but the last, read by the next module's four branches through the
    concatenation (the last module's outputs reach the classifier head)."""
    modules = _inception_modules(model)

    def branches(m):
        return {f"{m}.b1.0", f"{m}.b2.0", f"{m}.b3.0", f"{m}.b4.1"}

    found = {"pre_layers.0": branches(modules[0])}
    for m, nxt in zip(modules[:-1], modules[1:], strict=True):
        found.update({f"{m}.{b}": branches(nxt) for b in ("b1.0", "b2.3", "b3.6", "b4.1")})
    return found


def test_googlenet_also_prunes_the_stem_and_the_concatenated_branch_outputs():
    model = get_model("googlenet", num_classes=10)
    beyond = {g.producer: set(g.consumers) for g in _groups(model) if len(g.consumers) > 1}
    assert beyond == _googlenet_concatenated(model)


def test_resnet18_groups_are_the_inner_block_channels():
    names = [(g.producer, g.consumer) for g in _groups(_resnet18())]
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert names == [(f"{b}.conv1", f"{b}.conv2") for b in blocks]


def test_mobilenet_groups_avoid_residual_streams():
    model = torchvision.models.mobilenet_v2(num_classes=10)
    groups = _groups(model, 64)
    producers = {g.producer for g in groups}
    assert len(groups) >= 17
    for i, block in enumerate(model.features):
        if getattr(block, "use_res_connect", False):
            # the projection conv writes into the residual stream: never prunable
            assert f"features.{i}.conv.2" not in producers
            # the expansion channels are private to the block: prunable, consumed by the projection
            assert f"features.{i}.conv.0.0" in producers


def test_densenet_concatenated_features_are_groups_read_by_every_later_layer():
    model = torchvision.models.densenet121(num_classes=10)
    groups = {g.producer: g.consumers for g in _groups(model, 64)}
    blocks = [n for n, _ in model.named_modules() if n.split(".")[-1].startswith("denseblock")]
    for b, block in enumerate(blocks, 1):
        layers = [f"{block}.{n}" for n, _ in model.get_submodule(block).named_children()]
        for i, layer in enumerate(layers):
            assert groups[f"{layer}.conv1"] == (f"{layer}.conv2",)  # the inner channels, as before
            later = tuple(f"{x}.conv1" for x in layers[i + 1 :])
            if b < len(blocks):  # the new features: read by every later layer and the transition
                assert groups[f"{layer}.conv2"] == (*later, f"features.transition{b}.conv")
            else:  # the last block's features reach the classifier head: left alone
                assert f"{layer}.conv2" not in groups


@pytest.mark.parametrize("ctor", [torchvision.models.resnet50, torchvision.models.mobilenet_v2])
def test_flops_model_matches_the_counter_after_surgery(ctor):
    model = ctor(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    dg = dependency_graph(model, x)
    groups = find_groups(model, dg)
    total, per_module = count_flops(model, x)
    fm = FlopsModel(groups, total, per_module)
    assert fm([g.channels for g in groups]) == total
    rng = random.Random(0)
    kept = [rng.randint(1, g.channels) for g in groups]
    for g, k in zip(groups, kept, strict=True):
        prune_group(model, dg, g, rng.sample(range(g.channels), k))
    assert fm(kept) == count_flops(model, x)[0]


def test_prune_meets_the_target_and_builds_a_smaller_model():
    model = _resnet18()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = prune(model, _batches(), flops_reduction=0.5, tolerance=0.02, progress=False)
    assert abs(r.flops_after - r.flops_target) <= 0.02 * r.flops_target
    assert r.flops_before == count_flops(model, torch.randn(1, 3, 32, 32))[0]
    assert r.params_after < r.params_before
    for d in r.layers:
        conv = r.model.get_submodule(d.producer)
        assert conv.out_channels == d.n_kept == len(set(d.kept)) >= 1
        assert r.model.get_submodule(d.consumer).in_channels == d.n_kept
    assert r.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # input untouched
    assert set(r.timings) == {"setup", "calibration", "statistics", "search", "surgery"}


def test_search_warns_about_non_convergence_once(one_sweep_solves, caplog):
    # Every solve stopped after one plain CD sweep: hundreds of unconverged solves in the search.
    with caplog.at_level(logging.WARNING, logger="apib_kernels"):
        prune(_resnet18(), _batches(), flops_reduction=0.5, tolerance=0.05, preset="paper", progress=False)
    warnings = [r for r in caplog.records if "did not converge" in r.getMessage()]
    assert len(one_sweep_solves) > 20
    assert len(warnings) == 1, f"{len(warnings)} convergence warnings for one prune() call"
    assert warnings[0].getMessage().startswith("lasso: ")


def _captured(model, batches, groups):
    """Each consumer's input and output over the batches, captured independently of the pipeline."""
    store = {g.consumer: ([], []) for g in groups}
    hooks = []
    for g in groups:
        xs, ys = store[g.consumer]
        mod = model.get_submodule(g.consumer)
        hooks.append(mod.register_forward_pre_hook(lambda _m, a, xs=xs: xs.append(a[0])))
        hooks.append(mod.register_forward_hook(lambda _m, _a, o, ys=ys: ys.append(o)))
    with torch.no_grad():
        for images, _ in batches:
            model(images)
    for h in hooks:
        h.remove()
    return {k: (torch.cat(xs), torch.cat(ys)) for k, (xs, ys) in store.items()}


@pytest.mark.parametrize("positive", [True, False])
def test_kept_channels_are_hsic_lasso_at_the_found_alpha(positive):
    model = _resnet18()
    batches = _batches()
    r = prune(
        model, batches, flops_reduction=0.4, tolerance=0.05, preset="paper", positive=positive, progress=False
    )
    acts = _captured(model, batches, _groups(model))
    for d in r.layers:
        x, y = acts[d.consumer]
        ref = ak.hsic_lasso(x, y.flatten(1), alpha=r.alpha, positive=positive)
        assert sorted(ref.selected.tolist()) == list(d.kept)
        assert ref.alpha == pytest.approx(d.alpha)


def test_prune_works_under_no_grad():
    with torch.no_grad():
        r = prune(_resnet18(), _batches(), flops_reduction=0.5, criterion="l1", progress=False)
    assert r.params_after < r.params_before


def test_flops_target():
    model = _resnet18()
    goal = 0.6 * count_flops(model, torch.randn(1, 3, 32, 32))[0]
    r = prune(model, _batches(), flops_target=goal, tolerance=0.03, progress=False)
    assert abs(r.flops_after - goal) <= 0.03 * goal


def test_labels_target_is_hsic_lasso_against_the_labels():
    model = _resnet18()
    batches = _batches()
    # ten classes: the non-negative Lasso keeps few channels of a random network, so prune deep
    r = prune(
        model, batches, flops_reduction=0.8, tolerance=0.03, target="labels", preset="paper", progress=False
    )
    labels = torch.cat([y for _, y in batches])
    acts = _captured(model, batches, _groups(model))
    for d in r.layers:
        ref = ak.hsic_lasso(acts[d.consumer][0], labels, alpha=r.alpha)
        assert sorted(ref.selected.tolist()) == list(d.kept)


def test_omega_is_a_floor_on_every_layer():
    r = prune(_resnet18(), _batches(), flops_reduction=0.7, omega=8, tolerance=0.05, progress=False)
    assert min(d.n_kept for d in r.layers) >= 8


def test_save_load_round_trip(tmp_path):
    r = prune(_resnet18(), _batches(), flops_reduction=0.5, tolerance=0.05, progress=False)
    path = tmp_path / "pruned.pt"
    save_pruned(r, path)
    raw = torch.load(path, weights_only=True)
    assert raw["pruning"]["kept"]
    loaded = load_pruned(path, torchvision.models.resnet18(num_classes=10))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), r.model.eval()(x))
    with pytest.raises(ValueError, match="architecture"):
        load_pruned(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_pruned(tmp_path / "missing.pt")


def test_unreachable_target_names_the_smallest_reachable_flops():
    with pytest.raises(ValueError, match="largest reachable reduction is 0"):
        prune(_resnet18(), _batches(), flops_reduction=0.95, omega=32, progress=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"flops_reduction": 0.0}, "flops_reduction"),
        ({"flops_reduction": 1.0}, "flops_reduction"),
        ({"flops_reduction": -0.2}, "flops_reduction"),
        ({}, "exactly one"),
        ({"flops_reduction": 0.5, "flops_target": 1e6}, "exactly one"),
        ({"flops_target": -5.0}, "flops_target"),
        ({"flops_reduction": 0.5, "alpha0": -1e-4}, "alpha0"),
        ({"flops_reduction": 0.5, "omega": 0}, "omega"),
        ({"flops_reduction": 0.5, "tolerance": 0}, "tolerance"),
        ({"flops_reduction": 0.5, "calib_size": 1}, "calib_size"),
        ({"flops_reduction": 0.5, "kernel": "cosine"}, "kernel"),
        ({"flops_reduction": 0.5, "target": "logits"}, "target"),
        ({"flops_reduction": 0.5, "allocation": "greedy"}, "allocation must be one of"),
        ({"flops_reduction": 0.5, "criterion": "l1", "allocation": "penalty"}, "needs criterion 'apib'"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune(_resnet18(), _batches(1, 4), progress=False, **kwargs)


def test_model_without_prunable_groups_raises():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(4))
    model(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="no prunable"):
        prune(model, [torch.randn(4, 3, 8, 8)], flops_reduction=0.5, progress=False)


def test_one_calibration_image_raises():
    with pytest.raises(ValueError, match="at least 2"):
        prune(_resnet18(), [torch.randn(1, 3, 32, 32)], flops_reduction=0.5, progress=False)


@pytest.mark.parametrize("criterion", ["l1", "fpgm", "hrank", "chip", "random"])
def test_baseline_criteria_prune_uniformly_with_the_same_surgery(criterion):
    model = _resnet18()
    r = prune(model, _batches(), flops_reduction=0.5, tolerance=0.05, criterion=criterion, progress=False)
    assert r.criterion == criterion and r.alpha is None
    assert abs(r.flops_after - r.flops_target) <= 0.05 * r.flops_target
    ratios = [d.n_kept / d.channels for d in r.layers]
    assert max(ratios) - min(ratios) <= 1 / 64 + 1e-9  # one shared ratio, up to rounding per layer
    assert r.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_l1_keeps_the_largest_filters():
    model = _resnet18()
    r = prune(model, _batches(1, 4), flops_reduction=0.5, tolerance=0.05, criterion="l1", progress=False)
    for d in r.layers:
        norms = model.get_submodule(d.producer).weight.detach().abs().sum((1, 2, 3))
        assert sorted(torch.topk(norms, d.n_kept).indices.tolist()) == list(d.kept)


def test_hsic_scores_with_one_uniform_ratio_keep_each_layers_first_channels_in_the_lassos_order():
    from apib.allocation import lasso_ranking

    model, batches = _resnet18(), _batches()
    kw = dict(flops_reduction=0.5, tolerance=0.05, preset="paper", progress=False)
    r = prune(model, batches, allocation="uniform", **kw)
    assert r.criterion == "apib" and r.allocation == "uniform" and r.alpha is None
    assert abs(r.flops_after - r.flops_target) <= 0.05 * r.flops_target
    ratios = [d.n_kept / d.channels for d in r.layers]
    assert max(ratios) - min(ratios) <= 1 / 64 + 1e-9
    paper = prune(model, batches, **kw)
    assert paper.allocation == "penalty" and [d.kept for d in paper.layers] != [d.kept for d in r.layers]
    # the kept channels come first in the layer's Lasso order (path entry, then HSIC with the output)
    x, out = _layer_io(model, batches, r.layers[0].consumer)
    order = lasso_ranking(ak.HSICLassoProblem.from_data(x, out.flatten(1)), True).order
    assert sorted(order[: r.layers[0].n_kept].tolist()) == list(r.layers[0].kept)


def _layer_io(model, batches, name):
    """A module's input and output over the calibration batches (as the pipeline's hooks see them)."""
    seen = []
    hook = model.get_submodule(name).register_forward_hook(lambda _m, a, o: seen.append((a[0], o)))
    with torch.no_grad():
        for images, _ in batches:
            model(images)
    hook.remove()
    return torch.cat([a for a, _ in seen]), torch.cat([o for _, o in seen])


def test_l1_with_one_global_threshold_ranks_channels_across_layers():
    model = _resnet18()
    r = prune(
        model,
        _batches(1, 4),
        flops_reduction=0.5,
        tolerance=0.05,
        criterion="l1",
        allocation="threshold",
        omega=1,
        progress=False,
    )
    assert r.allocation == "threshold" and abs(r.flops_after - r.flops_target) <= 0.05 * r.flops_target
    ratios = [d.n_kept / d.channels for d in r.layers]
    assert max(ratios) - min(ratios) > 1 / 32  # not one shared ratio (that would differ by <= 1/64)
    kept_min, dropped_max = [], []
    for d in r.layers:
        norms = model.get_submodule(d.producer).weight.detach().abs().sum((1, 2, 3)).double()
        normed = norms / norms.mean()
        mask = torch.zeros(d.channels, dtype=torch.bool)
        mask[list(d.kept)] = True
        assert sorted(torch.topk(norms, d.n_kept).indices.tolist()) == list(d.kept)
        if d.n_kept > 1:  # layers at the omega floor keep their best channel whatever the threshold
            kept_min.append(normed[mask].min())
        if (~mask).any():
            dropped_max.append(normed[~mask].max())
    assert min(kept_min) >= max(dropped_max)  # one threshold on the normalised scores


def test_options_are_one_frozen_record():
    from dataclasses import FrozenInstanceError

    from apib.options import PruneOptions

    opts = PruneOptions(criterion="fpgm")
    assert opts.allocation == "uniform" and PruneOptions(preset="paper").allocation == "penalty"
    assert PruneOptions().allocation == "uniform" and PruneOptions().positive is False
    with pytest.raises(FrozenInstanceError):
        opts.omega = 3


def test_faithful_and_fast_hrank_choose_the_same_channels():
    kw = dict(flops_reduction=0.5, tolerance=0.05, criterion="hrank", calib_size=8, progress=False)
    fast = prune(_resnet18(), _batches(1, 8), mode="fast", **kw)
    faithful = prune(_resnet18(), _batches(1, 8), mode="faithful", **kw)
    assert [d.kept for d in fast.layers] == [d.kept for d in faithful.layers]


def test_mobilenet_prunes_end_to_end_and_keeps_its_residual_streams():
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    # 8 images: the Lasso keeps at most ~28 channels per layer, so 30% is reached beyond its rule
    kw = dict(tolerance=0.05, preset="paper", progress=False)
    few = prune(model, _batches(1, 8, size=64), flops_reduction=0.3, **kw)
    assert abs(few.flops_after - few.flops_target) <= 0.05 * few.flops_target
    assert any(d.rule in ("path", "relevance") for d in few.layers)
    # random weights: the non-negative Lasso keeps few of the wide expansion channels, so prune deep
    r = prune(model, _batches(2, 32, size=64), flops_reduction=0.7, **kw)
    assert abs(r.flops_after - r.flops_target) <= 0.05 * r.flops_target

    def widths(m):  # dense convs only: depthwise ones follow their producer's group
        return {n: c.out_channels for n, c in m.named_modules() if isinstance(c, nn.Conv2d) and c.groups == 1}

    before, after = widths(model), widths(r.model)
    producers = {d.producer for d in r.layers}
    for name, block in model.features.named_children():
        if getattr(block, "use_res_connect", False):
            assert after[f"features.{name}.conv.2"] == before[f"features.{name}.conv.2"]
    assert all(after[n] == c for n, c in before.items() if n not in producers)
    assert r.model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


# --- Groups beyond the paper's: grouped convolutions, gates, several consumers, residual streams -------


class _GroupedNet(nn.Module):
    """A dense conv read by a grouped conv (4 groups), whose output a dense conv reads."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 24, 3, padding=1, groups=4), nn.BatchNorm2d(24)
        self.conv3 = nn.Conv2d(24, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.relu(self.conv3(x)).mean((2, 3)))


def test_a_grouped_convolution_ties_the_same_position_in_each_of_its_groups():
    model = _GroupedNet().eval()
    groups = {g.producer: g for g in _groups(model, 16)}
    assert set(groups) == {"conv1", "conv2"}  # conv3's output reaches the classifier head
    g1, g2 = groups["conv1"], groups["conv2"]
    assert (g1.width, g1.channels, g2.width, g2.channels) == (16, 4, 24, 6)
    # conv1's channel c is at position c % 4 of conv2's input group c // 4: units tie c, c+4, c+8, c+12
    assert g1.writers[0].units == tuple(c % 4 for c in range(16))
    assert g1.kept_channels([1, 3]) == (1, 3, 5, 7, 9, 11, 13, 15)
    assert g2.writers[0].units == tuple(c % 6 for c in range(24))


def test_tied_channels_prune_whole_units_and_a_file_splitting_them_is_refused():
    torch.manual_seed(0)
    model = _GroupedNet().eval()
    r = prune(model, _batches(1, 8, size=16), flops_reduction=0.4, tolerance=0.1, progress=False)
    for d in r.layers:
        g = {g.producer: g for g in _groups(model, 16)}[d.producer]
        units = {g.writers[0].units[c] for c in d.kept}
        assert list(d.kept) == list(g.kept_channels(units))
    assert r.model.conv2.in_channels == len(r.layers[0].kept) and r.model.conv2.groups == 4
    config = copy.deepcopy(r.model.apib_pruning)
    config["kept"]["conv1"] = [0, 1, 2, 3]  # the first conv group only: not a union of units
    with pytest.raises(ValueError, match="split a set tied by a grouped convolution"):
        apply_pruning(_GroupedNet().eval(), config)


class _GatedNet(nn.Module):
    """A squeeze-excitation gate on a conv's channels, then a conv reading the gated channels."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.fc1, self.fc2 = nn.Conv2d(12, 4, 1), nn.Conv2d(4, 12, 1)
        self.conv2 = nn.Conv2d(12, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


def test_a_gated_group_is_written_by_the_gate_and_read_by_the_gate_and_the_next_conv():
    groups = {g.producer: g for g in _groups(_GatedNet().eval(), 16)}
    assert set(groups) == {"conv1", "fc1"}
    g = groups["conv1"]
    assert [w.name for w in g.writers] == ["conv1", "fc2"] and set(g.consumers) == {"fc1", "conv2"}
    assert {(n, side) for n, side, _, _ in g.scaled} == {
        ("conv1", "out"),
        ("fc2", "out"),
        ("fc1", "in"),
        ("conv2", "in"),
    }


def test_a_group_with_several_consumers_takes_the_mean_of_their_statistics():
    from apib.options import PruneOptions
    from apib.scoring import score

    torch.manual_seed(0)
    model = _GatedNet().eval()
    batches = _batches(2, 6, size=16)
    groups = _groups(model, 16)
    layers = score(model, batches, groups, PruneOptions(), torch.device("cpu"), False, {})
    g, problem = groups[0], layers[0].problem
    parts = [ak.hsic_matrix(x, y.flatten(1)) for x, y in _layer_ios(model, batches, g.consumers)]
    q, b, n_rows = problem.statistics()
    assert n_rows == 12**2
    torch.testing.assert_close(q, sum(p[0].double() for p in parts) / 2, rtol=1e-6, atol=0)
    torch.testing.assert_close(b, sum(p[1].double() for p in parts) / 2, rtol=1e-6, atol=0)
    torch.testing.assert_close(layers[0].scores, b)


def _layer_ios(model, batches, names):
    return [_layer_io(model, batches, name) for name in names]


def test_prune_residual_adds_the_residual_streams_and_leaves_the_default_unchanged():
    model = _resnet18()
    default = _groups(model)
    dg = dependency_graph(model.eval(), torch.randn(1, 3, 32, 32))
    both = find_groups(model, dg, prune_residual=True)
    assert [g for g in both if not g.residual] == default
    streams = [g for g in both if g.residual]
    # one stream per stage: the stem's (through layer1), then each stage's from its first block on;
    # layer4's reaches the classifier head and stays
    assert [g.producer for g in streams] == ["conv1", "layer2.0.conv2", "layer3.0.conv2"]
    writers = {w.name for w in streams[1].writers}
    assert writers == {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"}
    assert set(streams[1].consumers) == {"layer2.1.conv1", "layer3.0.conv1", "layer3.0.downsample.0"}


def test_prune_residual_round_trips_through_a_file(tmp_path):
    model = _resnet18()
    r = prune(model, _batches(), flops_reduction=0.5, tolerance=0.05, prune_residual=True, progress=False)
    assert r.model.apib_pruning["prune_residual"] is True
    assert r.model.conv1.out_channels < 64  # the stem's stream was pruned
    save_pruned(r, tmp_path / "p.pt")
    loaded = load_pruned(tmp_path / "p.pt", torchvision.models.resnet18(num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), r.model.eval()(x))
    default = prune(model, _batches(), flops_reduction=0.5, tolerance=0.05, progress=False)
    assert "prune_residual" not in default.model.apib_pruning  # the paper's files keep their format


class _AllResidual(nn.Module):
    """conv1's channels are summed with conv2's; conv3 is read by the classifier."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = (
            nn.Conv2d(3, 8, 3),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Conv2d(8, 4, 1),
        )
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        return self.fc(self.conv3(x + torch.relu(self.conv2(x))).mean((2, 3)))


def test_a_model_whose_only_groups_are_residual_says_so():
    with pytest.raises(ValueError, match="outside its residual streams; prune_residual=True"):
        prune(_AllResidual(), [torch.randn(4, 3, 8, 8)], flops_reduction=0.3, progress=False)
    r = prune(
        _AllResidual(), [torch.randn(4, 3, 8, 8)], flops_reduction=0.3, prune_residual=True, progress=False
    )
    assert r.layers[0].consumers == ("conv2", "conv3")


def test_a_failing_forward_is_the_models_own_error_not_a_mapping_error():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x[:, :2])  # two channels into a three-channel conv

    with pytest.raises(RuntimeError, match="channels"):
        dependency_graph(Broken(), torch.randn(1, 3, 8, 8))


def test_prune_residual_must_be_a_bool():
    with pytest.raises(ValueError, match="prune_residual must be True or False"):
        prune(_resnet18(), _batches(1, 4), flops_reduction=0.5, prune_residual="yes", progress=False)


@pytest.mark.parametrize("criterion", ["l1", "fpgm", "hrank", "chip", "random"])
def test_every_criterion_scores_the_units_of_gated_and_tied_groups(criterion):
    from apib.options import PruneOptions
    from apib.scoring import score

    torch.manual_seed(0)
    for model in (_GatedNet().eval(), _GroupedNet().eval()):
        groups = _groups(model, 16)
        opts = PruneOptions(criterion=criterion)
        layers = score(model, _batches(1, 6, size=16), groups, opts, torch.device("cpu"), False, {})
        assert [s.scores.shape for s in layers] == [(g.channels,) for g in groups]
        assert all(bool(torch.isfinite(s.scores).all()) for s in layers)


def test_l1_scores_a_gated_group_by_both_producers_filters_each_scaled_by_its_mean():
    from apib.criteria import l1_scores
    from apib.options import PruneOptions
    from apib.scoring import score

    model = _GatedNet().eval()
    groups = _groups(model, 16)
    layers = score(model, None, groups, PruneOptions(criterion="l1"), torch.device("cpu"), False, {})
    a, b = l1_scores(model.conv1.weight), l1_scores(model.fc2.weight)
    torch.testing.assert_close(layers[0].scores, (a / a.mean() + b / b.mean()) / 2)
    # tied channels: a unit's score is the mean of its channels' (conv1's filters c, c+4, c+8, c+12)
    model = _GroupedNet().eval()
    layers = score(
        model, None, _groups(model, 16), PruneOptions(criterion="l1"), torch.device("cpu"), False, {}
    )
    torch.testing.assert_close(layers[0].scores, l1_scores(model.conv1.weight).view(4, 4).mean(0))


def test_fully_connected_layers_are_groups_but_the_classifiers_input_stays():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 24),
        nn.ReLU(),
        nn.Linear(24, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    ).eval()
    groups = {g.producer: g for g in _groups(model, 16)}
    assert set(groups) == {"0", "4"}  # "6" is read by the classifier "8"
    flat = groups["0"].readers[0]
    assert flat.name == "4" and flat.units == tuple(c // 4 for c in range(32))  # 2x2 features a channel
    assert groups["4"].consumers == ("6",)


def test_squeezenets_last_fire_feeds_the_classifier_conv_and_stays():
    producers = {g.producer for g in _groups(torchvision.models.squeezenet1_1(num_classes=10).eval(), 64)}
    assert "features.12.squeeze" in producers
    assert not {"features.12.expand1x1", "features.12.expand3x3"} & producers


class _SizedByCode(nn.Module):
    """Channel counts written into the forward: a split into [4, 4] and a slice x[:, :keep]."""

    def __init__(self, keep: int):
        super().__init__()
        self.keep = keep
        self.conv1, self.conv_a, self.conv_b = nn.Conv2d(3, 8, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3)
        self.conv2, self.conv3 = nn.Conv2d(8, 8, 1), nn.Conv2d(keep, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        a, b = torch.split(torch.relu(self.conv1(x)), [4, 4], dim=1)
        x = torch.relu(self.conv2(torch.cat([self.conv_a(a), self.conv_b(b)], 1)))
        return self.fc(self.conv3(x[:, : self.keep]).mean((2, 3)))


@pytest.mark.parametrize("keep, sliced_prunable", [(8, True), (6, False)])
def test_channels_whose_count_the_models_code_fixes_are_not_pruned(keep, sliced_prunable):
    model = _SizedByCode(keep).eval()
    producers = {g.producer for g in _groups(model, 16)}
    # conv1 is split by sizes written in the forward; conv2 is sliced, which stays right only whole
    assert producers == {"conv_a", "conv_b"} | ({"conv2"} if sliced_prunable else set())
    r = prune(
        model, [torch.randn(6, 3, 16, 16)], flops_reduction=0.2, criterion="l1", tolerance=0.2, progress=False
    )
    assert r.model(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_a_pruned_model_whose_code_breaks_is_a_clear_error():
    class GroupNormedInline(nn.Module):  # a functional group norm: 4 groups whatever the channels
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1), nn.Linear(4, 3)

        def forward(self, x):
            x = torch.relu(nn.functional.group_norm(self.conv1(x), 4))
            return self.fc(self.conv2(x).mean((2, 3)))

    with pytest.raises(ValueError, match="pruned GroupNormedInline no longer runs .*fixes a channel count"):
        prune(
            GroupNormedInline(),
            [torch.randn(6, 3, 16, 16)],
            flops_reduction=0.1,
            criterion="l1",
            progress=False,
        )
