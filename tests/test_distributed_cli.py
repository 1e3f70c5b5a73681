"""`apib prune` under torchrun: 2 gloo processes on the CPU against one process over the same blocks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from apib.cli import main

pytest.importorskip("sklearn", reason="the CLI tests run on the digits dataset, which is scikit-learn's")

ROOT = Path(__file__).resolve().parent.parent
PRUNE = [
    "prune",
    "--model",
    "resnet20",
    "--dataset",
    "digits",
    "--flops-reduction",
    "0.5",
    "--tolerance",
    "0.05",
    "--block-size",
    "32",
    "--bn-images",
    "0",
    "--quiet",
]


def _torchrun(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`apib` under torchrun with 2 processes; each output line starts with its rank's [default<r>]."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    return subprocess.run(
        [*command, "--tee", "3", "-m", "apib.cli", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    "flags, rank_0_only",
    [
        (["--criterion", "apib"], []),
        (["--criterion", "apib", "--preset", "paper"], []),
        (["--criterion", "hrank"], ["--finetune-epochs", "1"]),
    ],
    ids=["apib", "apib-paper", "hrank"],
)
def test_two_processes_prune_as_one_and_only_rank_0_writes(tmp_path, flags, rank_0_only):
    argv = [*PRUNE, *flags, "--calib-size", "64"]
    run = tmp_path / "run"
    run.mkdir()
    done = _torchrun([*argv, *rank_0_only, "--output", str(run / "out")], run)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _files(run) == ["out", "out/pruned.pt", "out/report.json", "out/widths.png"]
    assert "[default0]:FLOPs" in done.stdout and "[default1]" not in done.stdout + done.stderr

    assert main([*argv, "--output", str(tmp_path / "one")]) == 0
    two = json.loads((run / "out" / "report.json").read_text())
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    assert two["run"]["processes"] == 2 and one["run"]["processes"] == 1
    assert ("finetune" in two["time_s"]) == bool(rank_0_only)
    widths = [[(d["name"], d["kept"], d["rule"]) for d in r["layers"]] for r in (two, one)]
    assert widths[0] == widths[1] and two["flops_after"] == one["flops_after"]
    kept = [
        torch.load(f / "pruned.pt", weights_only=True)["pruning"] for f in (run / "out", tmp_path / "one")
    ]
    assert kept[0] == kept[1]
    if "paper" in flags:  # the penalty found differs only by the rounding of the statistics' sum order
        assert two["alpha"] == pytest.approx(one["alpha"], rel=1e-6)


@pytest.mark.parametrize(
    "calib_size, existing, message",
    [
        ("96", False, "--calib-size 96 cannot be cut into 2 equal shards of whole --block-size 32 blocks"),
        ("64", True, "already holds report.json: pass --overwrite"),
        ("1472", False, "--calib-size 1472 is more than the 1437 training images of --dataset digits"),
    ],
    ids=["uneven-shards", "output-taken", "too-few-images"],
)
def test_a_bad_set_up_fails_on_every_process(tmp_path, calib_size, existing, message):
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "report.json").write_text("{}")
    done = _torchrun([*PRUNE, "--calib-size", calib_size, "--output", str(out)], tmp_path)
    assert done.returncode != 0
    for rank in range(2):
        assert f"[default{rank}]:apib prune: error: " in done.stderr and message in done.stderr, done.stderr
        assert done.stderr.count(message) == 2
    assert _files(tmp_path) == (["out", "out/report.json"] if existing else [])


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["eval", "--dataset", "digits", "--pruned", "p.pt"],
            "apib eval runs in one process; under torchrun",
        ),
        (
            [*PRUNE, "--calib-size", "128", "--block-size", "128", "--output", "out"],
            "pass a --calib-size that is a multiple of 256 (2 processes × --block-size), or a --block-size "
            "that divides 64",
        ),
        (
            [*PRUNE, "--calib-size", "64", "--device", "cuda:1", "--output", "out"],
            "under torchrun every process takes the GPU of its LOCAL_RANK: pass --device cuda",
        ),
    ],
    ids=["eval", "shards", "device"],
)
def test_torchrun_set_ups_are_refused_before_the_processes_meet(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert _files(tmp_path) == []
