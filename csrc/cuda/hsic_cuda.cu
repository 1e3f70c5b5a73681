// CUDA implementation of apib::kernel_row_means and apib::centered_gram.
//
// The contract is in csrc/common.h; apib_kernels/torch_backend.py states it as executable torch code.
// Pipeline for one call:
//   1. mean (C, D) of x over samples with ATen's reduction (the torch backend's own mean, so on the GPU
//      both see the same mean-removed features), and squared norms sq (C, n) of the mean-removed
//      features (sqnorm_kernel).
//   2. gram_tile_kernel: one block per (channel, 64x64 tile). For D <= kDirectMaxD (DIRECT) the
//      distance kernels accumulate explicit squared differences instead of products (common.h). Features are mean-removed while they are
//      loaded, so x is read in place with its own strides and never copied. The products are plain
//      FMAs in x's dtype: the distance sq_i + sq_j - 2<a, b> cancels badly, so no TF32 or tensor
//      cores. The kernel function is fused into the epilogue, which stages the tile in shared memory
//      so that every global store is coalesced.
//      - Full range (kernel_row_means, centered_gram without row_means): only tiles I <= J are
//        launched and an off-diagonal tile also yields K[J, I] = K[I, J]^T, halving the FLOPs. Row sums
//        go to a (C, n) buffer by atomicAdd: tile (I, J) adds its row sums to the rows of I and, when
//        I != J, its column sums to the rows of J (they are the row sums of the mirrored tile).
//      - Row block with row_means: rectangular tiles over [row_start, row_stop) x [0, n) with the
//        centering fused into the epilogue.
//   3. Full-range centered_gram: r = row sums / n, t = mean(r), then center_kernel applies
//      out = K - r_i - r_j + t in place, O(n^2) per channel, with no H matrix.
// Determinism: the atomic row sums make the full-range results vary in their last bits from run to run
// (the order tiles finish in); both full-range entry points call alertNotDeterministic, so they raise
// under torch.use_deterministic_algorithms(True). Row blocks with given row means use no atomics.
// Centering is evaluated as (K_ij - (r_i + r_j)) + t_k everywhere: the sum r_i + r_j rounds the same
// for (i, j) and (j, i), so the full-range output is exactly symmetric and a row block computed with
// the same row means equals the corresponding rows of the full-range output bit for bit.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>

#include "common.h"

