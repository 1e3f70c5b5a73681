"""APIB channel pruning: calibration, per-layer HSIC Lasso under one global penalty, model surgery.

    import apib
    result = apib.prune(model, calib_loader, flops_reduction=0.5)   # PruneResult
    apib.save_pruned(result, "pruned.pt", arch="resnet20", num_classes=10)
    model = apib.load_pruned("pruned.pt")

Also here: `apib.models` (reference architectures), `apib.data` (CIFAR, image folders, embedded digits),
`apib.train` (fine-tuning and evaluation), `apib.criteria` (L1, FPGM, HRank, CHIP baselines),
`apib.groups` (which channels are prunable, FLOPs model). The `apib` command wraps them (`apib --help`).
"""

from apib.checkpoint import load_pruned, save_pruned
from apib.groups import PrunableGroup, find_groups
from apib.pruning import LayerDecision, PruneResult, apply_pruning, prune

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
