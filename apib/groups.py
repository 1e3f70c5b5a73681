"""Which channels of a CNN can be pruned together, and what removing them costs in FLOPs.

A prunable group is a set of channels removed together: the output channels of one convolution or
linear layer (the producer) with everything torch-pruning's `DependencyGraph` couples to them —
BatchNorm, activations, depthwise convolutions, concatenations, slices, flattening, squeeze-excitation
gates — down to the layers that read them (the consumers: dense or grouped convolutions, and linear
layers, applied pointwise over the channels of a feature map as in ConvNeXt, or to flattened or pooled
features as in AlexNet's and VGG's fully connected layers).

The policy is the paper's, extended to layers its reference code never met:
- pruned by default: a group written by one producer (and by the gate convolutions of a
  squeeze-excitation or other gating multiply), read by any number of consumers, directly or through
  concatenations and slices;
- residual streams only with `prune_residual=True`, an option beyond the paper: groups in which the
  outputs of several layers are summed (residual adds, RepVGG's branch sums), and groups read by both
  branches of a residual block (a stem read by a block's first convolution and by its projection
  shortcut: the input of the residual stream);
- never: channels that reach the network's output or are read by the layer that computes it (the
  classifier: the paper's policy keeps its input), or pass an operation torch-pruning's graph does not
  model.
On VGG-16, the CIFAR ResNets and ResNet-50 this is the reference code's policy exactly; on GoogLeNet
the reference's groups (the inner channels of its branches) are joined by the stem and the branch
outputs, read by the next module through the concatenation.

Grouped convolutions tie channels. torch-pruning cuts a grouped convolution's channels at the same
positions in every convolution group (its pruners average importance over the groups and repeat the
indices), so a group read or written by a convolution with G groups chooses among C/G positions of G
channels each: `PrunableGroup.channels` counts these units, `width` the channels.

APIB's statistics for a group come from its consumers: for each one, X is its input restricted to the
group's channels (after activation and gating) and Y its output (`apib.scoring`).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

_OT = tp.ops.OPTYPE
_WEIGHTED = {_OT.CONV, _OT.LINEAR}
_COUNTED = {_OT.CONV, _OT.DEPTHWISE_CONV, _OT.LINEAR}
_MODELLED = _COUNTED | {
    _OT.BN,
    _OT.LN,
    _OT.GN,
    _OT.IN,
    _OT.PRELU,
    _OT.ELEMENTWISE,
    _OT.CONCAT,
    _OT.SPLIT,
    _OT.SLICE,
    _OT.RESHAPE,
    _OT.PARAMETER,
}
"""The node types a group may contain; any other (the network output, embeddings, attention, LSTMs,
unbind/expand) makes it unprunable."""
_GATES = ("Mul", "Div")
"""Merges of several tensors by these operations gate channels (squeeze-excitation); any other merge
(add, sub, an in-place add into a slice, ...) sums streams."""


@dataclass(frozen=True)
class Member:
    """A layer that writes a group's channels (a producer) or reads them (a consumer): for each of the
    layer's output channels (producer) or input channels (consumer), the unit of the group it carries,
    -1 for channels outside the group (the other inputs of a concatenation)."""

    name: str
    units: tuple[int, ...]

    def slots(self, n_units: int) -> torch.Tensor:
        """(n_units, m) int64: the layer's channels carrying each unit, ascending, padded with -1 where
        a unit has fewer than m (m = the most any unit has)."""
        per = [[] for _ in range(n_units)]
        for ch, u in enumerate(self.units):
            if u >= 0:
                per[u].append(ch)
        m = max(map(len, per))
        return torch.tensor([p + [-1] * (m - len(p)) for p in per], dtype=torch.long)


@dataclass(frozen=True)
class PrunableGroup:
    """One prunable channel group.

    producer: the module that names the group (its first producer in module order); `apply_pruning`
        finds the group again by this name. writers: every producer, `producer` first; readers: every
        consumer (`consumers` their names, `consumer` the first).
    channels: the units the allocation chooses among — the producer's output channels, or where a
        grouped convolution ties them, the channel positions (each `width // channels` channels).
    width: the producer's output channels.
    scaled: (module name, "in" or "out", channels of that module's side the group carries, that side's
        channels) for every convolution and linear layer whose FLOPs the group scales.
    residual: the group is part of a residual stream (found only with prune_residual=True).
    """

    producer: str
    channels: int
    width: int
    writers: tuple[Member, ...]
    readers: tuple[Member, ...]
    scaled: tuple[tuple[str, str, int, int], ...]
    residual: bool = False

    @property
    def consumers(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.readers)

    @property
    def consumer(self) -> str:
        return self.readers[0].name

    def kept_channels(self, units) -> tuple[int, ...]:
        """The producer's output channels (ascending) of the kept `units`."""
        keep = set(int(u) for u in units)
        return tuple(c for c, u in enumerate(self.writers[0].units) if u in keep)

    def check_kept(self, kept) -> None:
        """ValueError unless `kept` (producer channels) is a union of whole units: a grouped convolution
        keeps the same positions in every convolution group."""
        units = self.writers[0].units
        chosen = {units[c] for c in kept}
        if sorted(kept) != list(self.kept_channels(chosen)):
            raise ValueError(
                f"layer {self.producer!r} keeps channels that split a set tied by a grouped convolution "
                f"(each of its {self.channels} units is {self.width // self.channels} channels kept or "
                "dropped together)"
            )