namespace apib {
namespace {

constexpr int kTile = 64;                     // samples per tile side
constexpr int kChunk = 16;                    // features per shared-memory stage
constexpr int kMicro = 4;                     // per-thread micro-tile side
constexpr int kSide = kTile / kMicro;         // threads per tile side
constexpr int kThreads = kSide * kSide;       // 256
constexpr int kLoadRows = kThreads / kChunk;  // tile rows one load pass covers
constexpr int kLoadPasses = kTile / kLoadRows;
// Operand pitch: a multiple of 4 keeps each thread's 4-element read 16-byte aligned.
constexpr int kLd = kTile + 4;
// Staging pitch: odd, so walking a row or a column of the staged tile hits distinct banks.
constexpr int kCd = kTile + 1;
constexpr int kOperandElems = 2 * kChunk * kLd;
constexpr int kStageElems = kTile * kCd;
constexpr int kSmemElems = kOperandElems > kStageElems ? kOperandElems : kStageElems;
constexpr int kSumSplit = kThreads / kTile;  // threads sharing one row (or column) sum
constexpr int64_t kMaxGridY = 65535;
constexpr int kRowThreads = 128;  // sqnorm_kernel and center_kernel block size

static_assert(kLoadRows * kLoadPasses == kTile, "loads must cover the tile");
static_assert(kTile % kSumSplit == 0 && 32 % kSumSplit == 0, "sum groups must sit inside one warp");
static_assert(kLd % 4 == 0, "operand rows must keep 16-byte alignment");

enum class Mode {
  RowSums,       // triangle of tiles, row sums only (kernel_row_means)
  StoreRowSums,  // triangle of tiles, raw K stored in both halves, plus row sums
  Centered,      // rectangle of tiles over a row block, centered with given row means
};

template <typename T>
struct GramArgs {
  const T* x;  // (n, C, D) with strides s0, s1, s2
  int64_t s0, s1, s2;
  const T* mean;  // (C, D) contiguous
  const T* sq;    // (C, n) contiguous; unused for the linear kernel
  const T* r;     // (C, n) row means; Centered only
  const T* t;     // (C,) grand means; Centered only
  T* out;         // (C, rows, n) contiguous; not RowSums
  T* rowsum;      // (C, n) contiguous, zero-initialised; not Centered
  int64_t n, D;
  int64_t row_start, rows;  // output rows [row_start, row_start + rows)
  int64_t col_tiles;        // tiles per tile row; Centered only
  T gamma;
  int64_t c0;  // channel of blockIdx.y == 0 (grids are split along channels at kMaxGridY)
};

__device__ __forceinline__ float exp_(float v) { return expf(v); }
__device__ __forceinline__ double exp_(double v) { return exp(v); }
__device__ __forceinline__ float sqrt_(float v) { return sqrtf(v); }
__device__ __forceinline__ double sqrt_(double v) { return sqrt(v); }
// Explicit FMAs fix the rounding of every Gram entry independently of the compiler's contraction
// choices, so an entry rounds identically in every kernel instantiation and for (i, j) and (j, i).
__device__ __forceinline__ float fma_(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_(double a, double b, double c) { return fma(a, b, c); }

__device__ __forceinline__ void lds4(const float* p, float (&v)[4]) {
  const float4 q = *reinterpret_cast<const float4*>(p);
  v[0] = q.x;
  v[1] = q.y;
  v[2] = q.z;
  v[3] = q.w;
}

__device__ __forceinline__ void lds4(const double* p, double (&v)[4]) {
  const double2 q0 = *reinterpret_cast<const double2*>(p);
  const double2 q1 = *reinterpret_cast<const double2*>(p + 2);
  v[0] = q0.x;
  v[1] = q0.y;
  v[2] = q1.x;
  v[3] = q1.y;
}

// sq[k, i] = ||x[i, k, :] - mean[k, :]||^2, one warp per (k, i).
template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    sqnorm_kernel(const T* __restrict__ x, int64_t s0, int64_t s1, int64_t s2, const T* __restrict__ mean,
                  int64_t n, int64_t C, int64_t D, T* __restrict__ sq) {
  constexpr int kWarps = kRowThreads / 32;
  const int lane = threadIdx.x % 32;
  const int64_t total = C * n;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; w < total; w += step) {
    const int64_t k = w / n;
    const int64_t i = w - k * n;
    const T* xi = x + i * s0 + k * s1;
    const T* mk = mean + k * D;
    T acc = 0;
    for (int64_t d = lane; d < D; d += 32) {
      const T v = xi[d * s2] - mk[d];
      acc += v * v;
    }
    // w is the same for the whole warp, so every lane reaches the shuffles.
    for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) sq[w] = acc;
  }
}

template <typename T, int KERNEL, Mode MODE, bool DIRECT>
__global__ void __launch_bounds__(kThreads) gram_tile_kernel(const GramArgs<T> a) {
  // The operand stages and the epilogue's staged tile share one buffer; the main loop's trailing
  // barrier separates the last operand read from the first staging write.
  __shared__ __align__(16) T smem[kSmemElems];
  T* const As = smem;
  T* const Bs = smem + kChunk * kLd;
  T* const Cs = smem;

  const int tid = threadIdx.x;
  const int64_t n = a.n;
  const int64_t D = a.D;
  const int64_t k = a.c0 + blockIdx.y;

  int64_t row0, col0, row_end;
  bool diag;
  if constexpr (MODE == Mode::Centered) {
    const int64_t bi = blockIdx.x / a.col_tiles;
    const int64_t bj = blockIdx.x - bi * a.col_tiles;
    row0 = a.row_start + bi * kTile;
    col0 = bj * kTile;
    row_end = a.row_start + a.rows;
    diag = false;
  } else {
    // blockIdx.x = J (J + 1) / 2 + I with 0 <= I <= J: consecutive blocks share column tile J.
    const int64_t p = blockIdx.x;
    int64_t J = static_cast<int64_t>((sqrt(8.0 * static_cast<double>(p) + 1.0) - 1.0) * 0.5);
    while (J * (J + 1) / 2 > p) --J;
    while ((J + 1) * (J + 2) / 2 <= p) ++J;
    const int64_t I = p - J * (J + 1) / 2;
    row0 = I * kTile;
    col0 = J * kTile;
    row_end = n;
    diag = I == J;
  }

  const T* const xk = a.x + k * a.s1;
  const T* const mk = a.mean + k * D;

  // Each thread loads one feature (ld) of kLoadPasses rows of both operands per stage; consecutive
  // threads take consecutive features, which is the contiguous direction of the usual layout.
  const int ld = tid % kChunk;
  const int lr = tid / kChunk;
  T ra[kLoadPasses], rb[kLoadPasses];
  auto load = [&](int64_t d0) {
    const int64_t d = d0 + ld;
    const bool d_ok = d < D;
    const T m = d_ok ? mk[d] : T(0);
#pragma unroll
    for (int q = 0; q < kLoadPasses; ++q) {
      const int64_t gi = row0 + lr + q * kLoadRows;
      const int64_t gj = col0 + lr + q * kLoadRows;
      // Zero padding contributes nothing to the products.
      ra[q] = (d_ok && gi < row_end) ? xk[gi * a.s0 + d * a.s2] - m : T(0);
      rb[q] = (d_ok && gj < n) ? xk[gj * a.s0 + d * a.s2] - m : T(0);
    }
  };

  const int tx = tid % kSide;
  const int ty = tid / kSide;
  T acc[kMicro][kMicro];
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
#pragma unroll
    for (int j = 0; j < kMicro; ++j) acc[i][j] = T(0);
  }

