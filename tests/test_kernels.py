"""Every backend's centered Grams and HSIC statistics against the float64 reference."""

import itertools
import math
import subprocess
import sys

import pytest
import torch
from conftest import backend_device

import apib_kernels as ak
from apib_kernels import backends, kernels
from apib_kernels import reference as ref
from apib_kernels.backends import resolve_backend, unavailable_reason

KERNEL_NAMES = ("laplace", "gaussian", "linear")

SHAPES = [
    (2, 1, (1, 1)),  # smallest legal n, one channel, one value per sample
    (3, 3, (3, 5)),  # odd n, non-square spatial map
    (17, 65, (1, 1)),  # odd n, C just past a power of two (tile remainders)
    (17, 3, (14, 14)),  # ResNet-like 14x14 maps
    (64, 65, (3, 5)),  # the reference's calibration size with an odd channel count
    (64, 3, (14, 14)),
    (33, 2, ()),  # (n, C) input: D = 1, plain feature selection
]


def _scale(t: torch.Tensor) -> float:
    return max(float(t.abs().max()), 1e-12)


def _assert_close(actual, expected, dtype, what: str):
    """fp64 must agree to rounding; fp32 to a few ulps of the matrix's scale."""
    tol = 1e-9 if dtype == torch.float64 else 5e-5
    err = float((actual.double().cpu() - expected).abs().max()) / _scale(expected)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_centered_gram_matches_reference(backend, shape, kernel, dtype):
    n, c, spatial = shape
    x = torch.randn(n, c, *spatial, dtype=dtype) * 3 + 1
    out = ak.centered_gram(x.to(backend_device(backend)), kernel, backend=backend)
    assert out.shape == (c, n, n) and out.dtype == dtype
    _assert_close(out, ref.centered_gram(x, kernel), dtype, f"{backend}/{kernel}")


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.parametrize("labels", [False, True], ids=["float-y", "label-y"])
@pytest.mark.parametrize(
    "shape",
    [
        (2, 1, (3, 5)),
        (17, 65, (1, 1)),
        (64, 3, (14, 14)),
        (5, 257, (2,)),  # C past two 128-channel blocks of the block-triangular Q product
    ],
    ids=str,
)
def test_hsic_matrix_matches_reference(backend, shape, labels, kernel):
    n, c, spatial = shape
    x = torch.randn(n, c, *spatial, dtype=torch.float64)
    y = torch.randint(0, 3, (n,)) if labels else torch.randn(n, 10, dtype=torch.float64)
    dev = backend_device(backend)
    q, b, cc = ak.hsic_matrix(x.to(dev), y.to(dev), kernel, backend=backend)
    q_ref, b_ref, c_ref = ref.hsic_matrix(x, y, kernel)
    assert q.shape == (c, c) and b.shape == (c,) and cc.shape == ()
    _assert_close(q, q_ref, torch.float64, "Q")
    _assert_close(b, b_ref, torch.float64, "b")
    _assert_close(cc, c_ref, torch.float64, "c")
    assert torch.equal(q, q.T), "Q must be exactly symmetric"


@pytest.mark.parametrize("y_kernel", ["delta", "delta_norm"])
@pytest.mark.parametrize(
    "labels",
    [[0, 1], [3, 3, 3, 3, 3], [0, 1, 1, 2, 2, 2, 2, 5, 5], list(range(7)), [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]],
    ids=["n=2", "one-class", "imbalanced", "all-distinct", "rare-class"],
)
def test_label_kernels_match_reference(y_kernel, labels):
    y = torch.tensor(labels)
    x = torch.randn(len(labels), 3, 4, dtype=torch.float64)
    _, b, cc = ak.hsic_matrix(x, y, y_kernel=y_kernel)
    _, b_ref, c_ref = ref.hsic_matrix(x, y, y_kernel=y_kernel)
    _assert_close(b, b_ref, torch.float64, "b")
    _assert_close(cc, c_ref, torch.float64, "c")


