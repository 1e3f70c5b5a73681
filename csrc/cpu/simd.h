// The CPU kernels' per-ISA primitives: what hsic_cpu.cpp's driver calls through an Ops table, for the
// portable fallback and for AVX2 + FMA (chosen at run time; the build targets baseline x86-64).
//
// They carry most of the CPU backend's bit-for-bit promise (see hsic_cpu.cpp): within one ISA every Gram
// entry is accumulated by the same tile code, every kernel value goes through the same vector code (tails
// included) and every sum uses the same lanes and horizontal-sum tree, whichever path of the driver calls
// them.
//
// What each kernel kind computes from a squared distance is written once per ISA: distance_kernel (scalar)
// and distance_kernel_avx2 (vector); a new distance-based kind is a new branch in each.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>

#include "common.h"

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define APIB_HAVE_AVX2 1
#include <immintrin.h>
#define APIB_AVX2 __attribute__((target("avx2,fma")))
#endif

// For the dot tiles, whose inner loop takes most of the time: that loop starts on a 64-byte boundary, so
// that the lines (and decoded-uop windows) it spans do not depend on where the linker happens to put the
// function; unaligned, an unrelated change elsewhere can cost a few percent (measured: 2-4% on whole
// channels when the move to this header left the float 4 x 3 loop across three lines instead of two).
#if defined(__GNUC__) && !defined(__clang__)
#define APIB_ALIGN_LOOPS __attribute__((optimize("align-loops=64")))
#else
#define APIB_ALIGN_LOOPS
#endif