  load(0);
  for (int64_t d0 = 0; d0 < D; d0 += kChunk) {
#pragma unroll
    for (int q = 0; q < kLoadPasses; ++q) {
      As[ld * kLd + lr + q * kLoadRows] = ra[q];
      Bs[ld * kLd + lr + q * kLoadRows] = rb[q];
    }
    __syncthreads();
    // Issued before the arithmetic so the global loads of the next stage overlap it.
    if (d0 + kChunk < D) load(d0 + kChunk);
#pragma unroll
    for (int kk = 0; kk < kChunk; ++kk) {
      T av[kMicro], bv[kMicro];
      lds4(&As[kk * kLd + ty * kMicro], av);
      lds4(&Bs[kk * kLd + tx * kMicro], bv);
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
#pragma unroll
        for (int j = 0; j < kMicro; ++j) {
          if constexpr (DIRECT) {
            const T dv = av[i] - bv[j];
            acc[i][j] = fma_(dv, dv, acc[i][j]);
          } else {
            acc[i][j] = fma_(av[i], bv[j], acc[i][j]);
          }
        }
      }
    }
    __syncthreads();
  }

  // Epilogue: kernel function (and centering) per element, masked to zero outside the matrix so the
  // staged sums below need no bounds.
  T sqi[kMicro], sqj[kMicro], ri[kMicro], rj[kMicro];
  T tk = T(0);