def test_delta_norm_divides_by_class_size():
    y = torch.tensor([0, 0, 0, 1])
    same = ref.kernel_matrix(y, "delta_norm")
    assert same[0, 1].item() == pytest.approx(1 / 3) and same[3, 3].item() == 1.0 and same[0, 3].item() == 0
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    plain, norm = (ak.hsic_matrix(x, y, y_kernel=k)[1] for k in ("delta", "delta_norm"))
    assert not torch.allclose(plain, norm)


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_hsic_matrix_tiled_equals_direct(backend, kernel):
    # a memory limit below C*n^2 forces the two-pass row-tiled path, with an awkward block size
    x = torch.randn(23, 4, 3, 5, dtype=torch.float64, device=backend_device(backend))
    y = torch.randn(23, 2, dtype=torch.float64, device=x.device)
    direct = ak.hsic_matrix(x, y, kernel, backend=backend)
    tiled = ak.hsic_matrix(x, y, kernel, backend=backend, memory_limit=4 * 23 * 8 * 3)
    for a, b in zip(direct, tiled, strict=True):
        _assert_close(a, b.double().cpu(), torch.float64, "tiled vs direct")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_constant_channels_give_zero_not_nan(backend, kernel, dtype):
    x = torch.randn(17, 3, 3, 5, dtype=dtype)
    x[:, 1] = 1000.0  # large offset: exact cancellation is needed for a zero Gram
    dev = backend_device(backend)
    kbar = ak.centered_gram(x.to(dev), kernel, backend=backend).cpu()
    assert torch.isfinite(kbar).all()
    assert kbar[1].abs().max() <= 1e-6 * max(1.0, float(kbar.abs().max()))
    q, b, _ = ak.hsic_matrix(x.to(dev), torch.randn(17, 2, dtype=dtype, device=dev), kernel, backend=backend)
    assert torch.isfinite(q).all() and torch.isfinite(b).all()
    assert abs(float(b[1])) <= 1e-6 * _scale(b) and q[1].abs().max() <= 1e-6 * _scale(q)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # triton's interpreter
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.parametrize("features", [3, 20], ids=["direct", "gram"])
def test_non_finite_inputs_reach_the_statistics(backend, kernel, features):
    # hsic_matrix does not scan x or float y up front: it relies on NaN/Inf reaching Q, b or c in
    # every backend (through the means, the clamp of the distances and the centering).
    dev = backend_device(backend)
    x, y = torch.randn(9, 4, features), torch.randn(9, features)
    for bad in (math.nan, math.inf):
        xb = x.clone()
        xb[4, 2, 1] = bad
        with pytest.raises(ValueError, match="x contains"):
            ak.hsic_matrix(xb.to(dev), y.to(dev), kernel, backend=backend)
        yb = y.clone()
        yb[3, 1] = bad
        with pytest.raises(ValueError, match="y contains"):
            ak.hsic_matrix(x.to(dev), yb.to(dev), kernel, backend=backend)


def test_non_contiguous_inputs(backend):
    dev = backend_device(backend)
    base = torch.randn(5, 13, 4, 7, dtype=torch.float64)
    x = base.permute(1, 0, 3, 2)[:, ::2]  # (13, 3, 7, 4), every stride unusual
    assert not x.is_contiguous()
    _assert_close(
        ak.centered_gram(x.to(dev), backend=backend), ref.centered_gram(x), torch.float64, "strided"
    )
    q, b, _ = ak.hsic_matrix(x.to(dev), x[:, 0].to(dev), backend=backend)
    q_ref, b_ref, _ = ref.hsic_matrix(x, x[:, 0])
    _assert_close(q, q_ref, torch.float64, "strided Q")
    _assert_close(b, b_ref, torch.float64, "strided b")


