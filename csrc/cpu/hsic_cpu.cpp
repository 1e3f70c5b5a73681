// CPU implementation of apib::kernel_row_means and apib::centered_gram (contract in common.h).
//
// Per channel k: one pass over x[:, k, :] takes the feature means; then, panel by panel (n rows x
// kDBlock features), the mean-removed features are copied into a contiguous, zero-padded slot
// that stays in L2 while the Gram pass over it runs, whatever x's strides are (the copy costs
// O(nD) next to the Gram's O(n^2 D)). The Gram is built from register tiles of row-by-row dot
// products; the full-range ops compute only its upper triangle (half the FLOPs) and the kernel
// function on it, then mirror, so the kernel, row means and centering all run while the channel's
// n x n block is still in cache. For D <= kDirectMaxD the distances come from explicit differences
// instead, as the contract asks.
//
// Bit-for-bit consistency across paths: every Gram entry is accumulated the same way wherever it
// is computed (same lanes, same horizontal-sum tree, same panel order, a*b == b*a), every kernel
// value goes through the same vector code, tails included, and every mean uses the same sum.
// So kernel_row_means + row-block centered_gram reproduce the full-range centered_gram exactly,
// and S_ii is exactly 0 because ||x_i||^2 is taken from the Gram diagonal itself.
//
// Parallelism: over channels (each thread claims the next one when done) when there are enough of
// them, otherwise within each channel so that a few large channels still use every thread: the
// threads split the panels into contiguous segments, each thread sums its segment's Gram contribution
// into its own buffer, and the buffers are then added in segment order, so that every entry is still
// summed the same way on every path (one barrier per pass instead of two per panel). Only when n x n
// buffers would not fit kPartialBytes do the threads share each panel's pass instead (over features,
// row tiles and rows).

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>

#include "common.h"

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define APIB_HAVE_AVX2 1
#include <immintrin.h>
#define APIB_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace apib {
namespace {

// Features are padded with zeros to a multiple of kPad, the widest vector (8 floats), so the
// micro-kernels never see a feature remainder; zeros change no dot product.
constexpr int64_t kPad = 8;
// A panel row is 2 KiB: a 4-row tile's rows stay in L1 while a column block streams from L2.
template <typename T>
constexpr int64_t kDBlock = 2048 / sizeof(T);
// Gram columns per block: kColBlock panel rows (192 KiB) stay resident in L2.
// A multiple of kTileCols keeps column tiles aligned on a global grid.
constexpr int64_t kTileRows = 4;
constexpr int64_t kTileCols = 3;
constexpr int64_t kColBlock = 96;
// Rows per parallel work item of the mirror pass (a multiple of every vector width).
constexpr int64_t kMirrorBlock = 32;
// Largest n for the channel-lane path of the direct kernels (a group's n x n vectors: 32 KiB).
constexpr int64_t kLaneMaxN = 32;
// Memory for the per-segment Gram buffers of one channel (see Parallelism above).
constexpr int64_t kPartialBytes = int64_t{64} << 20;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// What the channel-lane path needs of x (n, C, D) and the output (C, n, n).
template <typename T>
struct LaneGroup {
  const T* x;
  int64_t s0, s1, s2;
  int64_t n, D;
  bool laplace;
  T neg_gamma;
  T* out;
};

// Per-ISA primitives. All take contiguous pointers; `len` in dot tiles is a multiple of kPad.
template <typename T>
struct Ops {
  // out[r * ldo + c] (+)= <a + r * ld, b + c * ld> over len features, for an R x CC tile; the
  // first panel assigns, later ones accumulate.
  using TileFn = void (*)(const T* a, const T* b, int64_t ld, int64_t len, T* out, int64_t ldo, bool accumulate);
  TileFn tile[kTileRows][kTileCols];
  // k[j] = exp(-gamma * S_j) (laplace: sqrt(S_j)) with S_j = max(sqi + sq[j] - 2 g[j], 0); k may alias g.
  void (*kernel_row)(T* k, const T* g, const T* sq, T sqi, int64_t len, bool laplace, T neg_gamma);
  // Same kernel with S_j = sum_{d < D} (xi[d] - xt[d * ld + j])^2 (the D <= kDirectMaxD path); xt rows
  // must be readable up to a whole vector past len.
  void (*direct_row)(T* k, const T* xi, const T* xt, int64_t ld, int64_t D, int64_t len, bool laplace,
                     T neg_gamma);
  T (*sum)(const T* v, int64_t len);
  // out[j] = ((k[j] - ri) - r[j]) + t; out may alias k.
  void (*center_row)(T* out, const T* k, const T* r, T ri, T t, int64_t len);
  // out[j] = a[j] - b[j] (mean removal while packing).
  void (*sub_row)(T* out, const T* a, const T* b, int64_t len);
  // K[j, i] = K[i, j] for i in [i0, i1), j > i: the lower triangle of the n x n K from the upper.
  void (*mirror)(T* K, int64_t n, int64_t i0, int64_t i1);
  // Full-range centered direct Grams (n <= kLaneMaxN) of channels [k0, k0 + m), m <= lanes, one per
  // vector lane, into out (C x n x n); null where the ISA has none (see LaneGroup).
  void (*lanes)(const LaneGroup<T>& g, int64_t k0, int64_t m, void* scratch);
  int64_t lane_count;
};

// ---------------------------------------------------------------------------------------------
// Portable fallback.

template <typename T, int R, int CC>
void dot_tile_generic(const T* a, const T* b, int64_t ld, int64_t len, T* out, int64_t ldo, bool accumulate) {
  constexpr int L = kPad;
  T acc[R * CC][L] = {};
  for (int64_t d = 0; d < len; d += L) {
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < CC; ++c) {
        for (int l = 0; l < L; ++l) {
          acc[r * CC + c][l] += a[r * ld + d + l] * b[c * ld + d + l];
        }
      }
    }
  }
  for (int q = 0; q < R * CC; ++q) {
    T s = 0;
    for (int l = 0; l < L; ++l) s += acc[q][l];
    T& o = out[q / CC * ldo + q % CC];
    o = accumulate ? o + s : s;
  }
}

template <typename T>
void kernel_row_generic(T* k, const T* g, const T* sq, T sqi, int64_t len, bool laplace, T neg_gamma) {
  for (int64_t j = 0; j < len; ++j) {
    // std::max(s, 0) keeps a NaN s, as clamp_min does.
    T s = std::max((sqi + sq[j]) - 2 * g[j], T(0));
    if (laplace) s = std::sqrt(s);
    k[j] = std::exp(s * neg_gamma);
  }
}

template <typename T>
void direct_row_generic(T* k, const T* xi, const T* xt, int64_t ld, int64_t D, int64_t len, bool laplace,
                        T neg_gamma) {
  for (int64_t j = 0; j < len; ++j) {
    T s = 0;
    for (int64_t d = 0; d < D; ++d) {
      const T diff = xi[d] - xt[d * ld + j];
      s += diff * diff;
    }
    if (laplace) s = std::sqrt(s);
    k[j] = std::exp(s * neg_gamma);
  }
}

