"""APIB channel pruning: calibration, per-layer HSIC Lasso under one global penalty, model surgery.

    import apib
    result = apib.prune(model, calib_loader, flops_reduction=0.5)   # PruneResult
    apib.save_pruned(result, "pruned.pt", arch="resnet20", num_classes=10)
    model = apib.load_pruned("pruned.pt")

Also here: `apib.models` (reference architectures), `apib.data` (CIFAR, image folders, embedded digits),
`apib.train` (fine-tuning and evaluation), `apib.criteria` (L1, FPGM, HRank, CHIP baselines),
`apib.groups` (which channels are prunable, FLOPs model). The `apib` command wraps them (`apib --help`).
"""

import os
import sys

# Transparent huge pages for PyTorch's large CPU tensors (THP_MEM_ALLOC_ENABLE, read once, at torch's
# first allocation): calibration keeps every prunable layer's activations, and with 4 KiB pages the
# kernel's page faults took a third of it (ResNet-50, 32 images, 1 thread: forward 8.0 s -> 5.3 s).
# It can only take effect when apib is imported before torch (the `apib` command does); a value the
# user set is kept.
if "torch" not in sys.modules:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from apib.checkpoint import load_pruned, save_pruned  # noqa: E402
from apib.groups import PrunableGroup, find_groups  # noqa: E402
from apib.pruning import LayerDecision, PruneResult, apply_pruning, prune  # noqa: E402

__all__ = [
    "LayerDecision",
    "PrunableGroup",
    "PruneResult",
    "apply_pruning",
    "find_groups",
    "load_pruned",
    "prune",
    "save_pruned",
]
