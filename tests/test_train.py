import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from apib.train import evaluate, recalibrate_bn, train


def _blobs(n=192, classes=3, seed=0):
    """Images ``(n, 3, 4, 4)``: one fixed pattern per class plus noise drawn by ``seed``; separable."""
    patterns = 2 * torch.randn(classes, 3, 4, 4, generator=torch.Generator().manual_seed(1234))
    labels = torch.arange(n) % classes
    noise = torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(patterns[labels] + noise, labels)


def _tiny_net(classes=3):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(128, classes)
    )


def test_training_learns_a_separable_problem():
    data = _blobs()
    train_loader = DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    val_loader = DataLoader(_blobs(seed=1), batch_size=64)
    model = _tiny_net()
    before = evaluate(model, val_loader)
    history = train(model, train_loader, 3, lr=0.05, progress=False, val_loader=val_loader)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"] < before["loss"]
    assert history[-1]["top1"] > max(before["top1"], 90)
    assert history[-1]["train_top1"] > 90
    # Cosine over all 18 steps: the last step's rate is lr·(1 + cos(17π/18))/2.
    assert history[-1]["lr"] == pytest.approx(0.05 * (1 + math.cos(17 * math.pi / 18)) / 2)
    assert not model.training


def test_train_without_validation_and_zero_epochs():
    loader = DataLoader(_blobs(n=48), batch_size=16)
    model = _tiny_net()
    history = train(model, loader, 1, progress=False, label_smoothing=0.1, device="cpu")
    assert set(history[0]) == {"epoch", "loss", "train_top1", "lr", "seconds"}
    assert model.training
    weights = [p.clone() for p in model.parameters()]
    assert train(model, loader, 0, progress=False) == []
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))


def test_evaluate_known_answer():
    # The "model" passes its input through, so each row below is the logits of one image (6 classes).
    logits = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5],  # label 0 ranks 1st: a top-1 and top-5 hit
            [1.0, 9, 8, 3, 4, 5],  # label 1 ranks 2nd: top-5 only
            [9.0, 1, 2, 3, 4, 5],  # label 1 ranks 6th: missed by both
            [1.0, 2, 3, 7, 8, 9],  # label 1 ranks 5th: top-5 only
        ]
    )
    labels = torch.tensor([0, 2, 1, 1])
    loader = DataLoader(TensorDataset(logits, labels), batch_size=3)
    metrics = evaluate(nn.Identity(), loader)
    assert metrics["top1"] == pytest.approx(25.0)
    assert metrics["top5"] == pytest.approx(75.0)
    expected_loss = -torch.log_softmax(logits, 1)[torch.arange(4), labels].mean().item()
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-6)


def test_evaluate_top5_with_fewer_classes():
    # With 3 classes the "top 5" is all of them.
    loader = DataLoader(
        TensorDataset(torch.tensor([[0.0, 1, 2], [2.0, 1, 0]]), torch.tensor([0, 1])), batch_size=2
    )
    metrics = evaluate(nn.Identity(), loader)
    assert (metrics["top1"], metrics["top5"]) == (0.0, 100.0)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"epochs": -1}, "epochs"),
        ({"epochs": 1.5}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_train_bad_arguments(kwargs, name):
    args = {"epochs": 1, **kwargs}
    loader = DataLoader(_blobs(n=8), batch_size=4)
    with pytest.raises(ValueError, match=name):
        train(_tiny_net(), loader, args.pop("epochs"), progress=False, **args)


def test_empty_loader():
    empty = DataLoader(
        TensorDataset(torch.zeros(0, 3, 4, 4), torch.zeros(0, dtype=torch.int64)), batch_size=4
    )
    with pytest.raises(ValueError, match="loader is empty"):
        train(_tiny_net(), empty, 1, progress=False)
    with pytest.raises(ValueError, match="loader is empty"):
        evaluate(_tiny_net(), empty)


def test_recalibrate_bn_reestimates_statistics_and_keeps_weights_and_momentum():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    x = 3 + 2 * torch.randn(64, 3, 8, 8)
    loader = [(x[:32], None), (x[32:], None)]
    weights = {
        k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k
    }
    recalibrate_bn(model, loader, images=64)
    bn = model[1]
    out = model[0](x)
    assert torch.allclose(bn.running_mean, out.mean((0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1 and not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    with pytest.raises(ValueError, match="images"):
        recalibrate_bn(model, loader, images=0)