def _is_root(m: nn.Module, dg, finals: set) -> bool:
    """A layer whose output channels can root a group: a linear layer, or a (non-transposed)
    convolution other than a depthwise one (whose channels follow its input's group); not one that
    computes the network's output."""
    if m not in dg.module2node or id(m) in finals:
        return False  # not run by the forward pass, or the classifier
    if isinstance(m, nn.Linear):
        return True
    return (
        isinstance(m, nn.modules.conv._ConvNd)
        and not m.transposed
        and not (m.groups == m.out_channels and m.out_channels > 1)
    )


def _channel_groups(m: nn.Module) -> int:
    """How many groups tie a module's channels: a grouped (not depthwise) convolution's groups, a
    GroupNorm's groups (unless one channel each); 1 otherwise."""
    if isinstance(m, nn.modules.conv._ConvNd) and not (m.groups == m.out_channels and m.out_channels > 1):
        return m.groups
    if isinstance(m, nn.GroupNorm) and m.num_groups < m.num_channels:
        return m.num_groups
    return 1


def _side_channels(m: nn.Module, out: bool) -> int:
    if isinstance(m, nn.Linear):
        return m.out_features if out else m.in_features
    if isinstance(m, nn.GroupNorm):
        return m.num_channels
    return m.out_channels if out else m.in_channels


def _is_constant(node, named: set, memo: dict) -> bool:
    """A node computed from parameters alone (a transposed weight inside a linear layer, a layer scale):
    an input of it does not bring a second stream into a merge."""
    if node not in memo:
        memo[node] = False  # cycles (reused modules) count as data
        memo[node] = node.type == _OT.PARAMETER or (
            id(node.module) not in named and all(_is_constant(i, named, memo) for i in node.inputs)
        )
    return memo[node]


def _resizable(node) -> bool:
    """Whether the model's own code still runs with fewer channels at this node. A torch.split on
    channels takes its sizes from the model (MixNet's mixed convolutions, Res2Net), and so does a slice
    of the channels such as `x[:, :self.out_chs]`: only a slice that keeps every channel (GhostNet's)
    stays right whatever the count."""
    if node.type == _OT.SPLIT:
        return False
    if node.type != _OT.SLICE:
        return True
    sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
    op = node.module
    if sizes is None:
        return False
    channels = 2 if len(sizes) == 3 else 1
    if op.dim % len(sizes) != channels:
        return True  # a slice of other dimensions (spatial cropping)
    return op.start == 0 and op.step == 1 and op.end >= sizes[channels]


