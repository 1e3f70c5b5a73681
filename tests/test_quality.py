"""benchmarks/quality.py on tiny configurations: the planted-signal metrics, APIB on an easy planted
problem, the paired test, resumption from cached cells, the win/tie/loss table, and the schema of both
tests' result files."""

import importlib
import json
import math
import os

import pytest
import torch

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture(scope="module")
def quality():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(BENCHMARKS)  # the script imports its sibling `common`
        yield importlib.import_module("quality")


def test_planted_problem_shapes_and_truth(quality):
    cfg = quality.PlantedConfig(n=16, channels=12, k=3, side=5, loud=2, duplicates=2, out_channels=2)
    p = quality.planted_problem(cfg, seed=1)
    assert p.maps.shape == (16, 12, 5, 5) and p.output.shape == (16, 2 * 5 * 5)
    assert p.weight.shape == (12, 1, 3, 3) and p.k == 3
    # k signal channels plus 2 duplicates carry a group; duplicates share their source's group
    assert (p.group >= 0).sum() == 5 and sorted(p.group[p.group >= 0].bincount().tolist()) == [1, 2, 2]
    assert p.loud.sum() == 2 and (p.group[p.loud] == -1).all()
    assert (p.maps >= 0).all()
    twin = torch.nonzero(p.group == 0).flatten()
    if twin.numel() == 2:  # a near-duplicate: same input map up to dup_noise
        a, b = p.maps[:, twin[0]], p.maps[:, twin[1]]
        assert (a - b).norm() < 0.3 * a.norm()


def test_precision_recall_counts_groups_once(quality):
    cfg = quality.PlantedConfig(n=8, channels=10, k=2, side=3, loud=1, duplicates=1)
    p = quality.planted_problem(cfg, seed=0)
    members = torch.nonzero(p.group == 0).flatten()
    loud = torch.nonzero(p.loud).flatten()
    both = quality.precision_recall(p, members)  # a signal channel and its duplicate: one group
    assert both == {"precision": 1.0, "recall": 0.5, "loud": 0.0, "redundant": 0.5}
    mixed = quality.precision_recall(p, torch.cat([members[:1], loud]))
    assert mixed == {"precision": 0.5, "recall": 0.5, "loud": 0.5, "redundant": 0.0}


def test_apib_recovers_an_easy_planted_signal(quality):
    # Equal-scale channels, no loud noise, no duplicates, 32 samples per channel of the output
    # (n = 128): APIB found all k in 30 of 30 seeds when this was written.
    easy = {"easy": quality.PlantedConfig(n=128, channels=16, k=4)}
    result = quality.run_planted(["apib", "l1", "random"], [0, 1, 2], easy)
    apib = [r for r in result["runs"] if r["criterion"] == "apib"]
    assert [r["recall"] for r in apib] == [1.0, 1.0, 1.0]
    assert [r["precision"] for r in apib] == [1.0, 1.0, 1.0]
    assert len(result["runs"]) == 9 and len(result["summary"]) == 3
    for row in result["runs"]:
        assert len(row["kept"]) == 4 and 0 <= row["recall"] <= row["precision"] <= 1


def test_bad_arguments_raise(quality):
    with pytest.raises(ValueError, match="exceed"):
        quality.PlantedConfig(channels=8, k=4, loud=3, duplicates=2)
    with pytest.raises(ValueError, match="criteria"):
        quality.run_planted(["apib", "nope"], [0])
    with pytest.raises(ValueError, match="seeds"):
        quality.run_planted(["apib"], [])


