"""The output folder is written whole or not at all (issue 19, items 2 and 3), and the API's data
errors name what the user handed in (item 7)."""

import logging
import os
import socket
import subprocess
import sys

import pytest
import torch

import apib_kernels as ak
from apib.models import get_model
from apib.output import OutputFolder
from apib.pruning import prune

# --- OutputFolder ------------------------------------------------------------------------------------


def _files(folder):
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_output_appears_only_when_the_run_completes(tmp_path):
    dest = tmp_path / "run"
    with OutputFolder(dest) as out:
        (out / "report.json").write_text("{}")
        assert not dest.exists()  # nothing visible while the run is going on
    assert _files(dest) == {"report.json": "{}"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failing_run_leaves_the_previous_run_and_no_staging(tmp_path):
    dest = tmp_path / "run"
    with OutputFolder(dest) as out:
        (out / "model.pt").write_text("old model")
        (out / "report.json").write_text("old report")
    with pytest.raises(KeyboardInterrupt), OutputFolder(dest, overwrite=True) as out:
        (out / "model.pt").write_text("new model")
        raise KeyboardInterrupt
    assert _files(dest) == {"model.pt": "old model", "report.json": "old report"}
    with OutputFolder(dest, overwrite=True) as out:
        (out / "model.pt").write_text("new model")
    assert _files(dest) == {"model.pt": "new model"}  # replaced whole: no stale report beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_output_refusals(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.json").write_text("{}")
    with pytest.raises(ValueError, match="--output .*run' already holds report.json: pass --overwrite"):
        OutputFolder(tmp_path / "run")
    (tmp_path / "run" / "data").mkdir()
    with pytest.raises(ValueError, match="holds data, which no apib run writes"):
        OutputFolder(tmp_path / "run", overwrite=True)
    with pytest.raises(ValueError, match="--ckpt '.*run/data/x.pt' lies inside --output"):
        OutputFolder(tmp_path / "run", overwrite=True, inputs={"--ckpt": tmp_path / "run" / "data" / "x.pt"})
    with pytest.raises(ValueError, match="--data-path '.*run' lies inside --output"):
        OutputFolder(tmp_path / "run" / ".." / "run", inputs={"--data-path": tmp_path / "run"})
    with pytest.raises(ValueError, match="report.json' is a file"):
        OutputFolder(tmp_path / "run" / "report.json")
    (tmp_path / "empty").mkdir()
    with OutputFolder(tmp_path / "empty", inputs={"--ckpt": tmp_path / "run" / "report.json"}) as out:
        (out / "model.pt").write_text("m")
    assert _files(tmp_path / "empty") == {"model.pt": "m"}


def test_output_dot_is_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with OutputFolder(".") as out:
        (out / "report.json").write_text("{}")
    assert _files(tmp_path / "here") == {"report.json": "{}"}


def test_staging_of_a_killed_run_is_removed_by_the_next(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    prefix = f".run.apib-partial-{socket.gethostname()}-"
    abandoned = tmp_path / f"{prefix}{int(dead.stdout)}-0000"
    running = tmp_path / f"{prefix}{os.getpid()}-1111"  # a live process's run is left alone
    abandoned.mkdir()
    running.mkdir()
    with OutputFolder(tmp_path / "run") as out:
        (out / "report.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "run"]


# --- Data errors of the pruning API ------------------------------------------------------------------


def test_an_empty_calibration_loader_is_named():
    with pytest.raises(ValueError, match="calib_loader yielded no batch"):
        prune(get_model("resnet20"), [], flops_reduction=0.5, progress=False)


def test_calibration_batches_of_different_image_sizes_are_named():
    batches = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 28, 28)]
    with pytest.raises(ValueError, match=r"same image size: batch 1 has \(3, 28, 28\).*\(3, 32, 32\)"):
        prune(get_model("resnet20"), batches, flops_reduction=0.5, calib_size=None, progress=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_calibration_images_are_named(bad):
    images = torch.randn(8, 3, 32, 32)
    images[5, 1, 2, 3] = bad
    batches = [(images[:4], torch.zeros(4)), (images[4:], torch.zeros(4))]
    with pytest.raises(ValueError, match=r"calibration images contain NaN or infinite values \(batch 1"):
        prune(get_model("resnet20"), batches, flops_reduction=0.5, progress=False)


def test_hsic_lasso_says_which_input_is_constant(caplog):
    x, y = torch.randn(16, 5, 3, 3, dtype=torch.float64), torch.randn(16, 4, dtype=torch.float64)
    with caplog.at_level(logging.WARNING):
        ak.hsic_lasso(x.new_ones(x.shape), y, n_select=2, backend="torch")
    assert "every channel of x is constant" in caplog.text and "y constant" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ak.hsic_lasso(x, y.new_ones(y.shape), n_select=2, backend="torch")
    assert "is y constant?" in caplog.text
