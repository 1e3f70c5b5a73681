"""Block-streamed calibration statistics, in one process and summed across a gloo process group."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision

import apib_kernels as ak
from apib import scoring
from apib.criteria import ChipAccumulator, HRankAccumulator
from apib.criteria._common import sum_accumulators_over_processes
from apib.pruning import prune
from apib.streaming import StreamingStatistics


def _reduce(block, labels):
    x, out = block["layer"]
    return [ak.HSICLassoProblem.from_data(x, out.flatten(1) if labels is None else labels).statistics()]


def _data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, 3, 3, generator=g, dtype=torch.float64), torch.randn(
        n, 4, generator=g, dtype=torch.float64
    )


def _stream(x, out, block_size, batch, labels=None):
    stream = StreamingStatistics(["layer"], block_size, _reduce, labels=labels is not None)
    sink = stream.sink("layer")
    for s in range(0, x.shape[0], batch):
        sink(x[s : s + batch], out[s : s + batch])
        stream.end_batch(None if labels is None else labels[s : s + batch])
    return stream, stream.statistics()


@pytest.mark.parametrize("labels", [False, True], ids=["output", "labels"])
def test_one_block_is_exactly_the_statistics_of_all_images(labels):
    x, out = _data(40)
    y = torch.arange(40) % 3 if labels else None
    _, [(q, b, n_rows)] = _stream(x, out, 64, 7, y)
    q0, b0, n0 = ak.HSICLassoProblem.from_data(x, y if labels else out.flatten(1)).statistics()
    assert torch.equal(q, q0) and torch.equal(b, b0) and n_rows == n0 == 40 * 40


def test_blocks_sum_and_memory_stays_bounded():
    x, out = _data(103)
    stream, [(q, b, n_rows)] = _stream(x, out, 16, 5)
    blocks = [(s, min(s + 16, 103)) for s in range(0, 103, 16)]
    parts = [ak.HSICLassoProblem.from_data(x[s:e], out[s:e].flatten(1)).statistics() for s, e in blocks]
    torch.testing.assert_close(q, sum(p[0] for p in parts), rtol=1e-12, atol=0)
    torch.testing.assert_close(b, sum(p[1] for p in parts), rtol=1e-12, atol=0)
    assert n_rows == 6 * 16 * 16 + 7 * 7 and stream.images == 103
    assert stream.peak_buffered < 16 + 5  # never more than one block and one batch


def _rank(rank, world, init, x, out, per_rank, block, results, mode):
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        n = per_rank - (8 if mode == "uneven" and rank == 1 else 0)
        if mode == "empty" and rank == 1:
            n = 0
        shard = slice(rank * per_rank, rank * per_rank + n)
        stream = StreamingStatistics(["layer"], block, _reduce)
        if mode == "model" and rank == 1:
            x = x[:, :4]
        for s in range(shard.start, shard.stop, block):
            e = min(s + block, shard.stop)
            stream.sink("layer")(x[s:e], out[s:e])
            stream.end_batch(None)
        try:
            results[rank] = stream.statistics()
        except ValueError as err:
            results[rank] = str(err)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["even", "uneven", "empty", "model"])
def test_two_processes_give_the_statistics_of_one(tmp_path, mode):
    x, out = _data(64)
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(2, tmp_path / "init", x, out, 32, 16, results, mode), nprocs=2, join=True)
    if mode != "even":
        messages = {"uneven": "different numbers of images", "empty": "no image", "model": "different models"}
        assert all(messages[mode] in results[r] for r in range(2)), dict(results)
        return
    _, [(q, b, n_rows)] = _stream(x, out, 16, 16)
    for r in range(2):
        [(qr, br, nr)] = results[r]
        torch.testing.assert_close(qr, q, rtol=1e-12, atol=0)
        torch.testing.assert_close(br, b, rtol=1e-12, atol=0)
        assert nr == n_rows
    assert torch.equal(results[0][0][0], results[1][0][0])  # every rank holds the same problem


def test_labels_are_required_for_a_labels_target():
    stream = StreamingStatistics(["layer"], 8, _reduce, labels=True)
    with pytest.raises(ValueError, match="target='labels'"):
        stream.end_batch(None)


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g)


def _model():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def test_pipeline_memory_stays_at_one_block(monkeypatch):
    streams = []

    class Recorded(StreamingStatistics):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            streams.append(self)

    monkeypatch.setattr(scoring, "StreamingStatistics", Recorded)
    images = _images(160)
    r = prune(
        _model(),
        list(images.split(10)),
        flops_reduction=0.5,
        tolerance=0.05,
        block_size=32,
        calib_size=None,
        progress=False,
    )
    assert abs(r.flops_after - r.flops_target) <= 0.05 * r.flops_target
    [stream] = streams
    assert stream.images == 160 and stream.peak_buffered < 32 + 10


def test_pipeline_with_one_block_is_the_in_memory_selection():
    images = _images(48)
    kw = dict(flops_reduction=0.5, tolerance=0.05, calib_size=None, progress=False)
    one = prune(_model(), list(images.split(16)), block_size=48, **kw)
    again = prune(_model(), list(images.split(7)), block_size=1000, **kw)
    assert [d.kept for d in one.layers] == [d.kept for d in again.layers]


def _prune_rank(rank, world, init, results, kw):
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        shard = _images(64)[rank * 32 : (rank + 1) * 32]
        results[rank] = [d.kept for d in prune(_model(), list(shard.split(16)), **kw).layers]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("criterion", ["apib", "hrank"])
def test_two_processes_prune_as_one_over_the_same_blocks(tmp_path, criterion):
    kw = dict(
        criterion=criterion,
        flops_reduction=0.5,
        tolerance=0.05,
        block_size=16,
        calib_size=None,
        progress=False,
    )
    results = mp.Manager().dict()
    mp.spawn(_prune_rank, args=(2, tmp_path / "init", results, kw), nprocs=2, join=True)
    one = prune(_model(), list(_images(64).split(16)), **kw)
    assert results[0] == results[1] == [d.kept for d in one.layers]


def _random_rank(rank, world, init, results):
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        shard = list(_images(32)[rank * 16 : (rank + 1) * 16].split(16))
        prune(_model(), shard, criterion="random", seed=rank, flops_reduction=0.5, progress=False)
    except ValueError as err:
        results[rank] = str(err)
    finally:
        dist.destroy_process_group()


def test_processes_that_decide_differently_fail_alike(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_random_rank, args=(2, tmp_path / "init", results), nprocs=2, join=True)
    assert all("reached different decisions (ranks [1]" in results.get(r, "") for r in range(2)), dict(
        results
    )


def _maps(seed):
    """(24, 5, 6, 6) maps whose rank varies by image and channel (rows zeroed at random)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 5, 6, 6, generator=g, dtype=torch.float64)
    return x * (torch.rand(24, 5, 6, 1, generator=g) > 0.5)


def _accumulate_rank(rank, world, init, results):
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        accs = [HRankAccumulator(), ChipAccumulator()]
        for acc in accs:
            for batch in _maps(0)[rank * 12 : (rank + 1) * 12].split(5):
                acc.update(batch)
        sum_accumulators_over_processes(accs)
        results[rank] = [(acc.scores(), acc.num_images) for acc in accs]
    finally:
        dist.destroy_process_group()


def test_feature_map_criteria_sum_over_processes(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_accumulate_rank, args=(2, tmp_path / "init", results), nprocs=2, join=True)
    maps = _maps(0)
    for i, cls in enumerate([HRankAccumulator, ChipAccumulator]):
        whole = cls().update(maps).scores()
        assert not torch.allclose(cls().update(maps[:12]).scores(), whole)  # one shard alone differs
        for r in range(2):
            scores, images = results[r][i]
            assert images == 24
            torch.testing.assert_close(scores, whole, rtol=1e-12, atol=0)
        assert torch.equal(results[0][i][0], results[1][i][0])
