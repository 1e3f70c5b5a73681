"""The kernel identity is written once in Python (apib_kernels.kernels) and once in C++ (csrc/common.h):
the codes, the names and the direct-distance bound must agree, and every Python user must take them from
apib_kernels.kernels."""

import math
import pathlib
import re

import pytest

from apib_kernels import kernels, ops, reference, torch_backend

COMMON_H = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "common.h"


def _header() -> str:
    if not COMMON_H.exists():
        pytest.skip(f"{COMMON_H} not in this checkout")
    return COMMON_H.read_text()


def test_kernel_kinds_match_common_h():
    enum = re.search(r"enum\s+class\s+KernelKind\s*:\s*\w+\s*\{([^}]*)\}", _header())
    assert enum, "csrc/common.h declares no `enum class KernelKind`"
    kinds = {name.lower(): int(code) for name, code in re.findall(r"(\w+)\s*=\s*(\d+)", enum.group(1))}
    assert kinds == kernels.KERNELS
    assert (kernels.LINEAR, kernels.GAUSSIAN, kernels.LAPLACE) == (
        kinds["linear"],
        kinds["gaussian"],
        kinds["laplace"],
    )


def test_direct_bound_matches_common_h():
    bound = re.search(r"constexpr\s+\w+\s+kDirectMaxD\s*=\s*(\d+)\s*;", _header())
    assert bound, "csrc/common.h declares no `constexpr ... kDirectMaxD`"
    assert int(bound.group(1)) == kernels.DIRECT_MAX_D


def test_default_bandwidths_are_the_reference_codes():
    # the convention itself, pinned: Laplace sqrt(0.5 / D), Gaussian 1 / D
    for d in (1, 7, 3136):
        assert kernels.default_gamma("laplace", d) == math.sqrt(0.5 / d)
        assert kernels.default_gamma("gaussian", d) == 1.0 / d
    assert kernels.default_gamma("linear", 5) == 1.0


def test_python_users_share_one_definition():
    assert torch_backend.DIRECT_MAX_D is kernels.DIRECT_MAX_D
    assert reference.default_gamma is kernels.default_gamma
    assert ops.KERNELS is kernels.KERNELS
