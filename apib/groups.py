"""Which channels of a CNN can be pruned, and what removing them costs in FLOPs.

A prunable group is the output channels of one dense convolution (the producer) together with
everything coupled to them — its BatchNorm, activations, depthwise convolutions in between — ending
in exactly one dense convolution that reads them (the consumer). Groups that reach a residual add, a
concatenation, a split, a reshape or a linear layer are not prunable: the channels there belong to a
stream shared with other layers. torch-pruning's `DependencyGraph` finds the coupling; this rule
reproduces the reference code's policy on VGG-16, the CIFAR ResNets, ResNet-50 and GoogLeNet and
extends it to any CNN the graph can trace.

APIB's statistics for a group come from the consumer: X is its input (the group's channels after
activation), Y its output.
"""

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

_OT = tp.ops.OPTYPE
_COUPLED_TYPES = {_OT.CONV, _OT.DEPTHWISE_CONV, _OT.BN, _OT.ELEMENTWISE, _OT.PRELU, _OT.GN, _OT.IN}
_COUNTED_TYPES = {_OT.CONV, _OT.DEPTHWISE_CONV, _OT.LINEAR}


@dataclass(frozen=True)
class PrunableGroup:
    """One prunable channel group. producer/consumer are module names in the model; scaled lists the
    (module name, direction) pairs whose FLOPs scale with the number of channels kept."""

    producer: str
    consumer: str
    channels: int
    scaled: tuple[tuple[str, str], ...]


def _is_dense_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups == 1


def _merges(node) -> bool:
    """An element-wise node with several graph inputs is a merge (residual add, gating product)."""
    return len(node.inputs) > 1


def _group_of(dg, names: dict, conv: nn.Conv2d) -> PrunableGroup | None:
    group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0])
    producers, consumers, scaled = [], [], []
    for dep, _ in group:
        node = dep.target
        if node.type not in _COUPLED_TYPES or (node.type == _OT.ELEMENTWISE and _merges(node)):
            return None
        direction = "in" if dep.handler.__name__ == "prune_in_channels" else "out"
        if node.type == _OT.CONV:
            if not _is_dense_conv(node.module):
                return None
            (consumers if direction == "in" else producers).append(node.module)
        if node.type in _COUNTED_TYPES:
            scaled.append((names[id(node.module)], direction))
    if producers != [conv] or len(consumers) != 1:
        return None
    return PrunableGroup(
        producer=names[id(conv)],
        consumer=names[id(consumers[0])],
        channels=conv.out_channels,
        scaled=tuple(dict.fromkeys(scaled)),
    )


def dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's graph of `model`, traced on `example_input` (autograd on, whatever the caller's
    grad mode: the tracing follows grad_fn links)."""
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)


def find_groups(model: nn.Module, dg: tp.DependencyGraph) -> list[PrunableGroup]:
    """The prunable groups of `model` (traced into `dg`), in module order."""
    names = {id(m): n for n, m in model.named_modules()}
    groups = []
    for m in model.modules():
        if _is_dense_conv(m):
            g = _group_of(dg, names, m)
            if g is not None:
                groups.append(g)
    return groups


def prune_group(model: nn.Module, dg: tp.DependencyGraph, group: PrunableGroup, keep) -> None:
    """Remove the channels of `group` not in `keep` (indices into the group's current channels), in
    place: producer filters and BN entries, coupled depthwise filters, consumer input slices."""
    conv = model.get_submodule(group.producer)
    keep = set(int(i) for i in keep)
    drop = [i for i in range(conv.out_channels) if i not in keep]
    if drop:
        dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=drop).prune()


@torch.no_grad()
def count_flops(model: nn.Module, example_input: torch.Tensor) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward pass on `example_input` as torch.utils.flop_counter counts them (2 per
    multiply-add, convolutions and matrix products), in total and per leaf module."""
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(example_input)
    model.train(was_training)
    root = type(model).__name__ + "."
    per_module = {
        k[len(root) :]: sum(v.values()) for k, v in counter.get_flop_counts().items() if k.startswith(root)
    }
    return counter.get_total_flops(), per_module


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class FlopsModel:
    """FLOPs as a function of the channels kept per group, exact for convolutions and linear layers:
    a dense convolution's count is proportional to its input and to its output channels, a depthwise
    one's to its channels, and FLOPs outside the groups stay as they are."""

    def __init__(self, groups: list[PrunableGroup], total: int, per_module: dict[str, int]):
        self.total = total
        self.groups = groups
        factors: dict[str, list[int]] = {}
        for gi, g in enumerate(groups):
            for name, _ in g.scaled:
                factors.setdefault(name, []).append(gi)
        self._terms = [(per_module.get(name, 0), gis) for name, gis in factors.items()]
        self._fixed = total - sum(f for f, _ in self._terms)

    def __call__(self, kept: list[int]) -> float:
        frac = [k / g.channels for k, g in zip(kept, self.groups, strict=True)]
        out = float(self._fixed)
        for flops, gis in self._terms:
            scale = 1.0
            for gi in gis:
                scale *= frac[gi]
            out += flops * scale
        return out
