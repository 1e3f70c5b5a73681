"""apib-kernels: fast HSIC statistics and HSIC Lasso for APIB channel pruning.

Public ops (see each docstring for shapes):
  centered_gram(x)      (n, C, *spatial) -> (C, n, n) centered per-channel Grams
  hsic_matrix(x, y)     -> (Q (C, C), b (C,), c): the Gram-form HSIC Lasso statistics
  hsic(x, y)            -> (C,) biased HSIC of each channel with y
  GramStatistics        those statistics summed over blocks of samples (added, or merged from elsewhere)
  available_backends()  -> backends usable here; `python -m apib_kernels.info` says why others are not
  hsic_lasso(x, y)      -> HSICLassoResult: the channels (features) kept by the HSIC Lasso
  HSICLassoProblem      one layer's statistics, solved at any penalty or count (the pruning search's unit)
  lasso_gram(Q, b, alpha, n_rows), lasso_path(Q, b, n_rows), alpha_max(b, n_rows): the Gram-form Lasso
  lasso_knots(Q, b, n_rows)  its exact regularization path (every knot, by homotopy)

Modules, bottom up: validation (shared checks), kernels (the kernel identity), backends (who computes
a Gram), ops and statistics (Grams and their statistics), lasso_batched / lasso / homotopy (the
Gram-form Lasso), selection (the problem of one layer and `hsic_lasso`), reference (the float64 oracle).
"""

from apib_kernels import reference
from apib_kernels.backends import BACKENDS, BackendUnavailableError, available_backends
from apib_kernels.homotopy import lasso_knots
from apib_kernels.kernels import KERNELS
from apib_kernels.lasso import alpha_max, lasso_gram, lasso_path
from apib_kernels.ops import centered_gram, hsic, hsic_matrix, output_gram
from apib_kernels.selection import HSICLassoProblem, HSICLassoResult, hsic_lasso
from apib_kernels.statistics import GramStatistics, Samples

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "KERNELS",
    "BackendUnavailableError",
    "GramStatistics",
    "HSICLassoProblem",
    "HSICLassoResult",
    "Samples",
    "alpha_max",
    "available_backends",
    "centered_gram",
    "hsic",
    "hsic_lasso",
    "hsic_matrix",
    "lasso_gram",
    "lasso_knots",
    "lasso_path",
    "output_gram",
    "reference",
]