template <typename T>
T sum_generic(const T* v, int64_t len) {
  constexpr int L = kPad;
  T acc[L] = {};
  int64_t j = 0;
  for (; j + L <= len; j += L) {
    for (int l = 0; l < L; ++l) acc[l] += v[j + l];
  }
  for (int l = 0; j < len; ++j, ++l) acc[l] += v[j];
  T s = 0;
  for (int l = 0; l < L; ++l) s += acc[l];
  return s;
}

template <typename T>
void center_row_generic(T* out, const T* k, const T* r, T ri, T t, int64_t len) {
  for (int64_t j = 0; j < len; ++j) out[j] = ((k[j] - ri) - r[j]) + t;
}

template <typename T>
void sub_row_generic(T* out, const T* a, const T* b, int64_t len) {
  for (int64_t j = 0; j < len; ++j) out[j] = a[j] - b[j];
}

template <typename T>
void mirror_generic(T* K, int64_t n, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t j = i + 1; j < n; ++j) K[j * n + i] = K[i * n + j];
  }
}

template <typename T>
Ops<T> generic_ops() {
  Ops<T> ops;
  ops.tile[0][0] = dot_tile_generic<T, 1, 1>;
  ops.tile[0][1] = dot_tile_generic<T, 1, 2>;
  ops.tile[0][2] = dot_tile_generic<T, 1, 3>;
  ops.tile[1][0] = dot_tile_generic<T, 2, 1>;
  ops.tile[1][1] = dot_tile_generic<T, 2, 2>;
  ops.tile[1][2] = dot_tile_generic<T, 2, 3>;
  ops.tile[2][0] = dot_tile_generic<T, 3, 1>;
  ops.tile[2][1] = dot_tile_generic<T, 3, 2>;
  ops.tile[2][2] = dot_tile_generic<T, 3, 3>;
  ops.tile[3][0] = dot_tile_generic<T, 4, 1>;
  ops.tile[3][1] = dot_tile_generic<T, 4, 2>;
  ops.tile[3][2] = dot_tile_generic<T, 4, 3>;
  ops.kernel_row = kernel_row_generic<T>;
  ops.direct_row = direct_row_generic<T>;
  ops.sum = sum_generic<T>;
  ops.center_row = center_row_generic<T>;
  ops.sub_row = sub_row_generic<T>;
  ops.mirror = mirror_generic<T>;
  ops.lanes = nullptr;
  ops.lane_count = 0;
  return ops;
}

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA, selected at run time (the build targets baseline x86-64).

#ifdef APIB_HAVE_AVX2

template <typename T>
struct Vec;

template <>
struct Vec<float> {
  using V = __m256;
  static constexpr int W = 8;
  static APIB_AVX2 inline V load(const float* p) { return _mm256_loadu_ps(p); }
  static APIB_AVX2 inline void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  // Lanes [0, m) of a vector, 0 < m < W, for masked loads (masked-off lanes read as 0 and are not
  // touched in memory). Tails are stored lane by lane instead: vmaskmov stores are slow on AMD.
  static APIB_AVX2 inline __m256i tail_mask(int64_t m) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(m)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static APIB_AVX2 inline V load_mask(const float* p, __m256i m) { return _mm256_maskload_ps(p, m); }
  static APIB_AVX2 inline V set1(float v) { return _mm256_set1_ps(v); }
  static APIB_AVX2 inline V zero() { return _mm256_setzero_ps(); }
  static APIB_AVX2 inline V add(V a, V b) { return _mm256_add_ps(a, b); }
  static APIB_AVX2 inline V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static APIB_AVX2 inline V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static APIB_AVX2 inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static APIB_AVX2 inline V div(V a, V b) { return _mm256_div_ps(a, b); }
  // max(s, 0) that keeps NaN: maxps returns its second operand when either is NaN.
  static APIB_AVX2 inline V clamp0(V s) { return _mm256_max_ps(_mm256_setzero_ps(), s); }
  static APIB_AVX2 inline V sqrt(V a) { return _mm256_sqrt_ps(a); }

  // out[q] = sum of v_q's lanes, the same tree for every q: ((0+1)+(2+3)) + ((4+5)+(6+7)).
  static APIB_AVX2 inline void hsum4(V v0, V v1, V v2, V v3, float* out) {
    const V t = _mm256_hadd_ps(_mm256_hadd_ps(v0, v1), _mm256_hadd_ps(v2, v3));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
  }
  // hsum4's tree across vectors: a[q] in the place of lane q.
  static APIB_AVX2 inline V tree(const V* a) {
    return add(add(add(a[0], a[1]), add(a[2], a[3])), add(add(a[4], a[5]), add(a[6], a[7])));
  }

  // In-register transpose of the 8 x 8 block r.
  static APIB_AVX2 inline void transpose(V* r) {
    const V t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const V t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const V t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const V t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const V u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const V u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const V u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const V u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
  }

  // exp(x) for x <= 0 (Cephes expf polynomial, ~1 ulp). Below ln(FLT_MIN) it returns
  // ~FLT_MIN instead of a subnormal or 0: an absolute error under 1.2e-38. NaN propagates.
  static APIB_AVX2 inline V exp_nonpos(V x) {
    x = _mm256_min_ps(_mm256_setzero_ps(), x);
    x = _mm256_max_ps(_mm256_set1_ps(-87.33654f), x);
    const V fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    const V z = _mm256_mul_ps(x, x);
    V y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, z, _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  }
};

template <>
struct Vec<double> {
  using V = __m256d;
  static constexpr int W = 4;
  static APIB_AVX2 inline V load(const double* p) { return _mm256_loadu_pd(p); }
  static APIB_AVX2 inline void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static APIB_AVX2 inline __m256i tail_mask(int64_t m) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(m), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static APIB_AVX2 inline V load_mask(const double* p, __m256i m) { return _mm256_maskload_pd(p, m); }
  static APIB_AVX2 inline V set1(double v) { return _mm256_set1_pd(v); }
  static APIB_AVX2 inline V zero() { return _mm256_setzero_pd(); }
  static APIB_AVX2 inline V add(V a, V b) { return _mm256_add_pd(a, b); }
  static APIB_AVX2 inline V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  static APIB_AVX2 inline V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static APIB_AVX2 inline V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static APIB_AVX2 inline V div(V a, V b) { return _mm256_div_pd(a, b); }
  static APIB_AVX2 inline V clamp0(V s) { return _mm256_max_pd(_mm256_setzero_pd(), s); }
  static APIB_AVX2 inline V sqrt(V a) { return _mm256_sqrt_pd(a); }

  // out[q] = (lane0 + lane1) + (lane2 + lane3) of v_q, the same tree for every q.
  static APIB_AVX2 inline void hsum4(V v0, V v1, V v2, V v3, double* out) {
    const V t0 = _mm256_hadd_pd(v0, v1);
    const V t1 = _mm256_hadd_pd(v2, v3);
    _mm256_storeu_pd(out, _mm256_add_pd(_mm256_permute2f128_pd(t0, t1, 0x20), _mm256_permute2f128_pd(t0, t1, 0x31)));
  }
  // hsum4's tree across vectors: a[q] in the place of lane q.
  static APIB_AVX2 inline V tree(const V* a) { return add(add(a[0], a[1]), add(a[2], a[3])); }