def test_paired_t_test_matches_the_closed_form_for_three_pairs(quality):
    # With 2 degrees of freedom the two-sided p of Student's t is 1 - t / sqrt(t^2 + 2).
    def closed_form(d):
        mean = sum(d) / 3
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
        t = abs(mean) / (sd / math.sqrt(3))
        return 1 - t / math.sqrt(t * t + 2)

    base = [50.0, 60.0, 70.0]
    for d, outcome in (([1, 2, 3], "tie"), ([2, 2.1, 1.9], "win"), ([-2, -2.1, -1.9], "loss")):
        test = quality.paired_test([b + x for b, x in zip(base, d, strict=True)], base)
        assert test["p"] == pytest.approx(closed_form(d), rel=1e-9)
        assert test["outcome"] == outcome and test["diff"] == pytest.approx(sum(d) / 3)
    equal = quality.paired_test([1.0, 2.0], [1.0, 2.0])
    assert equal == {"n": 2, "diff": 0.0, "p": 1.0, "outcome": "tie"}
    assert quality.paired_test([2.0, 3.0], [1.0, 2.0])["outcome"] == "win"  # +1 on every seed
    step = quality.paired_test([50.27777777777778, 60.27777777777777], [50.0, 60.0])  # one image in 360
    assert (step["p"], step["outcome"]) == (0.0, "win")  # the same step on both seeds, up to rounding
    assert quality.paired_test([2.0], [1.0])["outcome"] is None
    with pytest.raises(ValueError, match="equal lengths"):
        quality.paired_test([1.0, 2.0], [1.0])


def test_parse_variant(quality):
    name, options = quality.parse_variant("apib-x=allocation=uniform,normalize=true,alpha0=0.5")
    assert name == "apib-x"
    assert options == {"criterion": "apib", "allocation": "uniform", "normalize": True, "alpha0": 0.5}
    bad_specs = (
        "apib-x",
        "apib-x=",
        "apib-x=allocation",
        "=allocation=uniform",
        "a=nope=1",
        "a=bandwidth=wide",
    )
    for bad in bad_specs:
        with pytest.raises(ValueError):
            quality.parse_variant(bad)


def test_planted_rows_share_one_layer_configurations(quality):
    variants = dict(
        quality.parse_variant(v)
        for v in ("u=allocation=uniform", "m=bandwidth=median", "lab=target=labels", "m2=bandwidth=median")
    )
    assert quality.planted_rows(variants) == {"apib": ["apib", "u"], "m": ["m", "m2"]}
    cfg = quality.PlantedConfig(n=32, channels=10, k=3, side=4, correlation=0.5)
    result = quality.run_planted(["apib", "l1"], [0], {"corr": cfg}, variants)
    assert [s["criterion"] for s in result["summary"]] == ["apib", "l1", "m"]
    assert result["shared_rows"] == {"apib": ["apib", "u"], "m": ["m", "m2"]}
    assert result["without_row"] == ["lab"]
    with pytest.raises(ValueError, match="correlation"):
        quality.PlantedConfig(correlation=1.0)


def _study(quality, work, seeds, finetune_epochs=1):
    return quality.StudyConfig(
        archs=["resnet20"],
        dataset="digits",
        data_path=None,
        ckpts={},
        train_epochs={"resnet20": 0},
        train_lr={"resnet20": 0.1},
        reductions=[0.3, 0.5],
        seeds=seeds,
        methods={"apib": {"criterion": "apib"}, "l1": {"criterion": "l1"}},
        finetune=["l1"],
        tolerance=0.03,
        calib_size=16,
        bn_images=32,
        finetune_epochs=finetune_epochs,
        finetune_lr=0.01,
        batch_size=16,
        device="cpu",
        work=str(work),
    )


@pytest.fixture
def fake_cells(quality, monkeypatch):
    """run_study with stub cells (the base model is real: resnet20, untrained): records which cells ran;
    the cell numbered in fail_at is interrupted."""
    ran, fail_at = [], []

    def run_cell(settings, model, datasets, val, device):
        if len(ran) + 1 in fail_at:
            raise KeyboardInterrupt
        ran.append((settings["reduction"], settings["seed"], settings["method"], settings["finetune_epochs"]))
        top1 = 50.0 + settings["seed"] + (settings["method"] == "apib")
        return (
            {"settings": settings, "flops_before": 10, "flops_after": 5, "flops_reduction": 0.5}
            | {"params_before": 4, "params_after": 2, "widths": [1], "top1_bn": top1, "prune_s": 0.0}
            | {"top1_finetuned": top1 + 30 if settings["finetune_epochs"] else None, "finetune_s": 0.0}
        )

    monkeypatch.setattr(quality, "run_cell", run_cell)
    return ran, fail_at


