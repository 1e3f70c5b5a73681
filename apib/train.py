"""Training and evaluation loops: SGD with momentum under a per-step cosine schedule, top-k accuracy.

Used to train the baselines and to fine-tune pruned networks; kept deliberately plain (no mixed
precision, no EMA) so results compare with the reference protocol.
"""

import time

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from apib_kernels.validation import check_int, check_number

__all__ = ["train", "evaluate"]


def _model_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device`` if given (the model is moved there), else where the model's parameters live."""
    if device is not None:
        device = torch.device(device)
        model.to(device)
        return device
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def train(
    model: nn.Module,
    loader: DataLoader,
    epochs: int,
    *,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.0,
    device: torch.device | str | None = None,
    progress: bool = True,
    val_loader: DataLoader | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``loader``'s ``(images, labels)`` batches for ``epochs`` epochs.

    SGD (momentum, no Nesterov, weight decay on every parameter), learning rate annealed from ``lr`` to 0
    along a cosine over all ``epochs · len(loader)`` steps, cross-entropy with ``label_smoothing``.
    ``device``: where to train (the model is moved there); by default where the model already is.

    Returns one dict per epoch: ``epoch`` (1-based), ``loss`` (mean training loss), ``train_top1``
    (% of training images right, as seen during the epoch), ``lr`` (at the epoch's last step),
    ``seconds``, and with ``val_loader`` its ``top1``, ``top5`` and ``val_loss`` (see ``evaluate``).
    The model is left in eval mode when ``val_loader`` is given, else in train mode.
    """
    epochs = check_int(epochs, "epochs", 0)
    lr = check_number(lr, "lr", positive=True)
    momentum = check_number(momentum, "momentum", below=1)
    weight_decay = check_number(weight_decay, "weight_decay")
    label_smoothing = check_number(label_smoothing, "label_smoothing", below=1)
    steps_per_epoch = len(loader)
    if epochs > 0 and steps_per_epoch == 0:
        raise ValueError("loader is empty: nothing to train on")
    device = _model_device(model, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch))
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.perf_counter()
        # Running sums stay on the device so the loop does not synchronize every step.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
        for images, labels in bar:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            logits = model(images)
            loss = criterion(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr_now = scheduler.get_last_lr()[0]
            scheduler.step()
            loss_sum += loss.detach() * labels.shape[0]
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += labels.shape[0]
            if progress:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr_now:.4f}")
        record = {
            "epoch": epoch,
            "loss": loss_sum.item() / seen,
            "train_top1": 100.0 * correct.item() / seen,
            "lr": lr_now,
            "seconds": time.perf_counter() - start,
        }
        if val_loader is not None:
            metrics = evaluate(model, val_loader, device=device)
            record.update(top1=metrics["top1"], top5=metrics["top5"], val_loss=metrics["loss"])
        history.append(record)
    return history


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device | str | None = None, progress: bool = False
) -> dict[str, float]:
    """Accuracy and loss of ``model`` over ``loader``; the model is left in eval mode.

    Returns ``top1`` and ``top5`` in percent (``top5`` looks at the ``min(5, num_classes)`` highest
    logits, so it is 100 with 5 classes or fewer) and ``loss``, the mean cross-entropy in nats.
    """
    device = _model_device(model, device)
    model.eval()
    loss_sum, correct1, correct5, seen = 0.0, 0, 0, 0
    for images, labels in tqdm(loader, desc="eval", disable=not progress, leave=False):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        hits = _topk_hits(logits, labels, k=min(5, logits.shape[1]))
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(1).sum().item()
        seen += labels.shape[0]
    if seen == 0:
        raise ValueError("loader is empty: nothing to evaluate")
    return {"top1": 100.0 * correct1 / seen, "top5": 100.0 * correct5 / seen, "loss": loss_sum / seen}


def _topk_hits(logits: Tensor, labels: Tensor, k: int) -> Tensor:
    """``(n, C), (n,) → (n, k)`` bool: whether the j-th highest logit is the label's."""
    return logits.topk(k, dim=1).indices == labels[:, None]


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, loader: DataLoader, images: int = 1024, device: torch.device | str | None = None
) -> nn.Module:
    """Re-estimates the BatchNorm running statistics of ``model`` in place, as an equal-weight average
    over the first ``images`` images of ``loader``; no weight changes ("adaptive BN", EagleEye, Li et
    al. 2020). Removing channels shifts the statistics of every later layer, which alone can leave any
    pruned network at chance accuracy. Returns the model, in eval mode."""
    images = check_int(images, "images", 1)
    device = _model_device(model, device)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch weighs the same
    model.train()
    seen = 0
    for batch, _ in loader:
        batch = batch[: images - seen]
        model(batch.to(device))
        seen += batch.shape[0]
        if seen >= images:
            break
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return model.eval()
