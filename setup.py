"""Build for apib-kernels.

Build switches (environment variables), all in one place:

  APIB_BUILD_EXT=1|0       0: pure-Python install (no apib_kernels._C); the "torch" and "triton"
                           backends still work. Default 1.
  APIB_BUILD_CUDA=auto|0|1 auto: build the CUDA kernels whenever a CUDA toolkit is found, with or
                           without a visible GPU. 1: same, but fail if no toolkit is found.
                           0: CPU kernels only. Default auto.
  CUDA_HOME / CUDA_PATH    the toolkit root (holding bin/nvcc and lib64/libcudart.so). When unset,
                           torch's guess is used if it is a real toolkit root, else /usr/local/cuda.
  TORCH_CUDA_ARCH_LIST     CUDA architectures; default "8.0;9.0" (A100, H100/H200).
  MAX_JOBS                 parallel compile jobs for ninja (default: torch's choice).

Install with the already-installed torch: `pip install --no-build-isolation .`
"""

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _is_toolkit(path):
    if not path:
        return False
    libdirs = ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"))
    has_nvcc = os.path.isfile(os.path.join(path, "bin", "nvcc"))
    has_rt = any(os.path.exists(os.path.join(path, d, "libcudart.so")) for d in libdirs)
    return has_nvcc and has_rt


def _find_cuda_home():
    """Returns the toolkit root, or None. Must run before torch.utils.cpp_extension is imported."""
    explicit = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if explicit:
        return explicit if _is_toolkit(explicit) else None
    from shutil import which

    nvcc = which("nvcc")
    guess = os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None
    for candidate in (guess, "/usr/local/cuda"):
        if _is_toolkit(candidate):
            return candidate
    return None


def _extensions():
    if os.environ.get("APIB_BUILD_EXT", "1") == "0":
        print("apib-kernels: APIB_BUILD_EXT=0, pure-Python install")
        return [], {}
    mode = os.environ.get("APIB_BUILD_CUDA", "auto")
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"APIB_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    cuda_home = _find_cuda_home() if mode != "0" else None
    if mode == "1" and cuda_home is None:
        raise SystemExit(
            "APIB_BUILD_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the folder holding "
            "bin/nvcc and lib64/libcudart.so"
        )
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx_flags = ["-O3", "-fopenmp"]  # the C++ standard is torch's choice (C++20 for torch 2.14)
    kwargs = dict(
        name="apib_kernels._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
    )
    if cuda_home:
        print(
            f"apib-kernels: building CPU and CUDA kernels (CUDA_HOME={cuda_home}, "
            f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})"
        )
        ext = CUDAExtension(
            sources=sources + sorted(glob.glob("csrc/cuda/*.cu")),
            extra_compile_args={"cxx": cxx_flags + ["-DAPIB_WITH_CUDA"], "nvcc": ["-O3"]},
            **kwargs,
        )
    else:
        print("apib-kernels: no CUDA toolkit (or APIB_BUILD_CUDA=0), building CPU kernels only")
        ext = CppExtension(sources=sources, extra_compile_args=cxx_flags, **kwargs)
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
