"""Calibration statistics in bounded memory, and summed across processes.

The block HSIC estimator (Yamada et al. 2018, `hsic_lasso(block_size=...)`): the calibration images
are cut into blocks of `block_size` in the order they arrive, each block's centered Grams give its own
Gram-form statistics (Q, b, n_rows = block²), and the problem is their sum. The hooks hand every
layer's input and output to `StreamingStatistics`, which holds them only until a block is full and
then reduces it, so peak memory is one block of activations plus the C × C statistics, whatever the
number of images. With at most `block_size` images there is one block: exactly the statistics of all
images at once.

Under torch.distributed (a process group initialised, e.g. by torchrun), each process calibrates on
its own shard of whole blocks and the per-layer sums are added with one all_reduce, so every process
holds the same problems and reaches the same decisions; with the same images in the same blocks, N
processes give the statistics of one process (to the rounding of the sum's order).
"""

import hashlib
import logging
import time

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 128
"""The paper's calibration sizes (64 on ImageNet, 128 on CIFAR) fit in one block."""


def distributed() -> bool:
    """Whether a torch.distributed process group with several processes is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """Rank 0 of the process group, or the only process: the one that reports and writes files."""
    return not distributed() or dist.get_rank() == 0


class StreamingStatistics:
    """Gram-form statistics accumulated block by block from calibration hooks.

    `sink(name)` is the calibration sink of layer `name` (it receives the layer's input and output);
    after every calibration batch, `end_batch(labels)` reduces the blocks that are full: `reduce(block,
    labels)` gets {name: (x, out)} for one block (and the block's labels, or None) and returns one
    (Q, b, n_rows) per problem; the sums over blocks (and processes) come from `statistics()`.
    `seconds` is the time spent reducing and summing over processes, communication included (the
    "statistics" phase), `peak_buffered` the most samples held at once (memory is bounded by it).
    """

    def __init__(self, names, block_size: int, reduce, *, labels: bool = False):
        self.names = list(names)
        self.block_size = block_size
        self.reduce = reduce
        self.needs_labels = labels
        self.buffers = {name: ([], []) for name in self.names}
        self.labels: list[torch.Tensor] = []
        self.sums: list[list] | None = None
        self.images = 0
        self.peak_buffered = 0
        self.seconds = 0.0

    def sink(self, name: str):
        xs, ys = self.buffers[name]
        return lambda x, out: (xs.append(x), ys.append(out))

    def _held(self) -> int:
        return sum(x.shape[0] for x in self.buffers[self.names[0]][0]) if self.names else 0

    def end_batch(self, labels: torch.Tensor | None) -> None:
        if self.needs_labels:
            if labels is None:
                raise ValueError("target='labels' needs calib_loader to yield (images, labels) batches")
            self.labels.append(labels)
        held = self._held()
        self.peak_buffered = max(self.peak_buffered, held)
        while held >= self.block_size:
            self._reduce(self.block_size)
            held -= self.block_size

    def statistics(self) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """The statistics of every block (the last one partial), summed over the process group."""
        held = self._held()
        if held >= 2 or (held and not self.images):  # one image alone is refused by the kernels
            self._reduce(held)
        elif held:
            logger.warning("the last calibration image does not fill a block of 2: it is left out")
        if self.sums is None and not distributed():
            raise ValueError("calib_loader yielded no image: the statistics need at least 2")
        t0 = time.perf_counter()
        sums = [tuple(s) for s in self.sums] if not distributed() else _all_reduce(self.sums, self.images)
        self.seconds += time.perf_counter() - t0
        return sums

    @staticmethod
    def _take(xs: list[torch.Tensor], count: int) -> torch.Tensor:
        """The first `count` buffered samples, removed from the buffer (the rest stays)."""
        whole = torch.cat(xs)
        xs[:] = [whole[count:]] if whole.shape[0] > count else []
        return whole[:count]

    def _reduce(self, count: int) -> None:
        t0 = time.perf_counter()
        labels = self._take(self.labels, count) if self.needs_labels else None
        block = {
            name: (self._take(xs, count), self._take(ys, count)) for name, (xs, ys) in self.buffers.items()
        }
        stats = self.reduce(block, labels)
        del block
        if self.sums is None:
            self.sums = [list(s) for s in stats]
        else:
            for total, (q, b, n_rows) in zip(self.sums, stats, strict=True):
                total[0], total[1], total[2] = total[0] + q, total[1] + b, total[2] + n_rows
        self.images += count
        self.seconds += time.perf_counter() - t0


def _all_reduce(sums, images: int) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """The per-problem sums added over the process group with one all_reduce."""
    _check_shards(images, [b.numel() for _, b, _ in sums or []])
    parts = sum_over_processes([t for q, b, n_rows in sums for t in (q, b, b.new_tensor([n_rows]))])
    return [(q, b, float(n_rows)) for q, b, n_rows in zip(parts[0::3], parts[1::3], parts[2::3], strict=True)]


def sum_over_processes(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """`tensors` summed element-wise over the process group with one all_reduce, in float64 (exact for
    integer counts below 2**53); each comes back in its own dtype, shape and device."""
    device = tensors[0].device if dist.get_backend() != "gloo" else torch.device("cpu")
    flat = torch.cat([t.reshape(-1).to(device, torch.float64) for t in tensors])
    dist.all_reduce(flat)
    parts = flat.split([t.numel() for t in tensors])
    return [part.view(t.shape).to(t) for part, t in zip(parts, tensors, strict=True)]


def _small_tensor_device() -> torch.device:
    """Where a few numbers are exchanged: the CPU when the group has gloo, else this process's GPU."""
    return (
        torch.device("cpu")
        if "gloo" in dist.get_backend()
        else torch.device("cuda", torch.cuda.current_device())
    )


def _check_shards(images: int, channels: list[int]) -> None:
    """Every process must have calibrated the same model on as many images (whole blocks each)."""
    checksum = sum((i + 1) * c for i, c in enumerate(channels))
    mine = torch.tensor(
        [images, len(channels), sum(channels), checksum], dtype=torch.float64, device=_small_tensor_device()
    )
    low, high = mine.clone(), mine.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    rank = dist.get_rank()
    if low[0] == 0:
        raise ValueError(
            f"a process of the group calibrated on no image (this is rank {rank}): shard the set"
        )
    if low[0] != high[0]:
        raise ValueError(
            f"the processes calibrated on different numbers of images ({int(low[0])} to {int(high[0])}; rank "
            f"{rank}: {images}): give every rank an equal shard (DistributedSampler with drop_last=True)"
        )
    if not torch.equal(low[1:], high[1:]):
        raise ValueError(f"the processes hold different models (rank {rank}'s prunable layers differ)")


def check_same_decisions(kept: list[tuple[int, ...]]) -> None:
    """Raises ValueError on every process unless all of them kept the same channels (`kept`: each
    group's kept indices), compared by a hash with one all_gather. A no-op in a single process."""
    if not distributed():
        return
    digest = hashlib.sha256(repr(kept).encode()).digest()[:8]
    mine = torch.tensor([int.from_bytes(digest, "little", signed=True)], device=_small_tensor_device())
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    differ = [r for r, h in enumerate(every) if not torch.equal(h, every[0])]
    if differ:
        raise ValueError(
            f"the processes reached different decisions (ranks {differ} differ from rank 0): they must "
            "calibrate the same model with the same options"
        )
