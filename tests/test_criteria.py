"""Channel-importance criteria: hand-checkable values, faithful vs fast modes, float64 oracles, checks."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from apib.criteria import (
    CRITERIA,
    ChipAccumulator,
    HRankAccumulator,
    chip_scores,
    fpgm_scores,
    hrank_scores,
    keep_indices,
    l1_scores,
    random_scores,
)
from apib.criteria.chip import FAITHFUL_RTOL

scipy_distance = pytest.importorskip("scipy.spatial.distance")


def maps(n, c, h, w, *, seed=0, dtype=torch.float32, zero_channel=False, rank=None):
    """ReLU maps like a layer's, optionally with channel 0 all zero or every map of rank <= `rank`."""
    g = torch.Generator().manual_seed(seed)
    if rank is None:
        x = torch.relu(torch.randn(n, c, h, w, generator=g, dtype=torch.float64))
    else:
        x = torch.randn(n, c, h, rank, generator=g, dtype=torch.float64)
        x = x @ torch.randn(n, c, rank, w, generator=g, dtype=torch.float64)
    if zero_channel:
        x[:, 0] = 0
    return x.to(dtype)


# (n, C, H, W, options) — why each case is here
MAP_CASES = [
    pytest.param(4, 6, 5, 7, {}, id="H!=W"),
    pytest.param(1, 5, 6, 6, {}, id="one-image"),
    pytest.param(3, 1, 4, 4, {}, id="one-channel"),
    pytest.param(3, 9, 2, 3, {}, id="C>HW"),  # CHIP takes the H·W side
    pytest.param(2, 6, 6, 6, {"zero_channel": True}, id="zero-channel"),
    pytest.param(3, 5, 7, 6, {"rank": 2}, id="rank-deficient"),
    pytest.param(2, 8, 1, 5, {}, id="H=1"),  # rank 1 or 0 maps, D = 5 < C
    pytest.param(2, 4, 9, 9, {"dtype": torch.float64}, id="float64"),
]


def chip_reference(x: torch.Tensor) -> torch.Tensor:
    """Per-image float64 SVD nuclear norms with row j zeroed, averaged over images: the definition."""
    a = x.to(torch.float64).flatten(2)
    full = torch.linalg.matrix_norm(a, ord="nuc")
    scores = torch.empty(a.shape[:2], dtype=torch.float64)
    for j in range(a.shape[1]):
        reduced = a.clone()
        reduced[:, j] = 0
        scores[:, j] = full - torch.linalg.matrix_norm(reduced, ord="nuc")
    return scores.mean(0)


def mean_nuclear_norm(x: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(x.to(torch.float64).flatten(2), ord="nuc").mean().item()


# --- L1 and FPGM ----------------------------------------------------------------------------------


def test_l1_hand_values():
    w = torch.zeros(3, 2, 2, 2)
    w[1] = -0.5
    w[2, 0, 1, 1] = 3.0
    w[2, 1, 0, 0] = -1.25
    scores = l1_scores(w)
    assert scores.dtype == torch.float64
    assert scores.tolist() == [0.0, 4.0, 4.25]


def test_l1_accepts_linear_weights():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.5]])
    assert l1_scores(w).tolist() == [3.0, 1.0]


def test_fpgm_centre_filter_scores_lowest():
    # Filters 0, ±e_0, ±e_1 in R^4: the centre is the geometric median.
    e = torch.eye(4)
    w = torch.stack([torch.zeros(4), e[0], -e[0], e[1], -e[1]]).view(5, 1, 2, 2)
    scores = fpgm_scores(w)
    r2 = math.sqrt(2)
    # centre: four unit distances; ±e_k: 1 to the centre, 2 to its opposite, √2 to the other two
    assert torch.allclose(scores, torch.tensor([4.0] + [3 + 2 * r2] * 4, dtype=torch.float64))
    assert scores.argmin().item() == 0


def test_fpgm_matches_scipy_cdist():
    w = torch.randn(12, 5, 3, 3)
    flat = w.flatten(1).double().numpy()
    want = np.abs(scipy_distance.cdist(flat, flat, "euclidean")).sum(0)
    torch.testing.assert_close(fpgm_scores(w), torch.from_numpy(want), rtol=1e-12, atol=0)