def test_a_rerun_skips_finished_cells(quality, tmp_path, fake_cells):
    ran, fail_at = fake_cells
    fail_at.append(3)
    with pytest.raises(KeyboardInterrupt):  # interrupted after two cells
        quality.run_study(_study(quality, tmp_path, [0, 1]), log=lambda _: None)
    assert ran == [(0.3, 0, "apib", 0), (0.3, 0, "l1", 1)]
    fail_at.clear()
    logs = []
    first = quality.run_study(_study(quality, tmp_path, [0, 1]), log=logs.append)
    assert logs[0].startswith("base resnet20: cached")  # the base model is not trained again
    assert len(ran) == 8 and ran[2:4] == [(0.5, 0, "apib", 0), (0.5, 0, "l1", 1)]  # resumes at cell 3
    assert len(first["runs"]) == 8
    again = quality.run_study(_study(quality, tmp_path, [0, 1]), log=lambda _: None)
    assert len(ran) == 8 and again["runs"] == first["runs"]
    quality.run_study(_study(quality, tmp_path, [0, 1, 2]), log=lambda _: None)  # one more seed
    assert ran[8:] == [(0.3, 2, "apib", 0), (0.3, 2, "l1", 1), (0.5, 2, "apib", 0), (0.5, 2, "l1", 1)]
    del ran[:]
    quality.run_study(_study(quality, tmp_path, [0], finetune_epochs=2), log=lambda _: None)
    assert ran == [(0.3, 0, "l1", 2), (0.5, 0, "l1", 2)]  # changed settings: only those cells rerun
    report = quality.run_study(_study(quality, tmp_path, [0, 1, 2, 3]), log=lambda _: None, report_only=True)
    # Nothing runs; the cached cells with these settings are reported (seed 0's l1 now has 2 epochs).
    assert len(ran) == 2 and len(report["runs"]) == 10


def _fake_result(quality, l1_bn, apib_bn, random_bn):
    runs = []
    for method, values in (("apib", apib_bn), ("l1", l1_bn), ("random", random_bn)):
        for seed, top1 in enumerate(values):
            runs.append(
                {"arch": "resnet20", "reduction": 0.5, "seed": seed, "method": method, "flops_before": 8e7}
                | {"params_before": 3e5, "flops_reduction": 0.5, "params_after": 1e5, "top1_bn": top1}
                | {
                    "top1_finetuned": top1 + 30 if method != "random" else None,
                    "prune_s": 10,
                    "finetune_s": 10,
                }
            )
    config = {"archs": ["resnet20"], "dataset": "digits", "reductions": [0.5], "seeds": [0, 1, 2]}
    config |= {"methods": {m: {"criterion": m} for m in ("apib", "l1", "random")}, "finetune": ["apib", "l1"]}
    config |= {"tolerance": 0.03, "calib_size": 128, "bn_images": 512, "finetune_epochs": 1}
    config |= {"finetune_lr": 0.01, "batch_size": 128}
    bases = {"resnet20": {"source": "trained here, 10 epochs", "top1": 97.5, "train_s": 120.0}}
    return quality.analyse({"config": config, "bases": bases, "runs": runs, "time_s": 60.0})


