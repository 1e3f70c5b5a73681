"""The `apib` command end to end on the embedded digits, and its error messages."""

import json
import os
import pickle
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import apib
import apib.models
from apib.cli import main

pytest.importorskip("sklearn", reason="the CLI tests run on the digits dataset, which is scikit-learn's")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    assert (
        main(
            [
                "train",
                "--model",
                "resnet20",
                "--dataset",
                "digits",
                "--epochs",
                "1",
                "--quiet",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_train_writes_a_loadable_checkpoint_and_report(trained):
    ckpt = torch.load(trained / "model.pt", weights_only=True)
    assert ckpt["arch"] == "resnet20" and ckpt["num_classes"] == 10
    report = json.loads((trained / "report.json").read_text())
    assert 0 <= report["top1"] <= 100 and len(report["history"]) == 1


def test_prune_writes_model_report_and_plot(trained, tmp_path, capsys):
    out = tmp_path / "pruned"
    argv = ["prune", "--model", "resnet20", "--dataset", "digits", "--ckpt", str(trained / "model.pt")]
    argv += [
        "--flops-reduction",
        "0.5",
        "--tolerance",
        "0.03",
        "--calib-size",
        "64",
        "--quiet",
        "--output",
        str(out),
    ]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    for key in (
        "model",
        "dataset",
        "input_shape",
        "flops_before",
        "flops_after",
        "params_before",
        "params_after",
        "alpha",
        "layers",
        "time_s",
        "top1_before",
        "top1_pruned",
        "top1_recalibrated",
        "top1_after",
    ):
        assert key in report, key
    assert abs(report["flops_after"] / report["flops_before"] - 0.5) <= 0.03 * 0.5 + 1e-9
    run = report["run"]
    assert run["settings"]["calib_size"] == 64 and run["settings"]["seed"] == 0
    assert run["settings"]["ckpt"] == str(trained / "model.pt") and run["settings"]["kernel"] == "laplace"
    assert run["versions"]["torch"] == torch.__version__ and run["device"] == "cpu"
    assert "commit" in run
    assert (out / "widths.png").read_bytes()[:4] == b"\x89PNG"
    model = apib.load_pruned(out / "pruned.pt")
    widths = {d["name"]: d["kept"] for d in report["layers"]}
    assert all(model.get_submodule(name).out_channels == k for name, k in widths.items())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert "FLOPs" in capsys.readouterr().out

    assert main(["eval", "--dataset", "digits", "--pruned", str(out / "pruned.pt"), "--quiet"]) == 0
    assert "top-1" in capsys.readouterr().out

    tuned = tmp_path / "tuned"
    argv = [
        "finetune",
        "--pruned",
        str(out / "pruned.pt"),
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--lr",
        "0.01",
    ]
    assert main([*argv, "--quiet", "--output", str(tuned)]) == 0
    report = json.loads((tuned / "report.json").read_text())
    assert len(report["history"]) == 1 and 0 <= report["top1_after"] <= 100
    assert (
        apib.load_pruned(tuned / "pruned.pt").get_submodule(d := next(iter(widths))).out_channels == widths[d]
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "cifar10", "--flops-reduction", "0.5"], "--data-path"),
        (
            ["--dataset", "cifar10", "--data-path", "/nonexistent/cifar", "--flops-reduction", "0.5"],
            "/nonexistent/cifar",
        ),
        (["--dataset", "digits", "--flops-reduction", "1.5"], "--flops-reduction"),
        (["--dataset", "digits", "--flops-reduction", "0"], "--flops-reduction"),
        (["--dataset", "digits", "--flops-reduction", "0.5", "--calib-size", "0"], "--calib-size must be"),
        (["--dataset", "digits", "--flops-reduction", "0.5", "--block-size", "1"], "--block-size must be"),
        (["--dataset", "digits", "--flops-target", "-5"], "--flops-target"),
        (["--dataset", "digits", "--flops-reduction", "0.5", "--lr", "0"], "--lr"),
        (["--dataset", "digits", "--flops-reduction", "0.5", "--finetune-epochs", "-1"], "--finetune-epochs"),
        (["--dataset", "digits", "--flops-reduction", "0.5", "--alpha=-1e-4"], "--alpha"),
        (["--dataset", "digits", "--flops-reduction", "0.5", "--ckpt", "/nonexistent.pt"], "/nonexistent.pt"),
        (["--dataset", "digits", "--flops-reduction", "0.99", "--omega", "16"], "unreachable"),
        (
            [
                "--dataset",
                "digits",
                "--flops-reduction",
                "0.5",
                "--criterion",
                "l1",
                "--allocation",
                "penalty",
            ],
            "--allocation penalty",
        ),
        (
            [
                "--dataset",
                "digits",
                "--flops-reduction",
                "0.5",
                "--bandwidth",
                "median",
                "--kernel",
                "linear",
            ],
            "--bandwidth median",
        ),
    ],
)
def test_prune_errors_are_clear(argv, message, tmp_path, capsys):
    code = main(
        ["prune", "--model", "resnet20", "--quiet", "--calib-size", "16", "--output", str(tmp_path), *argv]
    )
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("criterion, allocation", [("l1", "threshold"), ("apib", "uniform")])
def test_prune_takes_any_scorer_with_a_ratio_or_threshold(trained, tmp_path, criterion, allocation):
    argv = ["prune", "--model", "resnet20", "--dataset", "digits", "--ckpt", str(trained / "model.pt")]
    argv += ["--flops-reduction", "0.4", "--tolerance", "0.05", "--calib-size", "32", "--bn-images", "0"]
    argv += ["--criterion", criterion, "--allocation", allocation, "--quiet", "--output", str(tmp_path / "p")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["criterion"] == criterion and report["allocation"] == allocation and report["alpha"] is None
    assert abs(report["flops_after"] / report["flops_before"] - 0.6) <= 0.05 * 0.6 + 1e-9


def test_prune_takes_the_method_variants_and_records_the_options_in_force(trained, tmp_path):
    argv = ["prune", "--model", "resnet20", "--dataset", "digits", "--ckpt", str(trained / "model.pt")]
    argv += ["--flops-reduction", "0.4", "--tolerance", "0.05", "--calib-size", "32", "--bn-images", "0"]
    argv += ["--preset", "paper", "--penalty-scale", "layer", "--bandwidth", "median", "--normalize"]
    argv += ["--target", "labels", "--quiet", "--output", str(tmp_path / "p")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    options = report["options"]
    assert options["preset"] == "paper" and options["penalty_scale"] == "layer"
    assert options["bandwidth"] == "median" and options["normalize"] is True and options["target"] == "labels"
    assert options["kernel"] == "laplace" and options["positive"] is True  # from the preset
    settings = report["run"]["settings"]
    assert settings["penalty_scale"] == "layer" and settings["kernel"] == "laplace"
    assert settings["positive"] is True and settings["allocation"] == "penalty"
    assert abs(report["flops_after"] / report["flops_before"] - 0.6) <= 0.05 * 0.6 + 1e-9


@pytest.mark.parametrize(
    "flag, value", [("--preset", "best"), ("--penalty-scale", "local"), ("--bandwidth", "silverman")]
)
def test_a_variant_flags_bad_value_names_the_flag(flag, value, capsys):
    argv = ["prune", "--model", "resnet20", "--dataset", "digits", "--flops-reduction", "0.5"]
    with pytest.raises(SystemExit) as err:
        main([*argv, flag, value, "--output", "x"])
    assert err.value.code == 2
    assert f"argument {flag}: invalid choice" in capsys.readouterr().err


def test_prune_residual_prunes_the_streams_and_the_file_loads(trained, tmp_path):
    out = tmp_path / "p"
    argv = ["prune", "--model", "resnet20", "--dataset", "digits", "--ckpt", str(trained / "model.pt")]
    argv += ["--flops-reduction", "0.5", "--tolerance", "0.05", "--calib-size", "32", "--bn-images", "0"]
    assert main([*argv, "--prune-residual", "--quiet", "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["settings"]["prune_residual"] is True
    streams = [d for d in report["layers"] if len(d["consumers"]) > 1]
    assert streams and streams[0]["name"] == "conv1"  # the stem's stream, read by every block of stage 1
    model = apib.load_pruned(out / "pruned.pt")
    assert model.conv1.out_channels == streams[0]["kept"] < 16
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vgg16_prunes_by_30_percent_with_the_default_call(tmp_path):
    # issue 15: the non-negative Lasso alone kept too few channels for this target
    argv = ["prune", "--model", "vgg16", "--dataset", "digits", "--flops-reduction", "0.3"]
    argv += ["--calib-size", "32", "--bn-images", "0", "--quiet", "--output", str(tmp_path / "p")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert abs(report["flops_after"] / report["flops_before"] - 0.7) <= 0.01 * 0.7 + 1e-9


@pytest.mark.parametrize("argv", [["--model", "resnet18"], ["--dataset", "mnist"]])
def test_unknown_model_or_dataset_is_refused(argv, capsys):
    base = {"--model": "resnet20", "--dataset": "digits"}
    base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    with pytest.raises(SystemExit) as err:
        main(["prune", *[x for kv in base.items() for x in kv], "--flops-reduction", "0.5", "--output", "x"])
    assert err.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# --- Output folders (issue 19, items 2 and 3) --------------------------------------------------------


def _train(out, *extra) -> list[str]:
    """A quick `apib train` (0 epochs: a model and its evaluation) into `out`."""
    return ["train", "--model", "resnet20", "--dataset", "digits", "--epochs", "0", "--quiet"] + [
        "--output",
        str(out),
        *extra,
    ]


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_output_is_replaced_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train(out)) == 0
    first = _snapshot(out)
    assert set(first) == {"model.pt", "report.json"}
    assert main(_train(out, "--seed", "1")) == 2
    err = capsys.readouterr().err
    assert "--output" in err and "--overwrite" in err and "report.json" in err
    assert _snapshot(out) == first
    assert main(_train(out, "--seed", "1", "--overwrite")) == 0
    assert json.loads((out / "report.json").read_text())["run"]["settings"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing left beside it


def test_overwrite_never_replaces_unrelated_files(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(_train(out, "--overwrite")) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


def test_an_input_inside_output_is_never_overwritten(trained, tmp_path, capsys):
    pruned_dir = tmp_path / "pruned"
    argv = ["prune", "--model", "resnet20", "--dataset", "digits", "--ckpt", str(trained / "model.pt")]
    argv += ["--flops-reduction", "0.4", "--tolerance", "0.05", "--calib-size", "32", "--bn-images", "0"]
    assert main([*argv, "--quiet", "--output", str(pruned_dir)]) == 0
    before = _snapshot(pruned_dir)
    tune = ["finetune", "--pruned", str(pruned_dir / "pruned.pt"), "--dataset", "digits", "--epochs", "1"]
    for extra in ([], ["--overwrite"]):
        assert main([*tune, "--quiet", "--output", str(pruned_dir), *extra]) == 2
        err = capsys.readouterr().err
        assert "--pruned" in err and "inside --output" in err
        assert _snapshot(pruned_dir) == before
    # An input further down, and a data folder, count too.
    ckpt_argv = ["prune", "--model", "resnet20", "--dataset", "digits", "--flops-reduction", "0.4"]
    assert main([*ckpt_argv, "--ckpt", str(pruned_dir / "x" / "m.pt"), "--output", str(pruned_dir)]) == 2
    assert (
        main(
            ["train", "--model", "resnet20", "--dataset", "cifar10", "--data-path", str(trained)]
            + [
                "--output",
                str(trained),
                "--overwrite",
            ]
        )
        == 2
    )
    assert "--data-path" in capsys.readouterr().err and (trained / "model.pt").exists()


def test_output_path_is_checked_before_any_work(tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before --output was checked")

    monkeypatch.setattr("apib.cli.get_model", no_work)
    monkeypatch.setattr("apib.cli.data.get_dataset", no_work)
    a_file = tmp_path / "report.txt"
    a_file.write_text("")
    assert main(_train(a_file)) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(_train(a_file / "sub")) == 2  # its parent cannot be created
    assert "cannot create a folder" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(_train(locked / "run")) == 2
        assert "cannot create a folder" in capsys.readouterr().err


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_output_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        assert main(_train(tmp_path / "run")) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o777 & ~umask
    for f in (tmp_path / "run").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f.name


def test_a_failed_run_leaves_the_previous_one_whole(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(_train(out)) == 0
    first = _snapshot(out)

    def disk_full(obj, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr("apib.cli._write_json", disk_full)  # model.pt is written, report.json is not
    assert main(_train(out, "--overwrite")) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert _snapshot(out) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


_KILL_BETWEEN_WRITES = """
import os, signal, sys
import apib.cli as cli
import time

def die_between_writes(obj, path):  # model.pt is written; report.json is next
    os.kill(os.getpid(), int(sys.argv[1]))
    time.sleep(5)

cli._write_json = die_between_writes
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    "sig, code, message",
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated"), (signal.SIGKILL, -9, None)],
    ids=["ctrl-c", "sigterm", "sigkill"],
)
def test_a_run_killed_between_writes_leaves_a_consistent_folder(tmp_path, sig, code, message):
    out = tmp_path / "run"
    assert main(_train(out)) == 0
    first = _snapshot(out)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILL_BETWEEN_WRITES,
            str(int(sig)),
            *_train(out, "--overwrite", "--seed", "3"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == code, proc.stderr
    assert _snapshot(out) == first
    if message is not None:
        assert proc.stderr.strip() == f"apib train: {message}"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    else:  # SIGKILL leaves its staging folder; the next run into the same --output removes it
        assert len(list(tmp_path.iterdir())) == 2
        assert main(_train(out, "--overwrite", "--seed", "4")) == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
        assert json.loads((out / "report.json").read_text())["run"]["settings"]["seed"] == 4


# --- One line, exit status 2, for every expected failure (issue 19, item 5) -------------------------


def _write_cifar_file(folder, payload):
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump(payload, f)


class _Marker:
    """Unpickled, touches `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _failure_cases(tmp_path, trained):
    """(argv, what the one-line message must name) for each kind of expected failure."""
    good = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
    _write_cifar_file(tmp_path / "cifar_bad_label", {**good, b"labels": [0, 1, 2, 10]})
    _write_cifar_file(tmp_path / "cifar_no_labels", {b"data": good[b"data"]})
    _write_cifar_file(tmp_path / "cifar_hostile", {**good, b"labels": _Marker(tmp_path / "marker")})
    (tmp_path / "cifar_truncated").mkdir()
    blob = pickle.dumps(good)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (tmp_path / "cifar_truncated" / name).write_bytes(blob[: len(blob) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    torch.save(apib.models.get_model("resnet20", 100).state_dict(), tmp_path / "c100.pt")
    torch.save(apib.models.get_model("resnet56", 10).state_dict(), tmp_path / "r56.pt")
    torch.save(apib.models.get_model("resnet20", 1000).state_dict(), tmp_path / "r20_1000.pt")
    images = tmp_path / "images"
    for split, names in (("train", ["cat", "dog"]), ("val", ["cat", "dog", "emu"])):
        for name in names:
            (images / split / name).mkdir(parents=True)
            Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(images / split / name / "0.png")
    broken = tmp_path / "broken"
    for split in ("train", "val"):
        (broken / split / "cat").mkdir(parents=True)
        (broken / split / "cat" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n but not an image")
    model_pt = str(trained / "model.pt")
    ev = ["eval", "--quiet", "--model", "resnet20", "--dataset", "digits"]
    cifar = ["eval", "--quiet", "--model", "resnet20", "--ckpt", model_pt, "--dataset", "cifar10"]
    img = ["eval", "--quiet", "--model", "resnet20", "--ckpt", str(tmp_path / "r20_1000.pt"), "--dataset"]
    return [
        ([*ev, "--ckpt", str(tmp_path / "empty.pt")], "empty.pt"),
        ([*ev, "--ckpt", str(tmp_path / "text.pt")], "text.pt"),
        ([*ev, "--ckpt", str(tmp_path / "c100.pt")], "fc.weight (100, 64)"),
        ([*ev, "--ckpt", str(tmp_path / "r56.pt")], "r56.pt"),
        ([*ev, "--ckpt", str(tmp_path)], str(tmp_path)),
        (["eval", "--quiet", "--dataset", "digits", "--pruned", model_pt], "not a pruned-model file"),
        ([*cifar, "--data-path", str(tmp_path / "cifar_bad_label")], "label 10"),
        ([*cifar, "--data-path", str(tmp_path / "cifar_no_labels")], "'labels'"),
        ([*cifar, "--data-path", str(tmp_path / "cifar_hostile")], "never holds"),
        ([*cifar, "--data-path", str(tmp_path / "cifar_truncated")], "test_batch"),
        ([*img, "imagenet", "--data-path", str(images)], "'emu'"),
        ([*img, "imagenet", "--data-path", str(broken), "--workers", "1"], "0.png"),
        ([*img, "imagenet", "--data-path", str(broken)], "unreadable image"),
        ([*ev, "--ckpt", model_pt, "--device", "tpu9"], "--device 'tpu9'"),
        ([*ev, "--ckpt", model_pt, "--device", f"cuda:{torch.cuda.device_count()}"], "--device"),
        ([*ev, "--ckpt", model_pt, "--batch-size", "0"], "--batch-size"),
        (["eval", "--quiet", "--dataset", "digits", "--ckpt", model_pt], "--model"),
        (_train(trained), "--overwrite"),
        (_train(tmp_path / "empty.pt"), "is a file"),
        (_train(tmp_path / "new", "--epochs", "-2"), "--epochs"),
        (_train(tmp_path / "new", "--momentum", "1"), "--momentum"),
    ]


def test_no_expected_failure_prints_a_traceback(trained, tmp_path, capsys):
    for argv, names in _failure_cases(tmp_path, trained):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith(f"apib {argv[0]}: error: "), err
        assert names in err, (names, err)
    assert not (tmp_path / "marker").exists()
    assert not (tmp_path / "new").exists()


def test_debug_shows_the_traceback(tmp_path, capsys):
    (tmp_path / "empty.pt").write_bytes(b"")
    argv = ["eval", "--model", "resnet20", "--dataset", "digits", "--ckpt", str(tmp_path / "empty.pt")]
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("apib eval: error: ")


def test_pruned_model_of_another_class_count_is_refused(tmp_path, capsys):
    model = apib.models.get_model("resnet20", 100)
    apib.apply_pruning(model, {"input_shape": [1, 3, 32, 32], "kept": {"layer1.0.conv1": [0, 3, 5]}})
    apib.save_pruned(model, tmp_path / "p.pt", arch="resnet20", num_classes=100)
    assert main(["eval", "--quiet", "--dataset", "digits", "--pruned", str(tmp_path / "p.pt")]) == 2
    assert "100 classes" in capsys.readouterr().err