#pragma unroll
  for (int q = 0; q < kMicro; ++q) {
    const int64_t gi = row0 + ty * kMicro + q;
    const int64_t gj = col0 + tx * kMicro + q;
    const bool i_ok = gi < row_end;
    const bool j_ok = gj < n;
    sqi[q] = sqj[q] = ri[q] = rj[q] = T(0);
    if constexpr (KERNEL != static_cast<int>(KernelKind::Linear) && !DIRECT) {
      if (i_ok) sqi[q] = a.sq[k * n + gi];
      if (j_ok) sqj[q] = a.sq[k * n + gj];
    }
    if constexpr (MODE == Mode::Centered) {
      if (i_ok) ri[q] = a.r[k * n + gi];
      if (j_ok) rj[q] = a.r[k * n + gj];
    }
  }
  if constexpr (MODE == Mode::Centered) tk = a.t[k];

#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
#pragma unroll
    for (int j = 0; j < kMicro; ++j) {
      const int64_t gi = row0 + ty * kMicro + i;
      const int64_t gj = col0 + tx * kMicro + j;
      T v = acc[i][j];
      if constexpr (KERNEL != static_cast<int>(KernelKind::Linear)) {
        T s = DIRECT ? v : fma_(T(-2), v, sqi[i] + sqj[j]);
        // Written so that NaN propagates as in torch's clamp_min; the diagonal is exactly 0 as in
        // the contract even though sq and <a, a> round differently.
        s = s < T(0) ? T(0) : s;
        if (gi == gj) s = T(0);
        if constexpr (KERNEL == static_cast<int>(KernelKind::Laplace)) s = sqrt_(s);
        v = exp_(-a.gamma * s);
      }
      if constexpr (MODE == Mode::Centered) v = (v - (ri[i] + rj[j])) + tk;
      Cs[(ty * kMicro + i) * kCd + tx * kMicro + j] = (gi < row_end && gj < n) ? v : T(0);
    }
  }
  __syncthreads();

  if constexpr (MODE != Mode::RowSums) {
    T* const outk = a.out + k * a.rows * n;
    for (int e = tid; e < kTile * kTile; e += kThreads) {
      const int lrow = e / kTile;
      const int lcol = e % kTile;
      const int64_t gi = row0 + lrow;
      const int64_t gj = col0 + lcol;
      if (gi < row_end && gj < n) outk[(gi - a.row_start) * n + gj] = Cs[lrow * kCd + lcol];
    }
    if (MODE == Mode::StoreRowSums && !diag) {
      // Mirror tile K[J, I]: output row col0 + lrow, output column row0 + lcol (row_start is 0 here).
      for (int e = tid; e < kTile * kTile; e += kThreads) {
        const int lrow = e / kTile;
        const int lcol = e % kTile;
        const int64_t gi = col0 + lrow;
        const int64_t gj = row0 + lcol;
        if (gi < n && gj < n) outk[gi * n + gj] = Cs[lcol * kCd + lrow];
      }
    }
  }

  if constexpr (MODE != Mode::Centered) {
    // kSumSplit consecutive lanes share one line of the staged tile, each summing a contiguous part.
    constexpr int kPart = kTile / kSumSplit;
    const int line = tid / kSumSplit;
    const int part = tid % kSumSplit;
    T s = T(0);
#pragma unroll
    for (int m = 0; m < kPart; ++m) s += Cs[line * kCd + part * kPart + m];
#pragma unroll
    for (int off = 1; off < kSumSplit; off *= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (part == 0 && row0 + line < n) atomicAdd(&a.rowsum[k * n + row0 + line], s);
    // A diagonal tile already holds both halves of its block, so its rows are summed once only.
    if (!diag) {
      T c = T(0);
#pragma unroll
      for (int m = 0; m < kPart; ++m) c += Cs[(part * kPart + m) * kCd + line];
#pragma unroll
      for (int off = 1; off < kSumSplit; off *= 2) c += __shfl_xor_sync(0xffffffffu, c, off);
      if (part == 0 && col0 + line < n) atomicAdd(&a.rowsum[k * n + col0 + line], c);
    }
  }
}