namespace apib::cpu {

// Features are padded with zeros to a multiple of kPad, the widest vector (8 floats), so the
// micro-kernels never see a feature remainder; zeros change no dot product.
constexpr int64_t kPad = 8;
// Register tiles of the Gram: up to kTileRows x kTileCols dot products at a time.
constexpr int64_t kTileRows = 4;
constexpr int64_t kTileCols = 3;
// Largest n for the channel-lane path of the direct kernels (a group's n x n vectors: 32 KiB).
constexpr int64_t kLaneMaxN = 32;

// What the channel-lane path needs of x (n, C, D) and the output (C, n, n).
template <typename T>
struct LaneGroup {
  const T* x;
  int64_t s0, s1, s2;
  int64_t n, D;
  KernelKind kind;
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
  // k[j] = distance_kernel(S_j) with S_j = max(sqi + sq[j] - 2 g[j], 0); k may alias g.
  void (*kernel_row)(T* k, const T* g, const T* sq, T sqi, int64_t len, KernelKind kind, T neg_gamma);
  // Same kernel with S_j = sum_{d < D} (xi[d] - xt[d * ld + j])^2 (the D <= kDirectMaxD path); xt rows
  // must be readable up to a whole vector past len.
  void (*direct_row)(T* k, const T* xi, const T* xt, int64_t ld, int64_t D, int64_t len, KernelKind kind,
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

// ops.tile[R - 1][CC - 1] = make.template operator()<R, CC>() for every tile shape R x CC, so that an ISA
// names its tile template once rather than its twelve instances.
template <typename T, class Make>
void set_tiles(Ops<T>& ops, const Make& make) {
  [&]<int... q>(std::integer_sequence<int, q...>) {
    ((ops.tile[q / kTileCols][q % kTileCols] = make.template operator()<q / kTileCols + 1, q % kTileCols + 1>()), ...);
  }(std::make_integer_sequence<int, kTileRows * kTileCols>{});
}

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

// The kernel value for the squared distance s of a distance-based kind (not Linear, whose kernel is the Gram).
template <typename T>
inline T distance_kernel(T s, KernelKind kind, T neg_gamma) {
  if (kind == KernelKind::Laplace) s = std::sqrt(s);
  return std::exp(s * neg_gamma);
}

template <typename T>
void kernel_row_generic(T* k, const T* g, const T* sq, T sqi, int64_t len, KernelKind kind, T neg_gamma) {
  for (int64_t j = 0; j < len; ++j) {
    // std::max(s, 0) keeps a NaN s, as clamp_min does.
    k[j] = distance_kernel(std::max((sqi + sq[j]) - 2 * g[j], T(0)), kind, neg_gamma);
  }
}

template <typename T>
void direct_row_generic(T* k, const T* xi, const T* xt, int64_t ld, int64_t D, int64_t len, KernelKind kind,
                        T neg_gamma) {
  for (int64_t j = 0; j < len; ++j) {
    T s = 0;
    for (int64_t d = 0; d < D; ++d) {
      const T diff = xi[d] - xt[d * ld + j];
      s += diff * diff;
    }
    k[j] = distance_kernel(s, kind, neg_gamma);
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
  set_tiles(ops, []<int R, int CC>() { return dot_tile_generic<T, R, CC>; });
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
APIB_AVX2 APIB_ALIGN_LOOPS void dot_tile_avx2(const T* a, const T* b, int64_t ld, int64_t len, T* out, int64_t ldo,
                                              bool accumulate) {
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

// distance_kernel's vector twin.
template <typename T>
APIB_AVX2 inline typename Vec<T>::V distance_kernel_avx2(typename Vec<T>::V s, KernelKind kind,
                                                          typename Vec<T>::V neg_gamma) {
  using X = Vec<T>;
  if (kind == KernelKind::Laplace) s = X::sqrt(s);
  return X::exp_nonpos(X::mul(s, neg_gamma));
}

template <typename T>
APIB_AVX2 inline typename Vec<T>::V kernel_eval(typename Vec<T>::V g, typename Vec<T>::V sqj, typename Vec<T>::V sqi,
                                                 typename Vec<T>::V neg_gamma, KernelKind kind) {
  using X = Vec<T>;
  return distance_kernel_avx2<T>(X::clamp0(X::sub(X::add(sqi, sqj), X::add(g, g))), kind, neg_gamma);
}

template <typename T>
APIB_AVX2 void kernel_row_avx2(T* k, const T* g, const T* sq, T sqi, int64_t len, KernelKind kind, T neg_gamma) {
  using X = Vec<T>;
  using V = typename X::V;
  constexpr int W = X::W;
  const V vsqi = X::set1(sqi);
  const V vng = X::set1(neg_gamma);
  int64_t j = 0;
  for (; j + W <= len; j += W) X::store(k + j, kernel_eval<T>(X::load(g + j), X::load(sq + j), vsqi, vng, kind));
  if (j < len) {
    // The tail goes through the same vector code so that every entry is computed identically.
    const auto m = X::tail_mask(len - j);
    store_tail<T>(k + j, len - j, kernel_eval<T>(X::load_mask(g + j, m), X::load_mask(sq + j, m), vsqi, vng, kind));
  }
}

template <typename T>
APIB_AVX2 void direct_row_avx2(T* k, const T* xi, const T* xt, int64_t ld, int64_t D, int64_t len, KernelKind kind,
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
    const V kv = distance_kernel_avx2<T>(s, kind, vng);
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

// sum_avx2() in every lane of the n vectors v: lane l of its accumulator sums entries l, l + W, ... (a zero
// past the end), then the tree. A function rather than a lambda in lanes_avx2, which would not inherit
// lanes_avx2's target and so would call the vector primitives instead of inlining them.
template <typename T>
APIB_AVX2 inline typename Vec<T>::V lane_sum(const typename Vec<T>::V* v, int64_t n) {
  using X = Vec<T>;
  constexpr int W = X::W;
  typename X::V acc[W];
  for (int l = 0; l < W; ++l) acc[l] = X::zero();
  for (int64_t j = 0; j < n; j += W) {
    for (int l = 0; l < W; ++l) acc[l] = X::add(acc[l], j + l < n ? v[j + l] : X::zero());
  }
  return X::tree(acc);
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
      K[i * n + j] = K[j * n + i] = distance_kernel_avx2<T>(s, g.kind, vng);
    }
  }
  for (int64_t i = 0; i < n; ++i) r[i] = X::div(lane_sum<T>(K + i * n, n), vn);
  const V t = X::div(lane_sum<T>(r, n), vn);
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
  set_tiles(ops, []<int R, int CC>() { return dot_tile_avx2<T, R, CC>; });
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

inline bool cpu_has_avx2_fma() {
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

}  // namespace apib::cpu