  // In-register transpose of the 4 x 4 block r.
  static APIB_AVX2 inline void transpose(V* r) {
    const V t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    const V t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
  }

  // exp(x) for x <= 0 (Cephes exp rational approximation, ~1 ulp). Below ln(DBL_MIN) it returns
  // ~DBL_MIN instead of a subnormal or 0: an absolute error under 2.3e-308. NaN propagates.
  static APIB_AVX2 inline V exp_nonpos(V x) {
    x = _mm256_min_pd(_mm256_setzero_pd(), x);
    x = _mm256_max_pd(_mm256_set1_pd(-708.3964185322641), x);
    const V fx = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.4426950408889634073599)),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_pd(fx, _mm256_set1_pd(6.93145751953125e-1), x);
    x = _mm256_fnmadd_pd(fx, _mm256_set1_pd(1.42860682030941723212e-6), x);
    const V xx = _mm256_mul_pd(x, x);
    V p = _mm256_set1_pd(1.26177193074810590878e-4);
    p = _mm256_fmadd_pd(p, xx, _mm256_set1_pd(3.02994407707441961300e-2));
    p = _mm256_fmadd_pd(p, xx, _mm256_set1_pd(9.99999999999999999910e-1));
    p = _mm256_mul_pd(p, x);
    V q = _mm256_set1_pd(3.00198505138664455042e-6);
    q = _mm256_fmadd_pd(q, xx, _mm256_set1_pd(2.52448340349684104192e-3));
    q = _mm256_fmadd_pd(q, xx, _mm256_set1_pd(2.27265548208155028766e-1));
    q = _mm256_fmadd_pd(q, xx, _mm256_set1_pd(2.00000000000000000009e0));
    V y = _mm256_div_pd(p, _mm256_sub_pd(q, p));
    y = _mm256_fmadd_pd(y, _mm256_set1_pd(2.0), _mm256_set1_pd(1.0));
    const __m256i n = _mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(fx));
    const __m256i e = _mm256_slli_epi64(_mm256_add_epi64(n, _mm256_set1_epi64x(1023)), 52);
    return _mm256_mul_pd(y, _mm256_castsi256_pd(e));
  }
};

template <typename T, int R, int CC>
APIB_AVX2 void dot_tile_avx2(const T* a, const T* b, int64_t ld, int64_t len, T* out, int64_t ldo, bool accumulate) {
  using X = Vec<T>;
  using V = typename X::V;
  constexpr int Q = R * CC;
  constexpr int QP = (Q + 3) / 4 * 4;
  V acc[QP];
#pragma GCC unroll 16
  for (int q = 0; q < QP; ++q) acc[q] = X::zero();
  for (int64_t d = 0; d < len; d += X::W) {
    V bv[CC];
#pragma GCC unroll 4
    for (int c = 0; c < CC; ++c) bv[c] = X::load(b + c * ld + d);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const V av = X::load(a + r * ld + d);
#pragma GCC unroll 4
      for (int c = 0; c < CC; ++c) acc[r * CC + c] = X::fma(av, bv[c], acc[r * CC + c]);
    }
  }
  T sums[QP];
#pragma GCC unroll 4
  for (int q = 0; q < QP; q += 4) X::hsum4(acc[q], acc[q + 1], acc[q + 2], acc[q + 3], sums + q);
  if (accumulate) {
#pragma GCC unroll 16
    for (int q = 0; q < Q; ++q) out[q / CC * ldo + q % CC] += sums[q];
  } else {
#pragma GCC unroll 16
    for (int q = 0; q < Q; ++q) out[q / CC * ldo + q % CC] = sums[q];
  }
}

template <typename T>
APIB_AVX2 inline void store_tail(T* p, int64_t m, typename Vec<T>::V v) {
  T b[Vec<T>::W];
  Vec<T>::store(b, v);
  for (int64_t l = 0; l < m; ++l) p[l] = b[l];
}

template <typename T>
APIB_AVX2 inline typename Vec<T>::V kernel_eval(typename Vec<T>::V g, typename Vec<T>::V sqj, typename Vec<T>::V sqi,
                                                 typename Vec<T>::V neg_gamma, bool laplace) {
  using X = Vec<T>;
  typename X::V s = X::clamp0(X::sub(X::add(sqi, sqj), X::add(g, g)));
  if (laplace) s = X::sqrt(s);
  return X::exp_nonpos(X::mul(s, neg_gamma));
}

template <typename T>
APIB_AVX2 void kernel_row_avx2(T* k, const T* g, const T* sq, T sqi, int64_t len, bool laplace, T neg_gamma) {
  using X = Vec<T>;
  using V = typename X::V;
  constexpr int W = X::W;
  const V vsqi = X::set1(sqi);
  const V vng = X::set1(neg_gamma);
  int64_t j = 0;
  for (; j + W <= len; j += W) X::store(k + j, kernel_eval<T>(X::load(g + j), X::load(sq + j), vsqi, vng, laplace));
  if (j < len) {
    // The tail goes through the same vector code so that every entry is computed identically.
    const auto m = X::tail_mask(len - j);
    store_tail<T>(k + j, len - j, kernel_eval<T>(X::load_mask(g + j, m), X::load_mask(sq + j, m), vsqi, vng, laplace));
  }
}

template <typename T>
APIB_AVX2 void direct_row_avx2(T* k, const T* xi, const T* xt, int64_t ld, int64_t D, int64_t len, bool laplace,
                               T neg_gamma) {
  using X = Vec<T>;
  using V = typename X::V;
  constexpr int W = X::W;
  const V vng = X::set1(neg_gamma);
  V xv[kDirectMaxD];
  for (int64_t d = 0; d < D; ++d) xv[d] = X::set1(xi[d]);
  for (int64_t j = 0; j < len; j += W) {
    V s = X::zero();
    for (int64_t d = 0; d < D; ++d) {
      const V diff = X::sub(xv[d], X::load(xt + d * ld + j));
      s = X::fma(diff, diff, s);
    }
    if (laplace) s = X::sqrt(s);
    const V kv = X::exp_nonpos(X::mul(s, vng));
    if (j + W <= len) {
      X::store(k + j, kv);
    } else {
      store_tail<T>(k + j, len - j, kv);
    }
  }
}

template <typename T>
APIB_AVX2 T sum_avx2(const T* v, int64_t len) {
  using X = Vec<T>;
  using V = typename X::V;
  constexpr int W = X::W;
  V acc = X::zero();
  int64_t j = 0;
  for (; j + W <= len; j += W) acc = X::add(acc, X::load(v + j));
  if (j < len) acc = X::add(acc, X::load_mask(v + j, X::tail_mask(len - j)));
  T s[4];
  X::hsum4(acc, X::zero(), X::zero(), X::zero(), s);
  return s[0];
}