def test_fpgm_nearby_filters_keep_float64_precision():
    # Two filters 1e-7 apart on top of a large common part: the xᵀy expansion would cancel to noise.
    w = torch.full((2, 8), 1e3, dtype=torch.float64)
    w[1, 0] += 1e-7
    torch.testing.assert_close(fpgm_scores(w), torch.full((2,), 1e-7, dtype=torch.float64), rtol=1e-6, atol=0)


# --- HRank ----------------------------------------------------------------------------------------


def test_hrank_hand_values():
    x = torch.zeros(2, 3, 4, 5)
    x[0, 0] = torch.outer(torch.arange(1.0, 5.0), torch.arange(1.0, 6.0))  # rank 1
    x[1, 0] = torch.eye(4, 5)  # rank 4
    x[:, 2] = torch.eye(4, 5) + torch.eye(4, 5).roll(1, 1)  # rank 4 in both images
    # channel 1 stays all zero: rank 0
    for mode in ("fast", "faithful"):
        scores = hrank_scores(x, mode=mode)
        assert scores.dtype == torch.float64
        assert scores.tolist() == [2.5, 0.0, 4.0]


@pytest.mark.parametrize("n,c,h,w,opts", MAP_CASES)
def test_hrank_fast_equals_faithful(n, c, h, w, opts):
    x = maps(n, c, h, w, **opts)
    assert torch.equal(hrank_scores(x, mode="fast"), hrank_scores(x, mode="faithful"))
    # chunks of 1 and of an odd size go through the same per-matrix routine
    assert torch.equal(hrank_scores(x, batch_size=1), hrank_scores(x, batch_size=3))


def test_hrank_near_tolerance_singular_values_agree():
    # Maps with a singular value right around max(H, W)·eps·σ_max: both modes must draw the line alike.
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(64, 8, 8, generator=g))
    v, _ = torch.linalg.qr(torch.randn(64, 8, 8, generator=g))
    s = torch.ones(64, 8)
    s[:, -1] = torch.logspace(-7, -5, 64)
    x = ((u * s[:, None, :]) @ v.mT).view(8, 8, 8, 8)
    fast = hrank_scores(x)
    assert torch.equal(fast, hrank_scores(x, mode="faithful"))
    assert 7 < fast.min() and fast.max() <= 8


def test_hrank_accumulates_batches_exactly():
    x = maps(10, 6, 5, 5, rank=3)
    x[:4, 1] = 0
    acc = HRankAccumulator()
    for part in x.split([3, 3, 4]):
        acc.update(part)
    assert acc.num_images == 10
    assert torch.equal(acc.scores(), hrank_scores(x))


# --- CHIP -----------------------------------------------------------------------------------------


def test_chip_orthogonal_rows_score_their_norms():
    # Orthogonal rows: the nuclear norm is the sum of the row norms, so removing row j costs ‖row j‖.
    q, _ = torch.linalg.qr(torch.randn(12, 4, dtype=torch.float64))
    norms = torch.tensor([3.0, 0.5, 2.0, 1.0], dtype=torch.float64)
    x = (q.T * norms[:, None]).reshape(1, 4, 3, 4)
    for mode in ("fast", "faithful"):
        torch.testing.assert_close(chip_scores(x, mode=mode), norms, rtol=1e-12, atol=1e-12)


def test_chip_hand_values_on_the_hw_side():
    # C = 3 > H·W = 2, rows e0, e1, e0: singular values √2 and 1, so ‖A‖_* = 1 + √2; without a copy
    # of e0 it is 2 (score √2 − 1), without e1 it is √2 (score 1).
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64).view(1, 3, 1, 2)
    r2 = math.sqrt(2)
    want = torch.tensor([r2 - 1, 1.0, r2 - 1], dtype=torch.float64)
    for mode in ("fast", "faithful"):
        torch.testing.assert_close(chip_scores(x, mode=mode), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,c,h,w,opts", MAP_CASES)
def test_chip_fast_matches_float64_svd(n, c, h, w, opts):
    x = maps(n, c, h, w, **opts)
    want = chip_reference(x)
    got = chip_scores(x)
    # The floor: float64 rounding of a minor's zero eigenvalues, through the square root.
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7 * mean_nuclear_norm(x))
    if opts.get("zero_channel"):
        assert abs(got[0].item()) <= 1e-12 * mean_nuclear_norm(x)


