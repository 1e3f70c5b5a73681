// CPU implementation of apib::kernel_row_means and apib::centered_gram (contract in common.h).
//
// Per channel k: one pass over x[:, k, :] takes the feature means; then, panel by panel (n rows x
// kDBlock features), the mean-removed features are copied into a contiguous, zero-padded slot
// that stays in L2 while the Gram pass over it runs, whatever x's strides are (the copy costs
// O(nD) next to the Gram's O(n^2 D)). The Gram is built from register tiles of row-by-row dot
// products; the full-range ops compute only its upper triangle (half the FLOPs) and the kernel
// function on it, then mirror, so the kernel, row means and centering all run while the channel's
// n x n block is still in cache. For D <= kDirectMaxD the distances come from explicit differences
// instead, as the contract asks. Each op starts with the same pass over the panels (panel_pass), told
// which part of the Gram it needs and whether the panels are packed already.
//
// This file is the ISA-independent driver (panels, passes, parallelism); the arithmetic on entries
// (dot tiles, kernel rows, sums, centering, the mirror, the channel-lane path) is in cpu/simd.h.
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
#include <cstdint>

#include "common.h"
#include "cpu/simd.h"

namespace apib::cpu {
namespace {

// A panel row is 2 KiB: a 4-row tile's rows stay in L1 while a column block streams from L2.
template <typename T>
constexpr int64_t kDBlock = 2048 / sizeof(T);
// Gram columns per block: kColBlock panel rows (192 KiB) stay resident in L2.
// A multiple of kTileCols keeps column tiles aligned on a global grid.
constexpr int64_t kColBlock = 96;
// Rows per parallel work item of the mirror pass (a multiple of every vector width).
constexpr int64_t kMirrorBlock = 32;
// Memory for the per-segment Gram buffers of one channel (see Parallelism above).
constexpr int64_t kPartialBytes = int64_t{64} << 20;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Whether the kind's kernel is a function of the squared distance S (common.h), so that the driver needs
// the squared norms, or the explicit differences when D <= kDirectMaxD; the linear kernel is the Gram itself.
bool uses_distance(KernelKind kind) { return kind != KernelKind::Linear; }

// One channel's inputs and its thread's scratch.
template <typename T>
struct Channel {
  const Ops<T>* ops;
  const T* x;  // &x[0, k, 0]
  int64_t s0, s2;
  int64_t n, D, dp;
  KernelKind kind;
  T neg_gamma;
  bool direct;  // S from explicit differences (D <= kDirectMaxD, distance-based kernel)
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
  if (!uses_distance(c.kind)) return;
  if (c.direct) {
    c.ops->direct_row(g, c.X + i * c.dp, c.xt + j0, c.ldxt, c.D, c.n - j0, c.kind, c.neg_gamma);
  } else {
    c.ops->kernel_row(g, g, c.sq + j0, c.sq[i], c.n - j0, c.kind, c.neg_gamma);
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

// The part of G = X X^T that a pass computes: none (G null); the upper triangle of the full n x n G, for
// the full-range ops, whose work items are row-tile pairs (see gram_upper); or rows [rs, re) x all
// columns, for row blocks, whose work items are row tiles. Either way G holds rows [rs, re).
template <typename T>
struct GramPart {
  T* G = nullptr;
  bool upper = false;
  int64_t rs = 0, re = 0;
};

template <typename T>
int64_t work_items(const Channel<T>& c, const GramPart<T>& part) {
  return part.upper ? ceil_div(ceil_div(c.n, kTileRows), 2) : ceil_div(part.re - part.rs, kTileRows);
}

// Panel d0's contribution to the part's work items [b, e), into G (the part's own or a segment's buffer).
template <typename T>
void gram_part(const Channel<T>& c, const GramPart<T>& part, T* G, int64_t d0, int64_t b, int64_t e, bool acc) {
  if (part.upper) {
    gram_upper(c, G, d0, b, e, acc);
  } else {
    gram_rows(c, G, d0, part.rs, part.re, b, e, acc);
  }
}

// The one pass over a channel's panels that both ops run, leaving the channel ready for kernel_row over
// `part`'s rows. With `pack` (the first pass over this channel's x) it takes the feature means, packs each
// panel right before the Gram reads it from L2, and takes the squared norms the kernel needs: from the
// diagonal of an upper part, by gram_diag otherwise. Without, the panels and norms are those of an earlier
// pass (all panels kept, see Channel::X). The direct path has no Gram: it packs its single panel and
// transposes it.
template <typename T>
void panel_pass(const Channel<T>& c, const GramPart<T>& part, bool pack, bool par) {
  if (c.direct) {
    if (pack) {
      compute_means(c, par);
      pack_panel(c, 0, par);
      transpose_features(c);
    }
    return;
  }
  const bool diag = pack && !part.upper && uses_distance(c.kind);
  const int64_t items = work_items(c, part);
  if (c.nseg > 1) {
    over_segments(c, pack, [&](int64_t s, const Channel<T>& cs, int64_t d0, bool acc) {
      if (diag) gram_diag(cs, s == 0 ? c.sq : partial_diag(c, s), d0, 0, c.n, acc);
      if (part.G) gram_part(cs, part, s == 0 ? part.G : partial_gram(c, s), d0, 0, items, acc);
    });
    if (part.G) add_partial_grams(c, part.G, part.re - part.rs, part.upper);
    if (diag) add_partial_diags(c);
  } else {
    if (pack) compute_means(c, par);
    for (int64_t d0 = 0; d0 < c.dp; d0 += kDBlock<T>) {
      if (pack) pack_panel(c, d0, par);
      if (diag) run(par, c.n, 64, [&](int64_t b, int64_t e) { gram_diag(c, c.sq, d0, b, e, d0 != 0); });
      if (part.G) run(par, items, 1, [&](int64_t b, int64_t e) { gram_part(c, part, part.G, d0, b, e, d0 != 0); });
    }
  }
  if (part.upper) {
    for (int64_t i = 0; i < c.n; ++i) c.sq[i] = part.G[i * c.n + i];
  }
}

// Full n x n kernel matrix of one channel into K (upper triangle computed, lower mirrored), its row
// means into r, and, if center, K centered in place.
template <typename T>
void full_channel(const Channel<T>& c, T* K, T* r, bool center, bool par) {
  const int64_t n = c.n;
  panel_pass(c, GramPart<T>{K, true, 0, n}, true, par);
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

// Kernel rows [rs, re) x all n columns into K ((re - rs) x n). With packed, the channel's panels and
// squared norms are those of an earlier panel_pass; otherwise this one packs them.
template <typename T>
void kernel_rows(const Channel<T>& c, T* K, int64_t rs, int64_t re, bool packed, bool par) {
  panel_pass(c, GramPart<T>{K, false, rs, re}, !packed, par);
  run(par, re - rs, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = rs + b; i < rs + e; ++i) kernel_row(c, K + (i - rs) * c.n, i, 0);
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
  p.direct = uses_distance(kind) && p.D <= kDirectMaxD;
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
    panel_pass(c, GramPart<T>{}, true, par);  // all panels and the squared norms, once for every row block
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
    const LaneGroup<T> g{x.data_ptr<T>(), x.stride(0), x.stride(1), x.stride(2), n, p.D, kind,
                         static_cast<T>(-gamma), out_p};
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
}  // namespace apib::cpu

TORCH_LIBRARY_IMPL(apib, CPU, m) {
  m.impl("kernel_row_means", &apib::cpu::kernel_row_means_cpu);
  m.impl("centered_gram", &apib::cpu::centered_gram_cpu);
}