def test_table_from_a_fake_result_set(quality):
    result = _fake_result(quality, [50.0, 60.0, 70.0], [52.0, 62.1, 71.9], [51.0, 62.0, 73.0])
    counts = quality.tally(result["comparisons"])
    assert counts["apib", "l1", "bn"] == {"win": 1, "tie": 0, "loss": 0}
    assert counts["apib", "random", "bn"] == {"win": 0, "tie": 1, "loss": 0}  # +1, +0.1, -1.1
    assert counts["apib", "all", "bn"] == {"win": 0, "tie": 1, "loss": 0}
    assert counts["apib", "l1", "finetuned"] == {"win": 1, "tie": 0, "loss": 0}
    assert ("apib", "random", "finetuned") not in counts  # random was not fine-tuned
    assert counts["l1", "all", "bn"] == {"win": 0, "tie": 1, "loss": 0}
    table = quality.study_markdown(result, {"device": "cpu", "torch": "2", "commit": "abc", "date": "today"})
    assert "| resnet20 | trained here, 10 epochs | 97.50 | 80.00M | 0.300M | 0, 1, 2 |" in table
    assert "Compute: 3 min of pruning and fine-tuning over the cells, 2 min training" in table
    assert "| apib | 1/0/0 | 0/1/0 | 0/1/0 |" in table  # BN: vs l1, vs random, vs every baseline
    assert "| apib | 1/0/0 | – | 1/0/0 |" in table  # fine-tuned: random has no fine-tuned runs
    assert "| apib | 50.0% | 62.00 ± 9.95 ▲ | 92.00 ± 9.95 ▲ |" in table
    assert "| random | 50.0% | 62.00 ± 11.00 | – |" in table
    result["runs"] = [r for r in result["runs"] if (r["seed"], r["method"]) != (2, "random")]
    partial = quality.study_markdown(
        quality.analyse(result), {"device": "cpu", "torch": "2", "commit": "abc", "date": "-"}
    )
    assert "| 0, 1 (fewer than the 3 asked); partial: 2 (2 of 3 cells) |" in partial
    loses = _fake_result(quality, [50.0, 60.0, 70.0], [48.0, 57.9, 68.1], [40.0, 50.0, 60.0])
    assert quality.tally(loses["comparisons"])["apib", "all", "bn"] == {"win": 0, "tie": 0, "loss": 1}


def test_result_files(quality, tmp_path):
    out = str(tmp_path)
    variant = ["--variants", "apib-median=bandwidth=median"]
    quality.main(
        ["--tests", "planted", "--criteria", "apib", "l1", "--planted-seeds", "0", "--out", out, *variant]
    )
    planted = json.loads((tmp_path / "planted_signal.json").read_text())
    assert set(planted) >= {"env", "problems", "seeds", "runs", "summary", "time_s", "variants"}
    assert set(planted["problems"]) == set(quality.PROBLEMS)
    assert {s["criterion"] for s in planted["summary"]} == {"apib", "l1", "apib-std", "apib-median"}
    assert {"precision_mean", "recall_std", "loud_mean", "redundant_mean"} <= set(planted["summary"][0])
    assert "| apib-median |" in (tmp_path / "planted_signal.md").read_text()

    args = ["--tests", "pruning", "--archs", "resnet20", "--criteria", "apib", "l1", "--seeds", "0", *variant]
    args += ["--reductions", "0.5", "--train-epochs", "0", "--finetune", "--calib-size", "16"]
    args += ["--bn-images", "32", "--out", out, "--work", str(tmp_path / "work")]
    quality.main(args)
    stem = tmp_path / "quality_digits"
    report = json.loads(stem.with_suffix(".json").read_text())
    assert set(report) >= {"env", "config", "bases", "runs", "summary", "comparisons", "time_s"}
    assert {"commit", "device", "torch"} <= set(report["env"])
    assert [r["method"] for r in report["runs"]] == ["apib", "l1", "apib-median"]
    for row in report["runs"]:
        assert abs(row["flops_reduction"] - 0.5) <= 0.03 * 0.5  # tolerance 0.03 of the target FLOPs
        assert row["top1_finetuned"] is None  # nothing fine-tuned
        assert row["params_after"] < row["params_before"]
        assert 0 <= row["top1_bn"] <= 100
    assert len(list((tmp_path / "work" / "cells" / "digits" / "resnet20" / "r0.5" / "s0").iterdir())) == 3
    table = stem.with_suffix(".md").read_text()
    assert "| method | -0.5: FLOPs ↓ | BN | fine-tuned |" in table
    assert "| l1 |" in table and "apib-median = bandwidth=median" in table
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