@pytest.mark.parametrize("n,c,h,w,opts", MAP_CASES)
def test_chip_fast_matches_faithful(n, c, h, w, opts):
    x = maps(n, c, h, w, **opts)
    fast, faithful = chip_scores(x, mode="fast"), chip_scores(x, mode="faithful")
    rtol = FAITHFUL_RTOL if x.dtype == torch.float32 else 1e-7
    torch.testing.assert_close(fast, faithful, rtol=0, atol=rtol * mean_nuclear_norm(x))


@pytest.mark.parametrize("c,side", [(16, 10), (40, 5)], ids=["C<=HW", "C>HW"])
def test_chip_fast_matches_faithful_on_float32_layer_like_maps(c, side):
    # The stated float32 agreement, at a larger C than the awkward cases; measured ~2e-7 here.
    x = maps(3, c, side, side, seed=3)
    diff = (chip_scores(x) - chip_scores(x, mode="faithful")).abs().max().item()
    assert diff <= FAITHFUL_RTOL * mean_nuclear_norm(x)


def test_chip_chunking_and_batches_do_not_change_scores():
    x = maps(5, 7, 3, 4, rank=2)
    whole = chip_scores(x)
    torch.testing.assert_close(chip_scores(x, batch_size=1), whole, rtol=1e-13, atol=1e-13)
    acc = ChipAccumulator(batch_size=4)
    for part in x.split(2):
        acc.update(part)
    torch.testing.assert_close(acc.scores(), whole, rtol=1e-13, atol=1e-13)


def test_accumulator_checks():
    acc = HRankAccumulator().update(torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match="fmaps must have the 3 channels"):
        acc.update(torch.rand(2, 4, 4, 4))
    with pytest.raises(RuntimeError, match="update"):
        ChipAccumulator().scores()
    with pytest.raises(ValueError, match="batch_size"):
        ChipAccumulator(batch_size=0)


# --- random and keep_indices ----------------------------------------------------------------------


def test_random_scores_are_seeded():
    a = random_scores(10, seed=3)
    assert a.shape == (10,) and a.dtype == torch.float64
    assert torch.equal(a, random_scores(10, seed=3))
    assert not torch.equal(a, random_scores(10, seed=4))
    assert 0 <= a.min() and a.max() < 1


def test_keep_indices_takes_highest_in_index_order():
    scores = torch.tensor([0.1, 0.9, 0.3, 0.7, 0.5])
    assert keep_indices(scores, 3).tolist() == [1, 3, 4]
    assert keep_indices(scores, 5).tolist() == [0, 1, 2, 3, 4]
    assert keep_indices(scores, 1).dtype == torch.int64


def test_keep_indices_ties_go_to_the_lower_index():
    scores = torch.tensor([1.0, 2.0, 1.0, 2.0, 1.0, 0.0])
    assert keep_indices(scores, 1).tolist() == [1]
    assert keep_indices(scores, 3).tolist() == [0, 1, 3]
    assert keep_indices(scores, 4).tolist() == [0, 1, 2, 3]
    assert keep_indices(torch.zeros(6), 2).tolist() == [0, 1]


@pytest.mark.parametrize(
    "scores,n_keep,match",
    [
        (torch.ones(4), 0, "n_keep"),
        (torch.ones(4), 5, r"n_keep must be in \[1, 4\]"),
        (torch.ones(4), 2.0, "n_keep"),
        (torch.ones(4), True, "n_keep"),
        (torch.ones(2, 2), 1, "scores must have shape"),
        (torch.ones(0), 1, "scores must have shape"),
        (torch.tensor([1.0, float("nan")]), 1, "scores"),
    ],
)
def test_keep_indices_checks(scores, n_keep, match):
    with pytest.raises(ValueError, match=match):
        keep_indices(scores, n_keep)


