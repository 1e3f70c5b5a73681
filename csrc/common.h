// Shared declarations for the apib C++/CUDA kernels.
//
// Op contract (implemented identically by csrc/cpu, csrc/cuda and the Triton kernels):
//   x: (n, C, D) float32 or float64, any strides. Sample i's feature vector for channel k is
//   x[i, k, :]. Every kernel is evaluated on mean-removed features x~ = x - mean_i x (per channel
//   and feature): Gaussian and Laplace kernels are translation invariant, and the centered linear
//   kernel H X X^T H is too, so this changes no centered Gram while removing the cancellation in
//   ||a||^2 + ||b||^2 - 2<a,b> for channels that are (nearly) constant.
//   S_ij = max(||x~_i||^2 + ||x~_j||^2 - 2<x~_i, x~_j>, 0), S_ii = 0 exactly. For D <= kDirectMaxD,
//   S_ij = sum_d (x~_id - x~_jd)^2 from explicit differences instead: with few features close pairs are
//   common and the expansion's cancellation, amplified by the Laplace kernel's sqrt, costs float32
//   about 3e-4 relative error at D = 1 (explicit differences: 2e-7), while the extra work is negligible.
//   kernel 0 linear   K_ij = <x~_i, x~_j>
//   kernel 1 gaussian K_ij = exp(-gamma * S_ij)
//   kernel 2 laplace  K_ij = exp(-gamma * sqrt(S_ij))
//   r_k[i] = mean_j K_k[i, j] (row means), t_k = mean_i r_k[i] (grand mean).
//
//   apib::kernel_row_means(x, kernel, gamma) -> r (C, n)
//   apib::centered_gram(x, kernel, gamma, row_start, row_stop, row_means?) -> (C, row_stop - row_start, n)
//     out[k, i - row_start, j] = K_k[i, j] - r_k[i] - r_k[j] + t_k for row_start <= i < row_stop.
//     Without row_means the op needs the full range [0, n) and computes r, t itself in one pass;
//     with row_means (C, n) (from kernel_row_means) it computes any row block, so callers can tile
//     over rows and keep memory at O(C * rows * n).
//   Outputs are contiguous, of x's dtype, on x's device; accumulation is in x's dtype.
//   Accuracy: every backend agrees with a float64 evaluation to 1e-9 (float64) or 5e-5 (float32) of the
//   largest |entry|, on CPUs and GPUs alike (the tests' tolerance). The Triton kernels keep the fast
//   float32 exponential (tl.exp lowers to ex2.approx, about 2 ulp; the kernel values it rounds are <= 1
//   and feed sums of n^2 of them, so an accurate exp would change nothing measurable); CUDA uses expf.
//   Determinism: the GPU backends' full-range passes add row sums with float atomics, so their last bits
//   vary between runs; they raise under torch.use_deterministic_algorithms(True) (warn with warn_only),
//   and the automatic backend choice then takes the torch backend. Row blocks with given row means and
//   the CPU kernels are deterministic.
#pragma once

#include <torch/types.h>

namespace apib {

constexpr int64_t kDirectMaxD = 8;

enum class KernelKind : int64_t { Linear = 0, Gaussian = 1, Laplace = 2 };

// Validates the arguments shared by both ops and returns the kernel kind.
inline KernelKind check_args(const at::Tensor& x, int64_t kernel, double gamma) {
  TORCH_CHECK(x.dim() == 3, "apib: x must have shape (n, C, D), got ", x.dim(), " dimensions");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "apib: x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.size(0) >= 1 && x.size(1) >= 1 && x.size(2) >= 1,
              "apib: x must have n >= 1, C >= 1 and D >= 1, got shape ", x.sizes());
  TORCH_CHECK(kernel >= 0 && kernel <= 2, "apib: kernel must be 0 (linear), 1 (gaussian) or 2 (laplace), got ",
              kernel);
  TORCH_CHECK(kernel == 0 || gamma > 0, "apib: gamma must be > 0, got ", gamma);
  return static_cast<KernelKind>(kernel);
}

// Validates the row range and the optional row means; returns the number of output rows.
inline int64_t check_rows(const at::Tensor& x, int64_t row_start, int64_t row_stop,
                          const std::optional<at::Tensor>& row_means) {
  const int64_t n = x.size(0);
  TORCH_CHECK(0 <= row_start && row_start < row_stop && row_stop <= n,
              "apib: need 0 <= row_start < row_stop <= n = ", n, ", got [", row_start, ", ", row_stop, ")");
  if (row_means.has_value()) {
    const at::Tensor& r = *row_means;
    TORCH_CHECK(r.dim() == 2 && r.size(0) == x.size(1) && r.size(1) == n,
                "apib: row_means must have shape (C, n) = (", x.size(1), ", ", n, "), got ", r.sizes());
    TORCH_CHECK(r.scalar_type() == x.scalar_type(), "apib: row_means must have x's dtype ", x.scalar_type(),
                ", got ", r.scalar_type());
    TORCH_CHECK(r.device() == x.device(), "apib: row_means must be on x's device ", x.device(), ", got ",
                r.device());
  } else {
    TORCH_CHECK(row_start == 0 && row_stop == n,
                "apib: without row_means the row range must be the full [0, n); pass row_means "
                "from apib::kernel_row_means to compute a row block");
  }
  return row_stop - row_start;
}

}  // namespace apib