template <typename T>
APIB_AVX2 void center_row_avx2(T* out, const T* k, const T* r, T ri, T t, int64_t len) {
  using X = Vec<T>;
  using V = typename X::V;
  constexpr int W = X::W;
  const V vri = X::set1(ri);
  const V vt = X::set1(t);
  int64_t j = 0;
  for (; j + W <= len; j += W) {
    X::store(out + j, X::add(X::sub(X::sub(X::load(k + j), vri), X::load(r + j)), vt));
  }
  for (; j < len; ++j) out[j] = ((k[j] - ri) - r[j]) + t;
}

template <typename T>
APIB_AVX2 void sub_row_avx2(T* out, const T* a, const T* b, int64_t len) {
  using X = Vec<T>;
  constexpr int W = X::W;
  int64_t j = 0;
  for (; j + 4 * W <= len; j += 4 * W) {
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) X::store(out + j + u * W, X::sub(X::load(a + j + u * W), X::load(b + j + u * W)));
  }
  for (; j + W <= len; j += W) X::store(out + j, X::sub(X::load(a + j), X::load(b + j)));
  for (; j < len; ++j) out[j] = a[j] - b[j];
}

// Whole W x W blocks right of the diagonal are transposed in registers; diagonal blocks and the
// ragged edges (n not a multiple of W) go element by element. i0 must be a multiple of W.
template <typename T>
APIB_AVX2 void mirror_avx2(T* K, int64_t n, int64_t i0, int64_t i1) {
  using X = Vec<T>;
  constexpr int W = X::W;
  for (int64_t ib = i0; ib < i1; ib += W) {
    const int64_t ie = std::min(ib + W, i1);
    int64_t jb = ib + W;
    if (ie - ib == W) {
      for (; jb + W <= n; jb += W) {
        typename X::V r[W];
        for (int q = 0; q < W; ++q) r[q] = X::load(K + (ib + q) * n + jb);
        X::transpose(r);
        for (int q = 0; q < W; ++q) X::store(K + (jb + q) * n + ib, r[q]);
      }
    }
    for (int64_t i = ib; i < ie; ++i) {
      for (int64_t j = i + 1; j < std::min(ib + W, n); ++j) K[j * n + i] = K[i * n + j];
      for (int64_t j = jb; j < n; ++j) K[j * n + i] = K[i * n + j];
    }
  }
}

// Channel-lane path: the full-range centered Grams of up to W channels of a tiny direct problem
// (D <= kDirectMaxD, n <= kLaneMaxN, pyHSICLasso-style feature selection in blocks of ~20 samples),
// one channel per vector lane, so that the per-row and per-channel overheads of the path above (about
// 1.5 us per 20 x 20 Gram) are paid once per W channels. Each lane performs exactly the operations the
// per-channel path performs on its channel, in the same order and with the same vector primitives
// (means, mean removal, explicit differences, kernel, row sums with sum_avx2's lanes and tree, centering),
// so both give the same bits, and so kernel_row_means + row blocks reproduce this path too.
template <typename T>
APIB_AVX2 void lanes_avx2(const LaneGroup<T>& g, int64_t k0, int64_t m, void* scratch) {
  using X = Vec<T>;
  using V = typename X::V;
  constexpr int W = X::W;
  const int64_t n = g.n, D = g.D;
  V* xs = static_cast<V*>(scratch);  // n x D: mean-removed features
  V* K = xs + n * D;                 // n x n
  V* r = K + n * n;                  // n: row means
  alignas(32) T buf[W] = {};
  // Features, one channel per lane (lanes past m read channel k0, and are never stored).
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t d = 0; d < D; ++d) {
      const T* src = g.x + i * g.s0 + k0 * g.s1 + d * g.s2;
      for (int64_t l = 0; l < W; ++l) buf[l] = src[(l < m ? l : 0) * g.s1];
      xs[i * D + d] = X::load(buf);
    }
  }
  // means(): rows four at a time when features are contiguous, one at a time otherwise.
  const V vn = X::set1(static_cast<T>(n));
  for (int64_t d = 0; d < D; ++d) {
    V mu = X::zero();
    int64_t i = 0;
    if (g.s2 == 1) {
      for (; i + 4 <= n; i += 4) {
        const V* q = xs + i * D + d;
        mu = X::add(mu, X::add(X::add(q[0], q[D]), X::add(q[2 * D], q[3 * D])));
      }
    }
    for (; i < n; ++i) mu = X::add(mu, xs[i * D + d]);
    mu = X::div(mu, vn);
    for (int64_t i2 = 0; i2 < n; ++i2) xs[i2 * D + d] = X::sub(xs[i2 * D + d], mu);
  }
  // direct_row() and kernel_row(): S from explicit differences, K_ii = 1.
  const V vng = X::set1(g.neg_gamma);
  for (int64_t i = 0; i < n; ++i) {
    K[i * n + i] = X::set1(T(1));
    for (int64_t j = i + 1; j < n; ++j) {
      V s = X::zero();
      for (int64_t d = 0; d < D; ++d) {
        const V diff = X::sub(xs[i * D + d], xs[j * D + d]);
        s = X::fma(diff, diff, s);
      }
      if (g.laplace) s = X::sqrt(s);
      K[i * n + j] = K[j * n + i] = X::exp_nonpos(X::mul(s, vng));
    }
  }
  // sum_avx2(): lane l of its accumulator sums entries l, l + W, ... (a zero past the end), then the tree.
  auto sum = [&](const V* v) {
    V acc[W];
    for (int l = 0; l < W; ++l) acc[l] = X::zero();
    for (int64_t j = 0; j < n; j += W) {
      for (int l = 0; l < W; ++l) acc[l] = X::add(acc[l], j + l < n ? v[j + l] : X::zero());
    }
    return X::tree(acc);
  };
  for (int64_t i = 0; i < n; ++i) r[i] = X::div(sum(K + i * n), vn);
  const V t = X::div(sum(r), vn);
  // center_row(), then each W x W block transposed to the channels' rows.
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t jb = 0; jb < n; jb += W) {
      V blk[W];
      for (int l = 0; l < W; ++l) {
        const int64_t j = std::min(jb + l, n - 1);
        blk[l] = X::add(X::sub(X::sub(K[i * n + j], r[i]), r[j]), t);
      }
      X::transpose(blk);
      const int64_t w = std::min<int64_t>(W, n - jb);
      for (int64_t l = 0; l < m; ++l) {
        T* dst = g.out + (k0 + l) * n * n + i * n + jb;
        if (w == W) {
          X::store(dst, blk[l]);
        } else {
          store_tail<T>(dst, w, blk[l]);
        }
      }
    }
  }
}

