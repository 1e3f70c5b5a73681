"""The `apib` command end to end on the embedded digits, and its error messages."""

import json

import pytest
import torch

import apib
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
        (["--dataset", "digits", "--flops-reduction", "1.5"], "flops_reduction"),
        (["--dataset", "digits", "--flops-reduction", "0"], "flops_reduction"),
        (["--dataset", "digits", "--flops-reduction", "0.5", "--alpha=-1e-4"], "--alpha"),
        (["--dataset", "digits", "--flops-reduction", "0.5", "--ckpt", "/nonexistent.pt"], "/nonexistent.pt"),
        (["--dataset", "digits", "--flops-reduction", "0.99", "--omega", "16"], "unreachable"),
    ],
)
def test_prune_errors_are_clear(argv, message, tmp_path, capsys):
    code = main(
        ["prune", "--model", "resnet20", "--quiet", "--calib-size", "16", "--output", str(tmp_path), *argv]
    )
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--model", "resnet18"], ["--dataset", "mnist"]])
def test_unknown_model_or_dataset_is_refused(argv, capsys):
    base = {"--model": "resnet20", "--dataset": "digits"}
    base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    with pytest.raises(SystemExit) as err:
        main(["prune", *[x for kv in base.items() for x in kv], "--flops-reduction", "0.5", "--output", "x"])
    assert err.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
