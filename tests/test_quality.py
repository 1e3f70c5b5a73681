"""benchmarks/quality.py on tiny configurations: the planted-signal metrics, APIB on an easy planted
problem, and the schema of both tests' result files."""

import importlib
import json
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


def test_result_files(quality, tmp_path):
    out = str(tmp_path)
    quality.main(["--tests", "planted", "--criteria", "apib", "l1", "--planted-seeds", "0", "--out", out])
    planted = json.loads((tmp_path / "planted_signal.json").read_text())
    assert set(planted) >= {"env", "problems", "seeds", "runs", "summary", "time_s"}
    assert set(planted["problems"]) == set(quality.PROBLEMS)
    assert {s["criterion"] for s in planted["summary"]} == {"apib", "l1", "apib-std"}
    assert {"precision_mean", "recall_std", "loud_mean", "redundant_mean"} <= set(planted["summary"][0])
    assert "| apib-std |" in (tmp_path / "planted_signal.md").read_text()

    args = ["--tests", "pruning", "--criteria", "apib", "l1", "--seeds", "0", "--train-epochs", "0"]
    args += ["--finetune-epochs", "0", "--calib-size", "16", "--bn-images", "32", "--out", out]
    quality.main(args)
    stem = tmp_path / "quality_resnet20_digits"
    report = json.loads(stem.with_suffix(".json").read_text())
    assert set(report) >= {"env", "config", "base", "runs", "summary", "time_s"}
    assert {"commit", "device", "torch"} <= set(report["env"])
    assert [r["criterion"] for r in report["runs"]] == ["apib", "l1"]
    for row in report["runs"]:
        assert abs(row["flops_reduction"] - 0.5) <= 0.03 * 0.5  # tolerance 0.03 of the target FLOPs
        assert row["top1_finetuned"] == row["top1_pruned"]  # no fine-tuning epochs
        assert row["params_after"] < row["params_before"]
        assert 0 <= row["top1_bn"] <= 100
    table = stem.with_suffix(".md").read_text()
    assert "| criterion | FLOPs reduction | params | top-1 after pruning (%) | top-1 after BN" in table
    assert "| l1 |" in table
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