template <typename T>
Ops<T> avx2_ops() {
  Ops<T> ops;
  ops.tile[0][0] = dot_tile_avx2<T, 1, 1>;
  ops.tile[0][1] = dot_tile_avx2<T, 1, 2>;
  ops.tile[0][2] = dot_tile_avx2<T, 1, 3>;
  ops.tile[1][0] = dot_tile_avx2<T, 2, 1>;
  ops.tile[1][1] = dot_tile_avx2<T, 2, 2>;
  ops.tile[1][2] = dot_tile_avx2<T, 2, 3>;
  ops.tile[2][0] = dot_tile_avx2<T, 3, 1>;
  ops.tile[2][1] = dot_tile_avx2<T, 3, 2>;
  ops.tile[2][2] = dot_tile_avx2<T, 3, 3>;
  ops.tile[3][0] = dot_tile_avx2<T, 4, 1>;
  ops.tile[3][1] = dot_tile_avx2<T, 4, 2>;
  ops.tile[3][2] = dot_tile_avx2<T, 4, 3>;
  ops.kernel_row = kernel_row_avx2<T>;
  ops.direct_row = direct_row_avx2<T>;
  ops.sum = sum_avx2<T>;
  ops.center_row = center_row_avx2<T>;
  ops.sub_row = sub_row_avx2<T>;
  ops.mirror = mirror_avx2<T>;
  ops.lanes = lanes_avx2<T>;
  ops.lane_count = Vec<T>::W;
  return ops;
}

bool cpu_has_avx2_fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

#endif  // APIB_HAVE_AVX2

template <typename T>
const Ops<T>& ops_for_cpu() {
  static const Ops<T> ops = [] {
#ifdef APIB_HAVE_AVX2
    if (cpu_has_avx2_fma()) return avx2_ops<T>();
#endif
    return generic_ops<T>();
  }();
  return ops;
}

// ---------------------------------------------------------------------------------------------
// ISA-independent driver.

// One channel's inputs and its thread's scratch.
template <typename T>
struct Channel {
  const Ops<T>* ops;
  const T* x;  // &x[0, k, 0]
  int64_t s0, s2;
  int64_t n, D, dp;
  KernelKind kind;
  T neg_gamma;
  bool direct;  // S from explicit differences (D <= kDirectMaxD, non-linear kernel)
  T* X;         // packed panels: all of them (n * dp), or one slot (n * kDBlock) reused in turn
  bool all_panels;
  T* mu;        // dp: feature means
  T* sq;        // n: squared norms, the Gram diagonal
  T* xt;        // direct only: D x ldxt transpose of X, zero past n
  int64_t ldxt;
  int64_t nseg;     // feature segments (1: none)
  T* partials;      // segments 1..nseg-1: a Gram buffer (partial_rows x n), then a diagonal (n)
  int64_t partial_rows;
};

// Panel holding features [d0, d0 + w) (d0 a multiple of kDBlock): n rows of width w at panel(c, d0).
template <typename T>
int64_t panel_width(const Channel<T>& c, int64_t d0) {
  return std::min(kDBlock<T>, c.dp - d0);
}

// Reusing one slot keeps the panel being packed and multiplied in L2.
template <typename T>
T* panel(const Channel<T>& c, int64_t d0) {
  return c.all_panels ? c.X + c.n * d0 : c.X;
}

// mu[d] = mean over the samples of x[:, d] for the real features d in [da, db). Reads x in long
// runs (whole rows when features are contiguous), which the hardware prefetchers stream well and
// which leaves the channel in L2/L3 for the panel packing that follows.
template <typename T>
void means(const Channel<T>& c, int64_t da, int64_t db) {
  const int64_t n = c.n;
  db = std::min(db, c.D);
  T* mu = c.mu;
  for (int64_t d = da; d < db; ++d) mu[d] = 0;
  if (c.s2 == 1) {
    // Four rows at a time: four independent streams keep more cache misses in flight.
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
      const T* r0 = c.x + i * c.s0;
      const T *r1 = r0 + c.s0, *r2 = r1 + c.s0, *r3 = r2 + c.s0;
      for (int64_t d = da; d < db; ++d) mu[d] += (r0[d] + r1[d]) + (r2[d] + r3[d]);
    }
    for (; i < n; ++i) {
      const T* src = c.x + i * c.s0;
      for (int64_t d = da; d < db; ++d) mu[d] += src[d];
    }
  } else if (c.s2 <= c.s0) {
    for (int64_t i = 0; i < n; ++i) {
      const T* src = c.x + i * c.s0;
      for (int64_t d = da; d < db; ++d) mu[d] += src[d * c.s2];
    }
  } else {
    for (int64_t d = da; d < db; ++d) {
      const T* src = c.x + d * c.s2;
      T s = 0;
      for (int64_t i = 0; i < n; ++i) s += src[i * c.s0];
      mu[d] = s;
    }
  }
  for (int64_t d = da; d < db; ++d) mu[d] /= static_cast<T>(n);
}

// Mean-removed features [da, db) of panel d0 (within it; zero past D) into the panel's slot.
template <typename T>
void pack(const Channel<T>& c, int64_t d0, int64_t da, int64_t db) {
  const int64_t n = c.n, w = panel_width(c, d0), dl = std::max(da, std::min(db, c.D));
  T* P = panel(c, d0) - d0;
  const T* mu = c.mu;
  if (c.s2 <= c.s0) {
    for (int64_t i = 0; i < n; ++i) {
      const T* src = c.x + i * c.s0;
      T* dst = P + i * w;
      if (c.s2 == 1) {
        c.ops->sub_row(dst + da, src + da, mu + da, dl - da);
      } else {
        for (int64_t d = da; d < dl; ++d) dst[d] = src[d * c.s2] - mu[d];
      }
      for (int64_t d = dl; d < db; ++d) dst[d] = 0;
    }
  } else {
    for (int64_t d = da; d < dl; ++d) {
      const T* src = c.x + d * c.s2;
      for (int64_t i = 0; i < n; ++i) P[i * w + d] = src[i * c.s0] - mu[d];
    }
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t d = dl; d < db; ++d) P[i * w + d] = 0;
    }
  }
}

// Upper triangle (j >= i) of G = X X^T, panel d0's contribution, for the row tiles of pairs [pb, pe)
// of npairs: pair p is row tiles p and ntiles-1-p, which together cost about the same for every p
// (balanced parallel split). Tiles that straddle the diagonal also write some entries below it; the
// mirror pass overwrites those. Panels must come in order: the first assigns (acc false), later ones
// accumulate.
template <typename T>
void gram_upper(const Channel<T>& c, T* G, int64_t d0, int64_t pb, int64_t pe, bool acc) {
  const int64_t n = c.n;
  const int64_t ntiles = ceil_div(n, kTileRows);
  const int64_t w = panel_width(c, d0);
  const T* P = panel(c, d0);
  for (int64_t jb = 0; jb < n; jb += kColBlock) {
    const int64_t je = std::min(n, jb + kColBlock);
    for (int64_t p = pb; p < pe; ++p) {
      for (int64_t tt = 0; tt < 2; ++tt) {
        const int64_t t = tt == 0 ? p : ntiles - 1 - p;
        if (tt == 1 && t == p) break;
        const int64_t i0 = t * kTileRows;
        if (i0 >= je) continue;
        const int64_t R = std::min(kTileRows, n - i0);
        // From the first column tile of this block that reaches the diagonal.
        for (int64_t j0 = i0 <= jb ? jb : jb + (i0 - jb) / kTileCols * kTileCols; j0 < je; j0 += kTileCols) {
          c.ops->tile[R - 1][std::min(kTileCols, je - j0) - 1](P + i0 * w, P + j0 * w, w, w, G + i0 * n + j0, n, acc);
        }
      }
    }
  }
}