def _merge_kind(node, named: set, memo: dict) -> str | None:
    """How an element-wise node merges several data streams: "gate" (a product) or "sum" (anything
    else); None if it does not merge."""
    if node.type != _OT.ELEMENTWISE or id(node.module) in named:
        return None
    data = [i for i in node.inputs if not _is_constant(i, named, memo)]
    if len(data) < 2:
        return None
    op = str(getattr(node.module, "_grad_fn", ""))
    return "gate" if op.startswith(_GATES) else "sum"


class _Ties:
    """Union-find over a root's channels: channels tied by grouped convolutions end in one set."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, members) -> None:
        first = self.find(members[0])
        for i in members[1:]:
            self.parent[self.find(i)] = first


def _tie(ties: _Ties, module: nn.Module, out: bool, idxs, roots) -> bool:
    """Ties the root channels that `module` (with G channel groups) carries at one position of each of
    its groups. False if the group covers a position in some convolution groups but not all (the
    others belong to another group: torch-pruning cannot cut them consistently)."""
    g = _channel_groups(module)
    per = _side_channels(module, out) // g
    at: dict[int, list[int]] = {}
    for i, r in zip(idxs, roots, strict=True):
        at.setdefault(i % per, []).append(r)
    if any(len(rs) != g for rs in at.values()):
        return False
    for rs in at.values():
        ties.union(rs)
    return True


def _describe(node, names: dict) -> str:
    """A graph node for a message: its module's name, or the operation and the nearest named module
    before it."""
    if id(node.module) in names:
        return repr(names[id(node.module)])
    op = node.grad_fn.name() if hasattr(node.grad_fn, "name") else type(node.module).__name__
    seen, todo = set(), list(node.inputs)
    while todo:
        n = todo.pop(0)
        if id(n.module) in names:
            return f"the operation {op} after {names[id(n.module)]!r}"
        if n not in seen:
            seen.add(n)
            todo.extend(n.inputs)
    return f"the operation {op}"


def _failing_node(err: BaseException):
    """The graph node torch-pruning was working on when it raised `err`: the innermost frame's first
    node argument (as `update_reshape_index_mapping(graph, reshape_node)`), else any node it held."""
    found, tb = None, err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        local = frame.f_locals
        args = [local.get(a) for a in frame.f_code.co_varnames[: frame.f_code.co_argcount]]
        nodes = [v for v in args if isinstance(v, tp.dependency.Node)]
        nodes = nodes or [v for v in local.values() if isinstance(v, tp.dependency.Node)]
        found = nodes[0] if nodes else found
        tb = tb.tb_next
    return found


_TP_DIR = str(Path(tp.__file__).parent) + os.sep
_TORCH_DIR = str(Path(torch.__file__).parent) + os.sep


def _raised_by_torch_pruning(err: BaseException) -> bool:
    """Whether the innermost frame of `err` outside torch itself is torch-pruning's (and not, say, the
    model's forward failing on the example input)."""
    last, tb = None, err.__traceback__
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(_TORCH_DIR):
            last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and last.startswith(_TP_DIR)


def _unmappable(model: nn.Module, err: Exception, names: dict, where: str | None = None) -> ValueError:
    node = _failing_node(err)
    if where is None:
        where = _describe(node, names) if node is not None else "an unidentified layer"
    return ValueError(
        f"torch-pruning cannot map the channels of {type(model).__name__} at {where}: "
        f"{type(err).__name__}: {err}. Operations that mix channels, such as a channel shuffle "
        "(reshape, transpose, reshape), are not supported"
    )


def dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's graph of `model`, traced on `example_input` (autograd on, whatever the caller's
    grad mode: the tracing follows grad_fn links). Raises ValueError naming the model and the layer
    when torch-pruning cannot build or map it."""
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    except Exception as err:
        if not _raised_by_torch_pruning(err):
            raise
        names = {id(m): n for n, m in model.named_modules()}
        raise _unmappable(model, err, names) from err


def _pruning_group(model, dg, module: nn.Module, name: str, idxs, prune: bool = False):
    """torch-pruning's group of `module`'s output channels `idxs` (pruned when `prune`), its failures
    turned into a ValueError naming the model and the layer."""
    fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
    try:
        group = dg.get_pruning_group(module, fn, idxs=list(idxs))
        if prune:
            group.prune()
        return group
    except Exception as err:
        if not _raised_by_torch_pruning(err):
            raise
        names = {id(m): n for n, m in model.named_modules()}
        raise _unmappable(model, err, names, where=f"the output channels of {name!r}") from err


def _final_layers(dg) -> set:
    """ids of the weighted layers that compute the network's outputs (the classifier), found from the
    graph's sinks (its outputs) back through everything but convolutions and linear layers."""
    finals, seen = set(), set()
    todo = [n for n in dg.module2node.values() if not n.outputs]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.type in _COUNTED:
            finals.add(id(n.module))
        else:
            todo.extend(n.inputs)
    return finals


def _sum_merges(dg, named: set, memo: dict) -> set:
    return {n for n in dg.module2node.values() if _merge_kind(n, named, memo) == "sum"}


def _block_input(readers: list, group_nodes: set, sums: set) -> bool:
    """Whether two readers' outputs meet at the same sum before any other: the group feeds both branches
    of a residual block (its first convolution and a projection shortcut)."""
    reached = []
    for start in readers:
        hits, seen, todo = set(), set(group_nodes), list(start.outputs)
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in sums:
                hits.add(n)
            else:
                todo.extend(n.outputs)
        if any(hits & other for other in reached):
            return True
        reached.append(hits)
    return False


def _build(dg, group, names: dict, named: set, memo: dict, sums: set, finals: set, prune_residual: bool):
    """The PrunableGroup of torch-pruning's `group` (rooted at a producer, all its channels), or None
    when the policy leaves it alone."""
    root = group[0].dep.target.module
    width = len(group[0].idxs)
    ties = _Ties(width)
    writers: dict[str, list] = {}
    readers: dict[str, list] = {}
    reader_nodes, scaled, residual = [], {}, False
    for item in group:
        dep, idxs, roots = item.dep, item.idxs, item.root_idxs
        node = dep.target
        out = dg.is_out_channel_pruning_fn(dep.handler)
        if node.type not in _MODELLED or not _resizable(node):
            return None
        kind = _merge_kind(node, named, memo)
        if kind == "sum":
            if not prune_residual:
                return None
            residual = True
        module = node.module
        size = dg.get_out_channels(node) if out else dg.get_in_channels(node)
        if size is not None and any(not 0 <= i < size for i in idxs):
            return None  # torch-pruning mapped the channels past the layer's (a partial residual's slice)
        if not out and id(module) in finals:
            return None  # read by the classifier, which the paper's policy leaves whole
        if _channel_groups(module) > 1 and not _tie(ties, module, out, idxs, roots):
            return None
        if node.type in _WEIGHTED:
            side = writers if out else readers
            side.setdefault(names[id(module)], []).extend(zip(idxs, roots, strict=True))
            if not out:
                reader_nodes.append(node)
        if node.type in _COUNTED:
            key = (names[id(module)], "out" if out or node.type == _OT.DEPTHWISE_CONV else "in")
            scaled[key] = scaled.get(key, 0) + len(idxs)
    if not readers:
        return None
    sets: dict[int, list[int]] = {}
    for c in range(width):
        sets.setdefault(ties.find(c), []).append(c)
    size = len(next(iter(sets.values())))
    if len(sets) < 2 or any(len(s) != size for s in sets.values()):
        return None  # nothing to choose, or ties of unequal sizes
    unit_of = [0] * width
    for u, s in enumerate(sorted(sets.values())):
        for c in s:
            unit_of[c] = u

    def members(side: dict, out: bool) -> tuple[Member, ...] | None:
        result = []
        for name, pairs in side.items():
            units = [-1] * _side_channels(dg.model.get_submodule(name), out)
            for i, r in pairs:
                if units[i] not in (-1, unit_of[r]):
                    return None  # one channel carrying two units: not a channel-wise coupling
                units[i] = unit_of[r]
            result.append(Member(name, tuple(units)))
        return tuple(result)

    root_name = names[id(root)]
    writer_members, reader_members = members(writers, True), members(readers, False)
    if writer_members is None or reader_members is None or writer_members[0].name != root_name:
        return None
    if not residual and len(reader_nodes) > 1 and sums:
        if _block_input(reader_nodes, {item.dep.target for item in group}, sums):
            if not prune_residual:
                return None
            residual = True
    return PrunableGroup(
        producer=root_name,
        channels=len(sets),
        width=width,
        writers=writer_members,
        readers=reader_members,
        scaled=tuple(
            (name, side, n, _side_channels(dg.model.get_submodule(name), side == "out"))
            for (name, side), n in scaled.items()
        ),
        residual=residual,
    )


