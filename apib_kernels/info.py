"""`python -m apib_kernels.info`: versions, and which backends can run here and why the others cannot."""

import platform

import torch

from apib_kernels import __version__, extension
from apib_kernels.backends import BACKENDS, unavailable_reason


def report() -> str:
    lines = [
        f"apib-kernels {__version__}",
        f"python       {platform.python_version()}",
        f"torch        {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
    ]
    try:
        import triton

        lines.append(f"triton       {triton.__version__}")
    except ImportError:
        lines.append("triton       not installed")
    if torch.cuda.is_available():
        lines.append(
            f"gpu          {torch.cuda.get_device_name()} "
            f"(sm_{''.join(map(str, torch.cuda.get_device_capability()))})"
        )
    else:
        lines.append("gpu          none visible")
    lines.append(f"extension    {'loaded' if extension.EXT_ERROR is None else extension.EXT_ERROR}")
    if extension.EXT_ERROR is None:
        kernels = [key for key in ("CPU", "CUDA") if extension.has_kernel("centered_gram", key)]
        lines.append(f"  kernels    {', '.join(kernels)}")
    lines.append("backends:")
    for name in BACKENDS:
        reason = unavailable_reason(name)
        lines.append(f"  {name:<7} {'available' if reason is None else 'unavailable: ' + reason}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