# --- registry and input checks --------------------------------------------------------------------


def test_registry_says_what_each_criterion_reads():
    assert {name: c.needs for name, c in CRITERIA.items()} == {
        "l1": "weight",
        "fpgm": "weight",
        "hrank": "fmaps",
        "chip": "fmaps",
        "random": "none",
    }
    weight, fmaps = torch.randn(6, 3, 3, 3), torch.rand(2, 6, 4, 4)
    inputs = {"weight": weight, "fmaps": fmaps, "none": 6}
    for c in CRITERIA.values():
        assert c.fn(inputs[c.needs]).shape == (6,)
        if c.accumulator is not None:
            assert torch.equal(c.accumulator().update(fmaps).scores(), c.fn(fmaps))


WEIGHT_FNS = [l1_scores, fpgm_scores]
FMAP_FNS = [hrank_scores, chip_scores]


@pytest.mark.parametrize("fn", WEIGHT_FNS)
@pytest.mark.parametrize(
    "weight,match",
    [
        (torch.ones(4), "weight must have shape"),
        (torch.ones(0, 3, 3, 3), "weight must not be empty"),
        (torch.ones(4, 3, dtype=torch.int64), "weight must be a floating-point"),
        (torch.tensor([[1.0, float("inf")]]), "weight contains NaN"),
    ],
)
def test_weight_checks(fn, weight, match):
    with pytest.raises(ValueError, match=match):
        fn(weight)


@pytest.mark.parametrize("fn", FMAP_FNS)
@pytest.mark.parametrize(
    "fmaps,match",
    [
        (torch.ones(2, 3, 4), "fmaps must have shape"),
        (torch.ones(1, 2, 3, 4, 5), "fmaps must have shape"),
        (torch.ones(2, 3, 0, 4), "fmaps must not be empty"),
        (torch.ones(2, 3, 4, 4, dtype=torch.uint8), "fmaps must be a floating-point"),
        (torch.full((2, 3, 4, 4), float("nan")), "fmaps contains NaN"),
    ],
)
def test_fmap_checks(fn, fmaps, match):
    with pytest.raises(ValueError, match=match):
        fn(fmaps)


@pytest.mark.parametrize("fn", FMAP_FNS)
def test_unknown_mode_lists_the_modes(fn):
    with pytest.raises(ValueError, match=r"mode must be one of \('fast', 'faithful'\)"):
        fn(torch.rand(1, 2, 3, 3), mode="exact")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_channels": 0}, "num_channels"),
        ({"num_channels": 3.0}, "num_channels"),
        ({"num_channels": 3, "seed": -1}, "seed"),
    ],
)
def test_random_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        random_scores(**kwargs)


def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


@pytest.mark.parametrize("name", ["l1", "fpgm", "hrank"])
def test_torch_pruning_meta_pruner_keeps_the_best_scored_filters(name):
    import torch_pruning as tp

    from apib.criteria.importance import CriterionImportance

    model = _tiny_net()
    x = torch.randn(4, 3, 12, 12)
    first = model[0]
    if name == "hrank":
        maps = model[:3](x).detach()
        scores = {first: hrank_scores(maps), model[3]: torch.arange(8.0)}
    else:
        scores = None
    expected = CRITERIA[name].fn(first.weight.detach()) if scores is None else scores[first]
    imp = CriterionImportance(name, scores=scores)
    pruner = tp.pruner.MetaPruner(model, x[:1], importance=imp, pruning_ratio=0.5, ignored_layers=[model[8]])
    pruner.step()
    assert first.out_channels == 4
    kept = keep_indices(expected, 4)
    assert torch.equal(first.weight, _tiny_net()[0].weight[kept])


def test_torch_pruning_importance_needs_scores_for_feature_map_criteria():
    from apib.criteria.importance import CriterionImportance

    with pytest.raises(ValueError, match="scores"):
        CriterionImportance("chip")
    with pytest.raises(ValueError, match="criterion"):
        CriterionImportance("magnitude")
