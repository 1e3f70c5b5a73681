"""The build produced what this machine can build: CI sets the APIB_EXPECT_* variables."""

import os

import pytest
import torch

from apib_kernels import extension


@pytest.mark.skipif(os.environ.get("APIB_EXPECT_EXT") != "1", reason="APIB_EXPECT_EXT=1 not set")
def test_extension_is_built_and_loaded():
    assert extension.EXT_ERROR is None, extension.EXT_ERROR
    assert extension.has_kernel("centered_gram", "CPU") and extension.has_kernel("kernel_row_means", "CPU")


@pytest.mark.skipif(
    os.environ.get("APIB_EXPECT_CUDA_BUILD") != "1", reason="APIB_EXPECT_CUDA_BUILD=1 not set"
)
def test_cuda_kernels_are_compiled_in():
    # compiled and linked even on a GPU-less build machine
    assert extension.EXT_ERROR is None, extension.EXT_ERROR
    assert extension.has_kernel("centered_gram", "CUDA") and extension.has_kernel("kernel_row_means", "CUDA")


@pytest.mark.ext
@pytest.mark.skipif(extension.EXT_ERROR is not None, reason="extension not built")
@pytest.mark.parametrize("op", ["kernel_row_means", "centered_gram"])
def test_compiled_ops_pass_opcheck(op):
    x = torch.randn(9, 3, 5, dtype=torch.float64)
    args = (x, 2, 0.3) if op == "kernel_row_means" else (x, 1, 0.3, 0, 9, None)
    torch.library.opcheck(getattr(torch.ops.apib, op).default, args)
    if op == "centered_gram":
        r = torch.ops.apib.kernel_row_means(x, 1, 0.3)
        torch.library.opcheck(torch.ops.apib.centered_gram.default, (x, 1, 0.3, 2, 7, r))


@pytest.mark.ext
@pytest.mark.skipif(extension.EXT_ERROR is not None, reason="extension not built")
def test_compiled_ops_trace_under_torch_compile():
    def stats(x):
        return torch.ops.apib.centered_gram(x, 2, 0.5, 0, x.shape[0], None).sum(0)

    x = torch.randn(8, 3, 4)
    torch.testing.assert_close(torch.compile(stats, backend="aot_eager", fullgraph=True)(x), stats(x))


@pytest.mark.triton
def test_triton_ops_pass_opcheck():
    from apib_kernels.backends import unavailable_reason

    reason = unavailable_reason("triton", "cuda" if torch.cuda.is_available() else "cpu")
    if reason:
        pytest.skip(reason)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(9, 2, 5, dtype=torch.float64, device=dev)
    torch.library.opcheck(torch.ops.apib.triton_kernel_row_means.default, (x, 2, 0.3))
    torch.library.opcheck(torch.ops.apib.triton_centered_gram.default, (x, 2, 0.3, 0, 9, None))