// Rows [rs, re) x all columns of G (G row i - rs), panel d0's contribution, for the row tiles
// [tb, te) counted from rs.
template <typename T>
void gram_rows(const Channel<T>& c, T* G, int64_t d0, int64_t rs, int64_t re, int64_t tb, int64_t te, bool acc) {
  const int64_t n = c.n;
  const int64_t w = panel_width(c, d0);
  const T* P = panel(c, d0);
  for (int64_t jb = 0; jb < n; jb += kColBlock) {
    const int64_t je = std::min(n, jb + kColBlock);
    for (int64_t t = tb; t < te; ++t) {
      const int64_t i0 = rs + t * kTileRows;
      const int64_t R = std::min(kTileRows, re - i0);
      T* g = G + (i0 - rs) * n;
      for (int64_t j0 = jb; j0 < je; j0 += kTileCols) {
        c.ops->tile[R - 1][std::min(kTileCols, je - j0) - 1](P + i0 * w, P + j0 * w, w, w, g + j0, n, acc);
      }
    }
  }
}

// sq[j] = G[j, j] for j in [jb, je), panel d0's contribution, accumulated exactly as gram_upper and
// gram_rows accumulate the diagonal.
template <typename T>
void gram_diag(const Channel<T>& c, T* sq, int64_t d0, int64_t jb, int64_t je, bool acc) {
  const int64_t w = panel_width(c, d0);
  const T* P = panel(c, d0);
  for (int64_t j = jb; j < je; ++j) c.ops->tile[0][0](P + j * w, P + j * w, w, w, sq + j, 0, acc);
}

// Feature segments (c.nseg > 1 only within a channel): segment s is panels [np s / nseg, np (s+1) / nseg)
// of np; it is packed into slot s (when panels share one slot) and summed into buffer s, segment 0's
// being the output itself.
template <typename T>
int64_t segment_start(const Channel<T>& c, int64_t s) {
  return ceil_div(c.dp, kDBlock<T>) * s / c.nseg * kDBlock<T>;
}

template <typename T>
T* partial_gram(const Channel<T>& c, int64_t s) {
  return c.partials + (s - 1) * (c.partial_rows + 1) * c.n;
}

template <typename T>
T* partial_diag(const Channel<T>& c, int64_t s) {
  return partial_gram(c, s) + c.partial_rows * c.n;
}

// Calls pass(s, channel with segment s's slot, d0, acc) for every panel d0 of every segment s, in
// panel order within a segment, one thread per segment. With `pack_panels` each panel's feature means
// are taken and the panel packed first: the segment's features are read twice from cache, not from
// memory (a feature's mean is the same sum whichever range it is computed in).
template <typename T, class F>
void over_segments(const Channel<T>& c, bool pack_panels, const F& pass) {
  at::parallel_for(0, c.nseg, 1, [&](int64_t b, int64_t e) {
    for (int64_t s = b; s < e; ++s) {
      Channel<T> cs = c;
      if (!c.all_panels) cs.X = c.X + s * c.n * std::min(c.dp, kDBlock<T>);
      const int64_t start = segment_start(c, s), stop = segment_start(c, s + 1);
      for (int64_t d0 = start; d0 < stop; d0 += kDBlock<T>) {
        if (pack_panels) {
          means(cs, d0, d0 + panel_width(cs, d0));
          pack(cs, d0, d0, d0 + panel_width(cs, d0));
        }
        pass(s, cs, d0, d0 != start);
      }
    }
  });
}

// Adds the segments' Gram buffers to segment 0's (G), in segment order: rows [0, rows), from the
// diagonal on when `upper` (the part the full-range pass uses).
template <typename T>
void add_partial_grams(const Channel<T>& c, T* G, int64_t rows, bool upper) {
  const int64_t n = c.n;
  at::parallel_for(0, rows, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      for (int64_t s = 1; s < c.nseg; ++s) {
        const T* p = partial_gram(c, s) + i * n;
        for (int64_t j = upper ? i : 0; j < n; ++j) G[i * n + j] += p[j];
      }
    }
  });
}

// The same for the squared norms: the segments' diagonals added to c.sq, in segment order.
template <typename T>
void add_partial_diags(const Channel<T>& c) {
  for (int64_t s = 1; s < c.nseg; ++s) {
    const T* p = partial_diag(c, s);
    for (int64_t j = 0; j < c.n; ++j) c.sq[j] += p[j];
  }
}

// Kernel row i, columns [j0, n), into g = &K[i, j0], in place over the Gram row unless direct.
// S_ii = 0 exactly.
template <typename T>
void kernel_row(const Channel<T>& c, T* g, int64_t i, int64_t j0) {
  if (c.kind == KernelKind::Linear) return;
  const bool laplace = c.kind == KernelKind::Laplace;
  if (c.direct) {
    c.ops->direct_row(g, c.X + i * c.dp, c.xt + j0, c.ldxt, c.D, c.n - j0, laplace, c.neg_gamma);
  } else {
    c.ops->kernel_row(g, g, c.sq + j0, c.sq[i], c.n - j0, laplace, c.neg_gamma);
  }
  if (j0 <= i) g[i - j0] = 1;
}

// Transposed features for the direct path; X has a single panel of width dp when D <= kDirectMaxD.
template <typename T>
void transpose_features(const Channel<T>& c) {
  for (int64_t d = 0; d < c.D; ++d) {
    T* row = c.xt + d * c.ldxt;
    for (int64_t j = 0; j < c.n; ++j) row[j] = c.X[j * c.dp + d];
    for (int64_t j = c.n; j < c.ldxt; ++j) row[j] = 0;
  }
}

// Runs f over [0, count) in chunks, in parallel or in the caller's thread.
template <class F>
void run(bool par, int64_t count, int64_t grain, const F& f) {
  if (count <= 0) return;
  if (par) {
    at::parallel_for(0, count, grain, f);
  } else {
    f(0, count);
  }
}

template <typename T>
void compute_means(const Channel<T>& c, bool par) {
  run(par, c.D, 64, [&](int64_t b, int64_t e) { means(c, b, e); });
}

template <typename T>
void pack_panel(const Channel<T>& c, int64_t d0, bool par) {
  run(par, panel_width(c, d0), 64, [&](int64_t b, int64_t e) { pack(c, d0, d0 + b, d0 + e); });
}

// Direct path setup: pack the single panel and transpose it.
template <typename T>
void prepare_direct(const Channel<T>& c, bool par) {
  compute_means(c, par);
  pack_panel(c, 0, par);
  transpose_features(c);
}

// Packs every panel and computes the squared norms: the setup for several row blocks of one channel.
template <typename T>
void prepare_all(const Channel<T>& c, bool par) {
  if (c.direct) {
    prepare_direct(c, par);
    return;
  }
  const bool diag = c.kind != KernelKind::Linear;
  if (c.nseg > 1) {
    over_segments(c, true, [&](int64_t s, const Channel<T>& cs, int64_t d0, bool acc) {
      if (diag) gram_diag(cs, s == 0 ? c.sq : partial_diag(c, s), d0, 0, c.n, acc);
    });
    if (diag) add_partial_diags(c);
    return;
  }
  compute_means(c, par);
  for (int64_t d0 = 0; d0 < c.dp; d0 += kDBlock<T>) {
    pack_panel(c, d0, par);
    if (diag) run(par, c.n, 64, [&](int64_t b, int64_t e) { gram_diag(c, c.sq, d0, b, e, d0 != 0); });
  }
}

