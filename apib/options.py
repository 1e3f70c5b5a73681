"""The settings of one pruning run, validated once and passed whole to the scorers and the allocators.

Presets. `PRESETS` names whole configurations of APIB's method (`preset=`): every option a preset sets
and the caller leaves unset (None) takes the preset's value; an option given explicitly wins, even
against the preset. `preset=None` means DEFAULT_PRESET. "paper" is the paper's configuration (Guo et
al., ICCV 2023): one global penalty, the fixed bandwidth γ of the reference code, unnormalised Grams,
the layer's output as Y, the Laplace kernel and the non-negative Lasso — the selection `apib.prune`
has always made.
"""

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
and CHIP are applied in their papers); "threshold", one global threshold on the scores (see
`apib.allocation`)."""

PENALTY_SCALES = ("global", "layer")
"""How the searched penalty reaches each layer's Lasso: "global", the same α for every layer (the
paper); "layer", each layer at α · alpha_max_l (alpha_max_l: the smallest penalty at which the layer
keeps nothing), the search running over that fraction α."""

BANDWIDTHS = ("paper", "median")
"""The input kernel's bandwidth: "paper", the reference code's fixed γ of the features per sample D
(`apib_kernels.kernels.default_gamma`); "median", each channel's own, from the median distance between
its samples in the first calibration block (`apib_kernels.kernels.median_scales`)."""

PRESETS = {
    "paper": {
        "allocation": "penalty",
        "penalty_scale": "global",
        "bandwidth": "paper",
        "normalize": False,
        "target": "output",
        "kernel": "laplace",
        "positive": True,
    },
}
PRESETS["uniform"] = {**PRESETS["paper"], "allocation": "uniform"}
PRESETS["uniform-signed"] = {**PRESETS["uniform"], "positive": False}
"""Named configurations: preset name -> option values (see the module docstring). A preset's
"allocation" applies to criterion "apib" only; a baseline criterion keeps its own ("uniform").
"uniform" is the paper's channel ranking with one pruning ratio for every layer instead of the global
penalty's widths. "uniform-signed" is "uniform" with each layer's channels in the order they enter the
signed HSIC Lasso's exact path: the non-negative path leaves many channels of a wide layer out (they
then rank by their HSIC with Y alone, blind to redundancy: 154 to 244 of 512 enter it in VGG-16's last
five layers on the digits), while all 512 enter the signed path there.
The README's "Choosing a configuration" quotes the quality study (benchmarks/quality.py, digits)."""

DEFAULT_PRESET = "uniform-signed"
"""The preset of options left unset when no preset is named: the configuration the quality study
supports (it wins or ties more of its settings against every baseline than any other; see the README's
"Choosing a configuration")."""


@dataclass(frozen=True)
class PruneOptions:
    """Every setting of `apib.prune` but the model, the data and the target FLOPs (see its docstring).
    Options a preset sets (`PRESETS`) may be None: they take the preset's value (`preset` None: the
    DEFAULT_PRESET's). `allocation` None means the preset's for "apib", "uniform" for the baselines.
    After construction every option holds its value in force and `preset` the preset's name."""

    criterion: str = "apib"
    allocation: str | None = None
    alpha0: float | None = None
    omega: int = 1
    tolerance: float = 0.01
    calib_size: int | None = 128
    kernel: str | None = None
    positive: bool | None = None
    target: str | None = None
    mode: str = "fast"
    seed: int = 0
    prune_residual: bool = False
    block_size: int = DEFAULT_BLOCK_SIZE
    backend: str | None = None
    penalty_scale: str | None = None
    bandwidth: str | None = None
    normalize: bool | None = None
    preset: str | None = None

    def __post_init__(self):
        if self.criterion != "apib" and self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be 'apib' or one of {sorted(CRITERIA)}, got {self.criterion!r}")
        self._apply_preset()
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
        if self.penalty_scale not in PENALTY_SCALES:
            raise ValueError(f"penalty_scale must be one of {PENALTY_SCALES}, got {self.penalty_scale!r}")
        if self.bandwidth not in BANDWIDTHS:
            raise ValueError(f"bandwidth must be one of {BANDWIDTHS}, got {self.bandwidth!r}")
        if self.bandwidth == "median" and self.kernel == "linear":
            raise ValueError(
                "bandwidth 'median' sets a kernel's bandwidth and needs kernel 'laplace' or 'gaussian', "
                "got kernel 'linear', which has none"
            )
        check_mode(self.mode)
        check_int(self.block_size, "block_size", 2)
        for name in ("prune_residual", "positive", "normalize"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def _apply_preset(self) -> None:
        """Fills the options left None from the preset (DEFAULT_PRESET when none is named)."""
        if self.preset is None:
            object.__setattr__(self, "preset", DEFAULT_PRESET)
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)} or None, got {self.preset!r}")
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None and (name != "allocation" or self.criterion == "apib"):
                object.__setattr__(self, name, value)
        if self.allocation is None:
            object.__setattr__(self, "allocation", "penalty" if self.criterion == "apib" else "uniform")