def find_groups(
    model: nn.Module, dg: tp.DependencyGraph, prune_residual: bool = False
) -> list[PrunableGroup]:
    """The prunable groups of `model` (traced into `dg`), in the module order of their producers;
    with prune_residual, also the residual streams (see the module's docstring)."""
    names = {id(m): n for n, m in model.named_modules()}
    named, memo = set(names), {}
    sums, finals = _sum_merges(dg, named, memo), _final_layers(dg)
    seen, groups = set(), []
    for name, m in model.named_modules():
        if id(m) in seen or not _is_root(m, dg, finals):
            continue
        width = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        group = _pruning_group(model, dg, m, name, range(width))
        for item in group:
            if item.dep.target.type in _WEIGHTED and dg.is_out_channel_pruning_fn(item.dep.handler):
                seen.add(id(item.dep.target.module))
        g = _build(dg, group, names, named, memo, sums, finals, prune_residual)
        if g is not None:
            groups.append(g)
    return groups


def prune_group(model: nn.Module, dg: tp.DependencyGraph, group: PrunableGroup, keep) -> None:
    """Remove the channels of `group` not in `keep` (indices into the producer's current output
    channels), in place: in every producer and coupled layer, and the consumers' input slices."""
    module = model.get_submodule(group.producer)
    keep = set(int(i) for i in keep)
    drop = [i for i in range(group.width) if i not in keep]
    if drop:
        _pruning_group(model, dg, module, group.producer, drop, prune=True)


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
    """FLOPs as a function of the units kept per group, exact for convolutions and linear layers: a
    layer's count is proportional to its input channels and to its output channels (a depthwise
    convolution's to its channels), each side's channels being those of the groups it carries (in
    proportion to the units each keeps) plus those of no group; FLOPs outside the groups stay."""

    def __init__(self, groups: list[PrunableGroup], total: int, per_module: dict[str, int]):
        self.total = total
        self.groups = groups
        sides: dict[str, dict[str, list]] = {}
        for gi, g in enumerate(groups):
            for name, side, n, size in g.scaled:
                sides.setdefault(name, {}).setdefault(side, [size, []])[1].append((gi, n))
        self._terms = [(per_module.get(name, 0), list(s.values())) for name, s in sides.items()]
        self._fixed = total - sum(f for f, _ in self._terms)

    def __call__(self, kept: list[int]) -> float:
        units = [g.channels for g in self.groups]
        out = float(self._fixed)
        for flops, sides in self._terms:
            value = float(flops)
            for size, carried in sides:
                # the side's channels kept, exact (an integer) when every unit has as many channels
                channels = size + sum(n * kept[gi] / units[gi] - n for gi, n in carried)
                value = value * channels / size
            out += value
        return out