// Full n x n kernel matrix of one channel into K (upper triangle computed, lower mirrored), its row
// means into r, and, if center, K centered in place. Each panel is packed right before its Gram
// pass, which then reads it from L2.
template <typename T>
void full_channel(const Channel<T>& c, T* K, T* r, bool center, bool par) {
  const int64_t n = c.n;
  if (c.direct) {
    prepare_direct(c, par);
  } else {
    const int64_t npairs = ceil_div(ceil_div(n, kTileRows), 2);
    if (c.nseg > 1) {
      over_segments(c, true, [&](int64_t s, const Channel<T>& cs, int64_t d0, bool acc) {
        gram_upper(cs, s == 0 ? K : partial_gram(c, s), d0, 0, npairs, acc);
      });
      add_partial_grams(c, K, n, true);
    } else {
      compute_means(c, par);
      for (int64_t d0 = 0; d0 < c.dp; d0 += kDBlock<T>) {
        pack_panel(c, d0, par);
        run(par, npairs, 1, [&](int64_t b, int64_t e) { gram_upper(c, K, d0, b, e, d0 != 0); });
      }
    }
    for (int64_t i = 0; i < n; ++i) c.sq[i] = K[i * n + i];
  }
  run(par, n, 16, [&](int64_t b, int64_t e) {
    // From a vector-aligned column, so that rows need no head and, for n a multiple of kPad, no
    // tail; the entries left of the diagonal are overwritten by the mirror pass.
    for (int64_t i = b; i < e; ++i) kernel_row(c, K + i * n + i / kPad * kPad, i, i / kPad * kPad);
  });
  run(par, ceil_div(n, kMirrorBlock), 1, [&](int64_t b, int64_t e) {
    c.ops->mirror(K, n, b * kMirrorBlock, std::min(n, e * kMirrorBlock));
  });
  run(par, n, 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) r[i] = c.ops->sum(K + i * n, n) / static_cast<T>(n);
  });
  if (!center) return;
  const T t = c.ops->sum(r, n) / static_cast<T>(n);
  run(par, n, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) c.ops->center_row(K + i * n, K + i * n, r, r[i], t, n);
  });
}

// Kernel rows [rs, re) x all n columns into K ((re - rs) x n). With packed, the channel was set up by
// prepare_all; otherwise each panel is packed here, right before its passes.
template <typename T>
void kernel_rows(const Channel<T>& c, T* K, int64_t rs, int64_t re, bool packed, bool par) {
  const int64_t n = c.n;
  if (c.direct) {
    if (!packed) prepare_direct(c, par);
  } else {
    const int64_t ntiles = ceil_div(re - rs, kTileRows);
    const bool diag = !packed && c.kind != KernelKind::Linear;
    if (c.nseg > 1) {
      over_segments(c, !packed, [&](int64_t s, const Channel<T>& cs, int64_t d0, bool acc) {
        if (diag) gram_diag(cs, s == 0 ? c.sq : partial_diag(c, s), d0, 0, n, acc);
        gram_rows(cs, s == 0 ? K : partial_gram(c, s), d0, rs, re, 0, ntiles, acc);
      });
      add_partial_grams(c, K, re - rs, false);
      if (diag) add_partial_diags(c);
    } else {
      if (!packed) compute_means(c, par);
      for (int64_t d0 = 0; d0 < c.dp; d0 += kDBlock<T>) {
        if (!packed) {
          pack_panel(c, d0, par);
          if (diag) run(par, n, 64, [&](int64_t b, int64_t e) { gram_diag(c, c.sq, d0, b, e, d0 != 0); });
        }
        run(par, ntiles, 1, [&](int64_t b, int64_t e) { gram_rows(c, K, d0, rs, re, b, e, d0 != 0); });
      }
    }
  }
  run(par, re - rs, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = rs + b; i < rs + e; ++i) kernel_row(c, K + (i - rs) * n, i, 0);
  });
}

struct Plan {
  int64_t n, C, D, dp;
  bool all_panels;  // see Channel::X
  bool direct;
  int64_t ldxt;
  bool channel_parallel;
  int64_t nseg;          // see Channel::nseg; the same for every call on the same x and thread count
  int64_t partial_rows;  // Gram rows per pass (sizes the segment buffers)
};

// Scratch for one thread, or for all of them within a channel: packed panels (one slot per segment),
// means, squared norms, the direct path's transpose, the segment buffers, plus `extra` elements.
template <typename T>
struct Scratch {
  at::Tensor buf;
  T* X;
  T* mu;
  T* sq;
  T* xt;
  T* partials;
  T* extra;
  Scratch(const Plan& p, int64_t extra_elems, const at::TensorOptions& opt) {
    const int64_t xt_elems = p.direct ? p.D * p.ldxt : 0;
    const int64_t x_elems = p.n * (p.all_panels ? p.dp : p.nseg * std::min(p.dp, kDBlock<T>));
    const int64_t partial_elems = (p.nseg - 1) * (p.partial_rows + 1) * p.n;
    buf = at::empty({x_elems + p.dp + p.n + xt_elems + partial_elems + extra_elems}, opt);
    X = buf.data_ptr<T>();
    mu = X + x_elems;
    sq = mu + p.dp;
    xt = sq + p.n;
    partials = xt + xt_elems;
    extra = partials + partial_elems;
  }
};

template <typename T>
Plan make_plan(const at::Tensor& x, KernelKind kind) {
  Plan p;
  p.n = x.size(0);
  p.C = x.size(1);
  p.D = x.size(2);
  p.dp = ceil_div(p.D, kPad) * kPad;
  p.all_panels = false;
  p.direct = kind != KernelKind::Linear && p.D <= kDirectMaxD;
  p.ldxt = (ceil_div(p.n, kPad) + 1) * kPad;
  const int64_t threads = at::get_num_threads();
  // Splitting a channel across threads costs about a dozen barriers per channel; worth it only when
  // there are too few channels to balance and each is big enough to amortise them.
  const bool balanced = p.C >= 4 * threads || p.C % threads == 0;
  const bool small = p.n * p.n * p.dp < (int64_t{1} << 22);
  p.channel_parallel = threads <= 1 || balanced || small;
  const int64_t buffers = 1 + kPartialBytes / (p.n * p.n * static_cast<int64_t>(sizeof(T)));
  p.nseg = p.channel_parallel || p.direct ? 1 : std::min({threads, ceil_div(p.dp, kDBlock<T>), buffers});
  p.partial_rows = p.n;
  return p;
}