// out[k, i, j] = (out[k, i, j] - (r[k, i] + r[k, j])) + t[k] in place; one block per (k, i) row so
// that every access is coalesced.
template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    center_kernel(T* __restrict__ out, const T* __restrict__ r, const T* __restrict__ t, int64_t n, int64_t C) {
  const int64_t total = C * n;
  for (int64_t row = blockIdx.x; row < total; row += gridDim.x) {
    const int64_t k = row / n;
    const T ri = r[row];
    const T tk = t[k];
    const T* const rk = r + k * n;
    T* const o = out + row * n;
    for (int64_t j = threadIdx.x; j < n; j += kRowThreads) o[j] = (o[j] - (ri + rk[j])) + tk;
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

unsigned int row_grid(int64_t rows, int64_t rows_per_block) {
  return static_cast<unsigned int>(std::min<int64_t>(ceil_div(rows, rows_per_block), int64_t{1} << 20));
}

int64_t triangle_tiles(int64_t n) {
  const int64_t t = ceil_div(n, kTile);
  const int64_t tiles = t * (t + 1) / 2;
  TORCH_CHECK(tiles <= INT_MAX, "apib: x has too many samples for the CUDA kernels, n = ", n);
  return tiles;
}

template <typename T, int KERNEL, Mode MODE, bool DIRECT = false>
void launch_gram_kernel(GramArgs<T> a, int64_t tiles, int64_t C) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t c0 = 0; c0 < C; c0 += kMaxGridY) {
    a.c0 = c0;
    const dim3 grid(static_cast<unsigned int>(tiles), static_cast<unsigned int>(std::min(kMaxGridY, C - c0)));
    gram_tile_kernel<T, KERNEL, MODE, DIRECT><<<grid, kThreads, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

bool use_direct(KernelKind kind, int64_t D) { return kind != KernelKind::Linear && D <= kDirectMaxD; }

template <typename T, Mode MODE>
void launch_gram(KernelKind kind, const GramArgs<T>& a, int64_t tiles, int64_t C) {
  if (use_direct(kind, a.D)) {
    if (kind == KernelKind::Gaussian) {
      launch_gram_kernel<T, static_cast<int>(KernelKind::Gaussian), MODE, true>(a, tiles, C);
    } else {
      launch_gram_kernel<T, static_cast<int>(KernelKind::Laplace), MODE, true>(a, tiles, C);
    }
    return;
  }
  switch (kind) {
    case KernelKind::Linear:
      launch_gram_kernel<T, static_cast<int>(KernelKind::Linear), MODE>(a, tiles, C);
      break;
    case KernelKind::Gaussian:
      launch_gram_kernel<T, static_cast<int>(KernelKind::Gaussian), MODE>(a, tiles, C);
      break;
    case KernelKind::Laplace:
      launch_gram_kernel<T, static_cast<int>(KernelKind::Laplace), MODE>(a, tiles, C);
      break;
  }
}

// Per-call inputs of the Gram kernel: feature means and, for distance kernels, squared norms.
struct Features {
  at::Tensor mean;  // (C, D)
  at::Tensor sq;    // (C, n), undefined for the linear kernel and for explicit differences
};

Features prepare_features(const at::Tensor& x, KernelKind kind) {
  const int64_t n = x.size(0), C = x.size(1), D = x.size(2);
  Features f;
  f.mean = x.mean(0).contiguous();
  if (kind != KernelKind::Linear && !use_direct(kind, D)) {
    f.sq = at::empty({C, n}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "apib_sqnorm_cuda", [&] {
      sqnorm_kernel<scalar_t><<<row_grid(C * n, kRowThreads / 32), kRowThreads, 0,
                                c10::cuda::getCurrentCUDAStream()>>>(
          x.const_data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.stride(2), f.mean.const_data_ptr<scalar_t>(),
          n, C, D, f.sq.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return f;
}

template <typename T>
GramArgs<T> gram_args(const at::Tensor& x, const Features& f, double gamma) {
  GramArgs<T> a{};
  a.x = x.const_data_ptr<T>();
  a.s0 = x.stride(0);
  a.s1 = x.stride(1);
  a.s2 = x.stride(2);
  a.mean = f.mean.const_data_ptr<T>();
  a.sq = f.sq.defined() ? f.sq.const_data_ptr<T>() : nullptr;
  a.n = x.size(0);
  a.D = x.size(2);
  a.row_start = 0;
  a.rows = a.n;
  a.gamma = static_cast<T>(gamma);
  return a;
}

void check_cuda(const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "apib: x must be a CUDA tensor for the CUDA kernels, got device ", x.device());
}

at::Tensor kernel_row_means_cuda(const at::Tensor& x, int64_t kernel, double gamma) {
  const KernelKind kind = check_args(x, kernel, gamma);
  check_cuda(x);
  at::globalContext().alertNotDeterministic("apib::kernel_row_means (CUDA; float atomics)");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(0), C = x.size(1);
  const int64_t tiles = triangle_tiles(n);
  const Features f = prepare_features(x, kind);
  at::Tensor rowsum = at::zeros({C, n}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "apib_kernel_row_means_cuda", [&] {
    GramArgs<scalar_t> a = gram_args<scalar_t>(x, f, gamma);
    a.rowsum = rowsum.mutable_data_ptr<scalar_t>();
    launch_gram<scalar_t, Mode::RowSums>(kind, a, tiles, C);
  });
  return rowsum.div_(static_cast<double>(n));
}

at::Tensor centered_gram_cuda(const at::Tensor& x, int64_t kernel, double gamma, int64_t row_start,
                              int64_t row_stop, const std::optional<at::Tensor>& row_means) {
  const KernelKind kind = check_args(x, kernel, gamma);
  check_cuda(x);
  const int64_t rows = check_rows(x, row_start, row_stop, row_means);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(0), C = x.size(1);
  at::Tensor out = at::empty({C, rows, n}, x.options());

  if (row_means.has_value()) {
    const int64_t col_tiles = ceil_div(n, kTile);
    const int64_t tiles = ceil_div(rows, kTile) * col_tiles;
    TORCH_CHECK(tiles <= INT_MAX, "apib: row block too large for the CUDA kernels, rows = ", rows, ", n = ", n);
    const at::Tensor r = row_means->contiguous();
    const at::Tensor t = r.mean(1);
    const Features f = prepare_features(x, kind);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "apib_centered_gram_rows_cuda", [&] {
      GramArgs<scalar_t> a = gram_args<scalar_t>(x, f, gamma);
      a.r = r.const_data_ptr<scalar_t>();
      a.t = t.const_data_ptr<scalar_t>();
      a.out = out.mutable_data_ptr<scalar_t>();
      a.row_start = row_start;
      a.rows = rows;
      a.col_tiles = col_tiles;
      launch_gram<scalar_t, Mode::Centered>(kind, a, tiles, C);
    });
    return out;
  }

  at::globalContext().alertNotDeterministic("apib::centered_gram (CUDA, full range; float atomics)");
  const int64_t tiles = triangle_tiles(n);
  const Features f = prepare_features(x, kind);
  at::Tensor r = at::zeros({C, n}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "apib_centered_gram_cuda", [&] {
    GramArgs<scalar_t> a = gram_args<scalar_t>(x, f, gamma);
    a.out = out.mutable_data_ptr<scalar_t>();
    a.rowsum = r.mutable_data_ptr<scalar_t>();
    launch_gram<scalar_t, Mode::StoreRowSums>(kind, a, tiles, C);
  });
  r.div_(static_cast<double>(n));
  const at::Tensor t = r.mean(1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "apib_center_cuda", [&] {
    center_kernel<scalar_t><<<row_grid(C * n, 1), kRowThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        out.mutable_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), n, C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace apib

TORCH_LIBRARY_IMPL(apib, CUDA, m) {
  m.impl("kernel_row_means", &apib::kernel_row_means_cuda);
  m.impl("centered_gram", &apib::centered_gram_cuda);
}