@pytest.mark.parametrize("shape", [(6, 1, 5), (6, 3, 5), (6, 3)], ids=["C=1", "C=3", "D=1"])
def test_inputs_are_never_modified(backend, shape):
    dev = backend_device(backend)
    x = torch.randn(*shape, dtype=torch.float64, device=dev)
    y = torch.randn(shape[0], dtype=torch.float64, device=dev)
    x0, y0 = x.clone(), y.clone()
    ak.centered_gram(x, backend=backend)
    ak.hsic_matrix(x, y, backend=backend)
    ak.hsic_matrix(x, y, backend=backend, memory_limit=64)
    assert torch.equal(x, x0) and torch.equal(y, y0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(backend, dtype):
    x = torch.randn(17, 3, 3, 5).to(dtype)
    out = ak.centered_gram(x.to(backend_device(backend)), backend=backend)
    assert out.dtype == torch.float32
    _assert_close(out, ref.centered_gram(x), torch.float32, "half input")


def test_hsic_normalisation(backend):
    x = torch.randn(9, 4, 2, 2, dtype=torch.float64)
    y = torch.randint(0, 2, (9,))
    dev = backend_device(backend)
    h = ak.hsic(x.to(dev), y.to(dev), backend=backend)
    _assert_close(h, ref.hsic(x, y), torch.float64, "hsic")
    _, b, _ = ak.hsic_matrix(x.to(dev), y.to(dev), backend=backend)
    assert torch.allclose(h, b / 81)


def test_explicit_gamma_and_y_kernel(backend):
    x = torch.randn(12, 2, 3, dtype=torch.float64)
    y = torch.randn(12, 3, dtype=torch.float64)
    dev = backend_device(backend)
    q, b, c = ak.hsic_matrix(
        x.to(dev), y.to(dev), "gaussian", "linear", gamma=0.7, y_gamma=2.0, backend=backend
    )
    q_ref, b_ref, c_ref = ref.hsic_matrix(x, y, "gaussian", "linear", gamma=0.7)
    for a, e in ((q, q_ref), (b, b_ref), (c, c_ref)):
        _assert_close(a, e, torch.float64, "explicit gamma")


BAD_CALLS = [
    (lambda: ak.centered_gram(torch.randn(1, 3, 4)), ValueError, "n >= 2"),
    (lambda: ak.centered_gram(torch.randn(5)), ValueError, "shape \\(n, C"),
    (lambda: ak.centered_gram(torch.randn(5, 0, 3)), ValueError, "at least one channel"),
    (lambda: ak.centered_gram(torch.randn(5, 2, 0)), ValueError, "empty spatial"),
    (lambda: ak.centered_gram(torch.tensor([[1.0, math.nan]] * 3)), ValueError, "NaN or infinite"),
    (lambda: ak.hsic_matrix(torch.tensor([[1.0, math.nan]] * 3), torch.randn(3)), ValueError, "x contains"),
    (lambda: ak.hsic_matrix(torch.tensor([[1.0, math.inf]] * 3), torch.randn(3)), ValueError, "x contains"),
    (lambda: ak.hsic_matrix(torch.randn(3, 2), torch.tensor([1.0, math.nan, 0.0])), ValueError, "y contains"),
    (
        lambda: ak.hsic_matrix(torch.randn(3, 2), torch.tensor([[1.0], [-math.inf], [0.0]])),
        ValueError,
        "y contains",
    ),
    (
        lambda: ak.hsic_matrix(torch.randn(3, 2), torch.tensor([1.0, math.nan, 0.0]), y_kernel="delta"),
        ValueError,
        "y contains",
    ),  # a NaN class label would only empty its row of L̄: labels are always scanned
    (
        lambda: ak.hsic_matrix(torch.randn(3, 2), torch.tensor([1e300, 0.0, 1.0], dtype=torch.float64)),
        ValueError,
        "overflowed in torch.float32: y has",
    ),  # finite float64 y that overflows x's float32
    (
        lambda: ak.hsic_matrix(torch.tensor([[1e30, 0.0], [-1e30, 1], [0, 2]]), torch.randn(3), "linear"),
        ValueError,
        "overflowed in torch.float32: x has",
    ),  # finite x whose squares overflow float32
    (lambda: ak.centered_gram(torch.randn(4, 2, dtype=torch.complex64)), TypeError, "complex"),
    (lambda: ak.centered_gram(torch.ones(4, 2, dtype=torch.int64)), TypeError, "floating-point"),
    (lambda: ak.centered_gram([[1.0]]), TypeError, "torch.Tensor"),
    (lambda: ak.centered_gram(torch.randn(4, 2), "cosine"), ValueError, "kernel must be one of"),
    (lambda: ak.centered_gram(torch.randn(4, 2), gamma=0.0), ValueError, "gamma must be a positive"),
    (lambda: ak.centered_gram(torch.randn(4, 2), gamma=-1), ValueError, "gamma must be a positive"),
    (lambda: ak.centered_gram(torch.randn(4, 2), backend="tpu"), ValueError, "backend must be one of"),
    (lambda: ak.hsic_matrix(torch.randn(4, 2), torch.randn(5)), ValueError, "n = 4 samples"),
    (
        lambda: ak.hsic_matrix(torch.randn(4, 2), torch.tensor([0.0, 1, math.inf, 2])),
        ValueError,
        "y contains",
    ),
    (
        lambda: ak.hsic_matrix(torch.randn(4, 2), torch.zeros(4, 2, dtype=torch.long)),
        ValueError,
        "class labels",
    ),
    (lambda: ak.hsic_matrix(torch.randn(4, 2), torch.randn(4, 2), y_kernel="delta"), ValueError, "'delta'"),
    (lambda: ak.hsic_matrix(torch.randn(4, 2), torch.randn(4), y_gamma=-2.0), ValueError, "y_gamma"),
    (lambda: ak.hsic_matrix(torch.randn(4, 2), torch.randn(4), memory_limit=0), ValueError, "memory_limit"),
    (
        lambda: ak.hsic_matrix(torch.randn(4, 2), torch.randn(4), memory_limit=True),
        ValueError,
        "memory_limit",
    ),
    (lambda: ak.centered_gram(torch.randn(4, 2), gamma=True), ValueError, "gamma must be a positive"),
]


@pytest.mark.parametrize("call,exc,match", BAD_CALLS, ids=[m for _, _, m in BAD_CALLS])
def test_bad_input_is_rejected_with_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_explicit_unavailable_backend_raises_with_reason():
    with pytest.raises(ak.BackendUnavailableError, match="cuda.*CUDA tensors only"):
        ak.centered_gram(torch.randn(4, 2), backend="cuda")


def test_env_variable_chooses_backend(monkeypatch):
    monkeypatch.setenv("APIB_BACKEND", "cuda")
    with pytest.raises(ak.BackendUnavailableError):
        ak.centered_gram(torch.randn(4, 2))
    monkeypatch.setenv("APIB_BACKEND", "torch")
    assert ak.centered_gram(torch.randn(4, 2)).shape == (2, 4, 4)


def test_available_backends_and_info():
    assert "torch" in ak.available_backends()
    assert set(ak.available_backends("cpu")) <= set(ak.BACKENDS)
    out = subprocess.run(
        [sys.executable, "-m", "apib_kernels.info"], capture_output=True, text=True, check=True
    )
    assert "backends:" in out.stdout and "torch   available" in out.stdout


@pytest.mark.ext
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.parametrize(
    "shape,dtype,strided",
    [
        ((64, 1, 1100), torch.float32, False),
        ((37, 2, 3500), torch.float32, False),
        ((1030, 1, 300), torch.float64, False),
        ((64, 12, 700), torch.float32, False),
        ((9, 5, 3), torch.float32, False),
        ((20, 19, 1), torch.float32, False),
        ((32, 9, 8), torch.float64, False),
        ((21, 11, 2), torch.float32, True),
        ((33, 3, 1), torch.float32, False),
    ],
    ids=[
        "C=1 large D",
        "odd n, C=2",
        "n x n past the row-means scratch",
        "whole channels",
        "direct, channel lanes",
        "channel lanes, D=1, two groups",
        "channel lanes, float64, n at the limit",
        "channel lanes, strided features",
        "direct, n past the lanes' limit",
    ],
)
def test_cpu_row_blocks_reproduce_the_full_gram_bit_for_bit(shape, dtype, strided, kernel, threads):
    """The CPU op contract: kernel_row_means + row-block centered_gram equal the full-range centered_gram
    exactly, whether each thread takes whole channels, the threads split one channel's features, or
    (tiny direct Grams) one vector holds a channel per lane."""
    if unavailable_reason("cpu", "cpu"):
        pytest.skip(unavailable_reason("cpu", "cpu"))
    n, c, d = shape
    x = torch.rand(n, c, d, dtype=dtype) * torch.rand(1, c, 1, dtype=dtype) * 4
    if strided:  # features not contiguous: the means sum the samples one at a time
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
        assert x.stride(2) != 1
    code, g = ak.KERNELS[kernel], kernels.default_gamma(kernel, d)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        full = torch.ops.apib.centered_gram(x, code, g, 0, n, None)
        means = torch.ops.apib.kernel_row_means(x, code, g)
        cuts = [0, 3, n // 2 + 1, n]
        blocks = torch.cat(
            [torch.ops.apib.centered_gram(x, code, g, s, e, means) for s, e in itertools.pairwise(cuts)], 1
        )
    finally:
        torch.set_num_threads(before)
    assert torch.equal(blocks, full)
    # the float64 reference takes seconds at n = 1030: there, the torch backend (tested against it above)
    expected = ref.centered_gram(x, kernel, g) if n < 128 else ak.centered_gram(x, kernel, g, backend="torch")
    _assert_close(full, expected, dtype, f"cpu/{kernel}, {threads} threads")


# Shapes that cross tile edges (64-sample CUDA tiles, 16/32/64-sample Triton tiles): the triangle decode,
# the mirrored stores, the row-sum atomics and the centering over many rows. D around the direct/product
# switch (DIRECT_MAX_D = 8) and past Triton's 16/32-feature blocks.
MULTI_TILE = [(65, 3, 3), (130, 2, 9), (257, 2, 17), (1000, 2, 2)]
_REFERENCE_GRAMS = {}


def _reference_gram(x: torch.Tensor, kernel: str) -> torch.Tensor:
    """The float64 reference for the seeded x, computed once per (shape, kernel) for both dtypes."""
    key = (tuple(x.shape), kernel)
    if key not in _REFERENCE_GRAMS:
        _REFERENCE_GRAMS[key] = ref.centered_gram(x.double(), kernel)
    return _REFERENCE_GRAMS[key]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.parametrize("shape", MULTI_TILE, ids=str)
def test_multi_tile_grams_match_reference(backend, shape, kernel, dtype):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 2 + 0.5
    out = ak.centered_gram(x.to(dtype).to(backend_device(backend)), kernel, backend=backend)
    assert out.shape == (shape[1], shape[0], shape[0])
    _assert_close(out, _reference_gram(x.to(dtype), kernel), dtype, f"{backend}/{kernel} n={shape[0]}")


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.parametrize("d", [8, 9, 40], ids=["direct", "product", "product, 2 feature blocks"])
def test_row_blocks_across_tile_edges_equal_the_full_gram(backend, kernel, d):
    """Row blocks cut at 3, 64 and 65 (inside, at and past a tile edge) with the op's own row means."""
    n = 130
    x = torch.randn(n, 3, d, dtype=torch.float64, device=backend_device(backend))
    be = resolve_backend(backend, x.device)
    code, g = ak.KERNELS[kernel], kernels.default_gamma(kernel, d)
    means = be.kernel_row_means(x, code, g)
    full = be.centered_gram(x, code, g, 0, n, None)
    cuts = [0, 3, 64, 65, n]
    blocks = torch.cat([be.centered_gram(x, code, g, s, e, means) for s, e in itertools.pairwise(cuts)], 1)
    _assert_close(blocks, full.double().cpu(), torch.float64, f"{backend} row blocks")
    _assert_close(full, ref.centered_gram(x.cpu(), kernel, g), torch.float64, f"{backend} full")


@pytest.mark.parametrize("layout", ["channels-last", "strided"])
def test_multi_tile_unusual_layouts(backend, layout):
    base = torch.randn(130, 3, 4, 4, dtype=torch.float64)
    if layout == "channels-last":
        x = base.to(memory_format=torch.channels_last)  # features stride C, channels stride 1
    else:
        x = torch.randn(260, 3, 4, 8, dtype=torch.float64)[::2, :, :, ::2]  # every stride unusual
    dev = backend_device(backend)
    _assert_close(ak.centered_gram(x.to(dev), backend=backend), ref.centered_gram(x), torch.float64, layout)
    y = torch.randint(0, 4, (x.shape[0],))
    q, b, _ = ak.hsic_matrix(x.to(dev), y.to(dev), backend=backend, memory_limit=3 * 130 * 8 * 70)
    q_ref, b_ref, _ = ref.hsic_matrix(x, y)
    _assert_close(q, q_ref, torch.float64, f"{layout} Q (row blocks)")
    _assert_close(b, b_ref, torch.float64, f"{layout} b (row blocks)")


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def test_deterministic_algorithms_are_honoured(backend, deterministic):
    """The cuda and triton full-range passes add row sums with float atomics: under
    torch.use_deterministic_algorithms(True) they raise, and the automatic choice avoids them."""
    dev = backend_device(backend)
    x = torch.randn(70, 3, 12, device=dev)
    y = torch.randint(0, 3, (70,), device=dev)
    if backend in ("cuda", "triton"):
        with pytest.raises(RuntimeError, match="deterministic"):
            ak.centered_gram(x, backend=backend)
        with pytest.raises(RuntimeError, match="deterministic"):
            ak.hsic_matrix(x, y, backend=backend, memory_limit=64)
    else:
        first, again = (ak.hsic_matrix(x, y, backend=backend) for _ in range(2))
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert resolve_backend(None, x.device).name not in ("cuda", "triton")


def test_deterministic_mode_steers_the_automatic_choice_off_atomics(monkeypatch):
    monkeypatch.setattr(backends, "unavailable_reason", lambda name, device_type=None: None)
    monkeypatch.delenv("APIB_BACKEND", raising=False)
    assert resolve_backend(None, torch.device("cuda")).name == "cuda"
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        assert resolve_backend(None, torch.device("cuda")).name == "torch"
        assert resolve_backend(None, torch.device("cpu")).name == "cpu"
    finally:
        torch.use_deterministic_algorithms(False)


def test_automatic_choice_avoids_kernels_that_cannot_fill_a_gpu(monkeypatch):
    """Few channels of long features (a layer's output as y) would run on a handful of GPU programs."""
    monkeypatch.setattr(backends, "unavailable_reason", lambda name, device_type=None: None)
    monkeypatch.delenv("APIB_BACKEND", raising=False)
    cuda = torch.device("cuda")
    assert resolve_backend(None, cuda, (64, 1, 802816)).name == "torch"
    assert resolve_backend(None, cuda, (64, 3, 50176)).name == "torch"
    assert resolve_backend(None, cuda, (64, 64, 3136)).name == "cuda"  # 64 programs
    assert resolve_backend(None, cuda, (64, 1, 8)).name == "cuda"  # little work either way
    assert resolve_backend(None, cuda, (512, 3, 50176)).name == "torch"  # 108 programs
    assert resolve_backend(None, cuda, (2048, 1, 802816)).name == "cuda"  # 528 tile pairs
    assert resolve_backend("cuda", cuda, (64, 1, 802816)).name == "cuda"  # explicit choice kept
    assert resolve_backend(None, torch.device("cpu"), (64, 1, 802816)).name == "cpu"


@pytest.mark.triton
def test_triton_launches_enter_the_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device: each op must make x's device current first."""
    if unavailable_reason("triton", backend_device("triton").type):
        pytest.skip(unavailable_reason("triton", backend_device("triton").type))
    from apib_kernels import triton_backend as tb

    entered = []
    guard = tb._device_guard
    monkeypatch.setattr(tb, "_device_guard", lambda device: entered.append(device) or guard(device))
    x = torch.randn(20, 2, 3, device=backend_device("triton"))
    r = torch.ops.apib.triton_kernel_row_means(x, 1, 0.5)
    torch.ops.apib.triton_centered_gram(x, 1, 0.5, 0, 20, None)
    torch.ops.apib.triton_centered_gram(x, 1, 0.5, 3, 9, r)
    assert entered == [x.device] * 3
    second = tb._device_guard(torch.device("cuda", 1))  # not entered: no GPU needed
    assert isinstance(second, torch.cuda.device) and second.idx == 1
