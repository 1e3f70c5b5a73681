"""Loads the compiled extension apib_kernels._C, if it was built, and registers its fake kernels.

Importing never fails: a missing extension is recorded in EXT_ERROR (the reason shown by
`python -m apib_kernels.info`); one that exists but does not load is also logged as a warning.
"""

import glob
import logging
import os

import torch

logger = logging.getLogger("apib_kernels")

EXT_ERROR: str | None = None
try:
    from apib_kernels import _C  # noqa: F401  (loading the library registers the apib:: kernels)
except ImportError as err:
    _here = os.path.dirname(os.path.abspath(__file__))
    if glob.glob(os.path.join(_here, "_C*.so")):
        EXT_ERROR = f"apib_kernels._C failed to load: {err}"
        logger.warning("%s; falling back to the triton/torch backends", EXT_ERROR)
    else:
        EXT_ERROR = "extension apib_kernels._C not built (installed with APIB_BUILD_EXT=0, or not compiled)"


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the dispatcher holds a kernel for `apib::op` under `dispatch_key` ("CPU", "CUDA")."""
    if EXT_ERROR is not None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"apib::{op}", dispatch_key)
    except RuntimeError:  # an extension built before the op existed does not declare it
        return False


if EXT_ERROR is None:

    @torch.library.register_fake("apib::kernel_row_means")
    def _kernel_row_means_fake(x, kernel, gamma):
        return x.new_empty((x.shape[1], x.shape[0]))

    @torch.library.register_fake("apib::centered_gram")
    def _centered_gram_fake(x, kernel, gamma, row_start, row_stop, row_means):
        return x.new_empty((x.shape[1], row_stop - row_start, x.shape[0]))
