"""The settings of one pruning run, validated once and passed whole to the scorers and the allocators."""

from dataclasses import dataclass

from apib.criteria import CRITERIA
from apib.criteria._common import check_mode
from apib.streaming import DEFAULT_BLOCK_SIZE
from apib_kernels import KERNELS
from apib_kernels.validation import check_int, check_number

TARGETS = ("output", "labels")
ALLOCATIONS = ("penalty", "uniform", "threshold")
"""How channels are allotted to layers from their scores: "penalty", APIB's global search for one HSIC
Lasso penalty (criterion "apib" only); "uniform", one pruning ratio for every layer (how L1, FPGM, HRank
and CHIP are applied in their papers); "threshold", one global threshold on scores normalised by each
layer's mean score."""


@dataclass(frozen=True)
class PruneOptions:
    """Every setting of `apib.prune` but the model, the data and the target FLOPs (see its docstring).
    `allocation` None means the criterion's own: "penalty" for "apib", "uniform" for the baselines."""

    criterion: str = "apib"
    allocation: str | None = None
    alpha0: float | None = None
    omega: int = 1
    tolerance: float = 0.01
    calib_size: int | None = 128
    kernel: str = "laplace"
    positive: bool = True
    target: str = "output"
    mode: str = "fast"
    seed: int = 0
    prune_residual: bool = False
    block_size: int = DEFAULT_BLOCK_SIZE
    backend: str | None = None

    def __post_init__(self):
        if self.criterion != "apib" and self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be 'apib' or one of {sorted(CRITERIA)}, got {self.criterion!r}")
        if self.allocation is None:
            object.__setattr__(self, "allocation", "penalty" if self.criterion == "apib" else "uniform")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS} or None, got {self.allocation!r}")
        if self.allocation == "penalty" and self.criterion != "apib":
            raise ValueError(
                f"allocation 'penalty' searches the HSIC Lasso's penalty and needs criterion 'apib', got "
                f"{self.criterion!r}: use allocation 'uniform' or 'threshold'"
            )
        if self.alpha0 is not None:
            check_number(self.alpha0, "alpha0", positive=True)
        check_int(self.omega, "omega", 1)
        check_number(self.tolerance, "tolerance", positive=True, below=1)
        if self.calib_size is not None:
            check_int(self.calib_size, "calib_size", 2)
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {self.kernel!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        check_mode(self.mode)
        check_int(self.block_size, "block_size", 2)
        if not isinstance(self.prune_residual, bool):
            raise ValueError(f"prune_residual must be True or False, got {self.prune_residual!r}")