template <typename T>
Channel<T> make_channel(const at::Tensor& x, const Plan& p, KernelKind kind, double gamma, const Scratch<T>& s,
                        int64_t k) {
  Channel<T> c;
  c.ops = &ops_for_cpu<T>();
  c.x = x.data_ptr<T>() + k * x.stride(1);
  c.s0 = x.stride(0);
  c.s2 = x.stride(2);
  c.n = p.n;
  c.D = p.D;
  c.dp = p.dp;
  c.kind = kind;
  c.neg_gamma = static_cast<T>(-gamma);
  c.direct = p.direct;
  c.X = s.X;
  c.all_panels = p.all_panels;
  c.mu = s.mu;
  c.sq = s.sq;
  c.xt = s.xt;
  c.ldxt = p.ldxt;
  c.nseg = p.nseg;
  c.partials = s.partials;
  c.partial_rows = p.partial_rows;
  return c;
}

// Calls body(channel k, scratch, par) for every channel, in parallel over channels or within them.
template <typename T, class F>
void for_each_channel(const at::Tensor& x, const Plan& p, int64_t extra, const F& body) {
  const auto opt = x.options().memory_format(at::MemoryFormat::Contiguous);
  if (p.channel_parallel) {
    // Channels are claimed one at a time rather than split evenly up front: on a shared machine one
    // thread can run much slower than the other for a while, and a static split leaves the other idle.
    std::atomic<int64_t> next{0};
    at::parallel_for(0, std::min<int64_t>(p.C, at::get_num_threads()), 1, [&](int64_t, int64_t) {
      Scratch<T> s(p, extra, opt);
      for (int64_t k = next++; k < p.C; k = next++) body(k, s, false);
    });
  } else {
    Scratch<T> s(p, extra, opt);
    for (int64_t k = 0; k < p.C; ++k) body(k, s, true);
  }
}

// Rows per block when kernel_row_means cannot hold a channel's n x n matrix in scratch.
constexpr int64_t kFullScratchBytes = int64_t{8} << 20;

template <typename T>
at::Tensor kernel_row_means_impl(const at::Tensor& x, KernelKind kind, double gamma) {
  Plan p = make_plan<T>(x, kind);
  const int64_t n = p.n;
  at::Tensor out = at::empty({p.C, n}, x.options().memory_format(at::MemoryFormat::Contiguous));
  T* out_p = out.data_ptr<T>();
  const bool full = n * n * static_cast<int64_t>(sizeof(T)) <= kFullScratchBytes;
  p.all_panels = !full;
  const int64_t block = full ? n : std::max<int64_t>(kTileRows, kFullScratchBytes / (n * sizeof(T)) / 4 * 4);
  p.partial_rows = block;
  for_each_channel<T>(x, p, block * n, [&](int64_t k, const Scratch<T>& s, bool par) {
    const Channel<T> c = make_channel<T>(x, p, kind, gamma, s, k);
    T* r = out_p + k * n;
    if (full) {
      full_channel(c, s.extra, r, false, par);
      return;
    }
    prepare_all(c, par);
    for (int64_t rs = 0; rs < n; rs += block) {
      const int64_t re = std::min(n, rs + block);
      kernel_rows(c, s.extra, rs, re, true, par);
      run(par, re - rs, 64, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) r[rs + i] = c.ops->sum(s.extra + i * n, n) / static_cast<T>(n);
      });
    }
  });
  return out;
}

template <typename T>
at::Tensor centered_gram_impl(const at::Tensor& x, KernelKind kind, double gamma, int64_t rs, int64_t re,
                              const std::optional<at::Tensor>& row_means) {
  Plan p = make_plan<T>(x, kind);
  const int64_t n = p.n, rows = re - rs;
  p.partial_rows = rows;
  at::Tensor out = at::empty({p.C, rows, n}, x.options().memory_format(at::MemoryFormat::Contiguous));
  T* out_p = out.data_ptr<T>();
  const Ops<T>& ops = ops_for_cpu<T>();
  if (!row_means.has_value() && p.direct && n <= kLaneMaxN && ops.lanes != nullptr) {
    const LaneGroup<T> g{x.data_ptr<T>(), x.stride(0), x.stride(1), x.stride(2), n, p.D,
                         kind == KernelKind::Laplace, static_cast<T>(-gamma), out_p};
    const int64_t lanes = ops.lane_count;
    at::parallel_for(0, ceil_div(p.C, lanes), 16, [&](int64_t b, int64_t e) {
      // Vectors of the group: features (n x D), kernel (n x n), row means (n); at::empty is 64-byte aligned.
      const at::Tensor scratch = at::empty({(n * p.D + n * n + n) * lanes}, x.options());
      for (int64_t q = b; q < e; ++q) ops.lanes(g, q * lanes, std::min(lanes, p.C - q * lanes), scratch.data_ptr());
    });
    return out;
  }
  if (!row_means.has_value()) {
    for_each_channel<T>(x, p, n, [&](int64_t k, const Scratch<T>& s, bool par) {
      const Channel<T> c = make_channel<T>(x, p, kind, gamma, s, k);
      full_channel(c, out_p + k * n * n, s.extra, true, par);
    });
    return out;
  }
  const at::Tensor rm = row_means->contiguous();
  const T* rm_p = rm.data_ptr<T>();
  for_each_channel<T>(x, p, 0, [&](int64_t k, const Scratch<T>& s, bool par) {
    const Channel<T> c = make_channel<T>(x, p, kind, gamma, s, k);
    T* K = out_p + k * rows * n;
    const T* r = rm_p + k * n;
    kernel_rows(c, K, rs, re, false, par);
    const T t = c.ops->sum(r, n) / static_cast<T>(n);
    run(par, rows, 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) c.ops->center_row(K + i * n, K + i * n, r, r[rs + i], t, n);
    });
  });
  return out;
}

at::Tensor kernel_row_means_cpu(const at::Tensor& x, int64_t kernel, double gamma) {
  const KernelKind kind = check_args(x, kernel, gamma);
  TORCH_CHECK(x.device().is_cpu(), "apib::kernel_row_means (CPU): x must be a CPU tensor, got ", x.device());
  if (x.scalar_type() == at::kDouble) return kernel_row_means_impl<double>(x, kind, gamma);
  return kernel_row_means_impl<float>(x, kind, gamma);
}

at::Tensor centered_gram_cpu(const at::Tensor& x, int64_t kernel, double gamma, int64_t row_start, int64_t row_stop,
                             const std::optional<at::Tensor>& row_means) {
  const KernelKind kind = check_args(x, kernel, gamma);
  TORCH_CHECK(x.device().is_cpu(), "apib::centered_gram (CPU): x must be a CPU tensor, got ", x.device());
  check_rows(x, row_start, row_stop, row_means);
  if (x.scalar_type() == at::kDouble) {
    return centered_gram_impl<double>(x, kind, gamma, row_start, row_stop, row_means);
  }
  return centered_gram_impl<float>(x, kind, gamma, row_start, row_stop, row_means);
}

}  // namespace
}  // namespace apib

TORCH_LIBRARY_IMPL(apib, CPU, m) {
  m.impl("kernel_row_means", &apib::kernel_row_means_cpu);
  m.impl("centered_gram", &apib::centered_gram_cpu);
}
