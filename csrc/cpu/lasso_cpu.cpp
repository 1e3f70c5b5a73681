// CPU implementation of apib::lasso_cd: batched Lasso in Gram form by coordinate descent.
//
// Problem p of the batch (all float64):
//   min_beta  1/2 beta^T Q beta - b^T beta + lam ||beta||_1,   lam = alpha[p] * n_rows
//   (optionally beta >= 0). This is n_rows times scikit-learn's Lasso objective on a design A with
//   Q = A^T A, b = A^T y, minus the constant y^T y / 2, so alpha means what it means there.
//
// Algorithm (apib_kernels/lasso.py's fallback runs exactly the same steps in numpy):
//   * cyclic coordinate descent keeping g = b - Q beta up to date: a coordinate that does not move
//     costs O(1), one that moves costs one O(C) row update, so sweeps cost O(C * moved);
//   * sweeps alternate as in glmnet: one full sweep, then sweeps over the coordinates that were
//     non-zero after it until those satisfy the optimality conditions, then a full sweep again;
//   * the optimality (KKT) violation is max_j v_j with v_j = |g_j - lam sign(beta_j)| for beta_j != 0
//     and max(|g_j| - lam, 0) (positive: max(g_j - lam, 0)) for beta_j = 0. The solve stops after a full
//     sweep whose violation is <= tol * max|b|, max|b| = n_rows * alpha_max being the gradient scale;
//   * support Newton step: on correlated Grams (HSIC Grams of one layer typically have pairwise
//     correlations around 0.9) cyclic CD needs thousands of sweeps once the support is found. So when
//     an active sweep changed no coordinate's sign (zero, +, -) and the sign pattern changed since the
//     last attempt, the solver minimises the quadratic on that sign pattern exactly (Cholesky of
//     Q_SS) and moves towards that minimiser, stopping where the first coordinate would change sign;
//     if Q_SS is singular (duplicated channels, more non-zeros than the design's rank) it moves along
//     a null direction of Q_SS instead, until a coordinate reaches zero (see newton_step).
//     The objective cannot increase along either move; a move is kept only if the objective,
//     recomputed from scratch, did not increase beyond rounding (a guard for ill-conditioned Q_SS),
//     and a null-direction move only if it does not grow ||beta||_1 so far that g's rounding error
//     nears the stopping threshold (flat moves on singular faces of unpenalised signed fits ran away).
//     The Cholesky factor is kept from one Newton step to the next and updated in O(k^2) per support
//     change (columns removed by a rank-one update, new ones appended): the support changes by a few
//     coordinates between steps, and refactorising in O(k^3) each time cost 80% of the solve at
//     k ~ 200. Many changes at once, or a move from an updated factor that fails the check, refactorise.
// Coordinates with Q_jj <= 0 (constant channels: their column of A is zero) stay exactly 0.
// max_iter counts sweeps, full or active; Newton steps are not counted.
//
// Problems are independent: at::parallel_for over the batch.

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

namespace apib {
namespace {

// A pivot below this fraction of its diagonal entry marks Q_SS as numerically singular: the exact
// minimiser would be meaningless, so the Newton step moves along a null direction instead.
constexpr double kPivotRel = 1e-10;
// A move along a flat direction leaves the objective unchanged up to rounding: accept that much.
constexpr double kObjectiveSlack = 1e-13;
// A null-direction move that grows ||beta||_1 is refused once g's rounding error could exceed this
// fraction of max|b| (1% of the default tolerance; see move): past it no sweep can certify convergence.
constexpr double kGrowthNoise = 1e-9;
// move's answer for a move refused that way (no retry with a fresh factor: it would be refused again).
constexpr int kRefused = -2;
constexpr double kInf = std::numeric_limits<double>::infinity();
// factor_support's answer for an empty support.
constexpr int64_t kEmpty = -2;

// The inner loops (gradient updates, factorisation, solves) get an AVX2+FMA clone, chosen at load time on CPUs that have it
// (the build targets baseline x86-64).
#if (defined(__GNUC__) && !defined(__clang__)) && defined(__x86_64__)
#define APIB_LASSO_TARGETS __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define APIB_LASSO_TARGETS
#endif

struct Problem {
  const double* Q;  // C x C, row-major
  const double* b;  // C
  double* beta;     // C, in: start, out: solution
  int64_t C;
  double lam;
  bool positive;
};

class Solver {
 public:
  explicit Solver(const Problem& p) : p_(p), g_(p.C), d_(p.C), in_S_(p.C, 0), U_(p.C * p.C) {}

  // Returns {sweeps done, final KKT violation / max|b|}.
  std::pair<int64_t, double> run(double tol, int64_t max_iter, bool newton) {
    const int64_t C = p_.C;
    double scale = 0, dmax = 0;
    for (int64_t j = 0; j < C; ++j) {
      d_[j] = p_.Q[j * C + j];
      if (d_[j] <= 0 || (p_.positive && p_.beta[j] < 0)) p_.beta[j] = 0;
      scale = std::max(scale, std::fabs(p_.b[j]));
      dmax = std::max(dmax, d_[j]);
    }
    if (scale == 0) scale = 1;
    const double thr = tol * scale;
    // Rounding error of g = b - Q beta per unit of ||beta||_1: C roundings of terms up to max Q_jj.
    const double noise = static_cast<double>(C) * std::numeric_limits<double>::epsilon() * dmax;
    l1_limit_ = noise > 0 ? kGrowthNoise * scale / noise : kInf;
    recompute_gradient(p_.beta, g_.data());

    std::vector<int64_t> all(C), active;
    for (int64_t j = 0; j < C; ++j) all[j] = j;
    int64_t it = 0;
    bool pattern_new = true;  // the sign pattern changed since the last Newton attempt
    while (it < max_iter) {
      if (sweep(all)) pattern_new = true;
      ++it;
      if (violation(all) <= thr) return {it, violation(all) / scale};
      active.clear();
      for (int64_t j = 0; j < C; ++j) {
        if (p_.beta[j] != 0) active.push_back(j);
      }
      while (it < max_iter) {
        const bool changed = sweep(active);
        ++it;
        pattern_new = pattern_new || changed;
        if (violation(active) <= thr) break;
        if (newton && !changed && pattern_new) {
          pattern_new = newton_step(active);
          if (violation(active) <= thr) break;
        }
      }
    }
    return {it, violation(all) / scale};
  }

 private:
  // g = b - Q beta from scratch, skipping zero coefficients.
  APIB_LASSO_TARGETS void recompute_gradient(const double* beta, double* g) const {
    const int64_t C = p_.C;
    for (int64_t i = 0; i < C; ++i) g[i] = p_.b[i];
    for (int64_t j = 0; j < C; ++j) {
      const double bj = beta[j];
      if (bj == 0) continue;
      const double* q = p_.Q + j * C;  // row j == column j: Q is symmetric
      for (int64_t i = 0; i < C; ++i) g[i] -= bj * q[i];
    }
  }

  // One cyclic pass over idx; returns whether any coefficient changed sign (zero, +, -).
  APIB_LASSO_TARGETS bool sweep(const std::vector<int64_t>& idx) {
    const int64_t C = p_.C;
    const double lam = p_.lam;
    double* g = g_.data();
    bool changed = false;
    for (const int64_t j : idx) {
      const double dj = d_[j];
      if (dj <= 0) continue;
      const double old = p_.beta[j];
      const double z = g[j] + dj * old;
      double nb = 0;
      if (z > lam) {
        nb = (z - lam) / dj;
      } else if (!p_.positive && z < -lam) {
        nb = (z + lam) / dj;
      }
      if (nb == old) continue;
      const double delta = nb - old;
      const double* q = p_.Q + j * C;
      for (int64_t i = 0; i < C; ++i) g[i] -= delta * q[i];
      changed = changed || ((nb > 0) != (old > 0)) || ((nb < 0) != (old < 0));
      p_.beta[j] = nb;
    }
    return changed;
  }

  double violation(const std::vector<int64_t>& idx) const {
    const double lam = p_.lam;
    double v = 0;
    for (const int64_t j : idx) {
      if (d_[j] <= 0) continue;
      const double bj = p_.beta[j], gj = g_[j];
      double e;
      if (bj > 0) {
        e = std::fabs(gj - lam);
      } else if (bj < 0) {
        e = std::fabs(gj + lam);
      } else {
        e = std::max((p_.positive ? gj : std::fabs(gj)) - lam, 0.0);
      }
      v = std::max(v, e);
    }
    return v;
  }

  // Summed in index order, as the numpy fallback's cumulative sum does.
  double l1_norm(const double* beta) const {
    double s = 0;
    for (int64_t j = 0; j < p_.C; ++j) s += std::fabs(beta[j]);
    return s;
  }

  // 1/2 beta^T (b - g) - b^T beta + lam ||beta||_1, i.e. the objective when g = b - Q beta.
  double objective(const double* beta, const double* g) const {
    double s = 0, l1 = 0;
    for (int64_t j = 0; j < p_.C; ++j) {
      s += beta[j] * (-0.5 * (p_.b[j] + g[j]));
      l1 += std::fabs(beta[j]);
    }
    return s + p_.lam * l1;
  }

  // One step on the face of the current sign pattern sigma of `idx`'s non-zeros S, where the objective
  // is the quadratic F(beta_S) = 1/2 beta_S^T Q_SS beta_S - (b_S - lam sigma)^T beta_S:
  //  * Q_SS positive definite: towards its minimiser x = Q_SS^-1 (b_S - lam sigma);
  //  * Q_SS singular (the Cholesky pivot of column c vanishes: column c of Q_SS depends on the earlier
  //    ones, as with duplicated channels or more non-zeros than the design's rank): along the null
  //    direction v = (-Q_<c,<c^-1 Q_<c,c, 1, 0...), downhill, where F is linear or flat, so the move
  //    goes until a coordinate reaches zero and the support shrinks (as a homotopy step would).
  // Either way beta never leaves the face's closure, so the move cannot increase the objective;
  // it is still checked from scratch. Moves repeat while they drop a coordinate (a step blocked where
  // a coefficient reaches zero, or a null-direction move), as in an active-set method, until one
  // reaches the exact minimiser of its face: returning to the sweeps after a drop lets them re-add the
  // dropped coordinate, and on ill-conditioned Grams that zig-zag ran past 10^4 sweeps. Returns whether
  // the sign pattern changed.
  bool newton_step(const std::vector<int64_t>& idx) {
    bool changed = false;
    for (int64_t left = static_cast<int64_t>(idx.size()); left >= 0; --left) {
      bool singular = false;
      const int moved = face_step(idx, &singular);
      changed = changed || moved == 1;
      if (moved < 0 || (moved == 0 && !singular)) break;
    }
    return changed;
  }

  // One move of newton_step: -1 if none was made, 0 if made without changing the sign pattern, 1 if
  // a coordinate was dropped. *singular tells whether it was a null-direction move. A move computed
  // from an updated (not freshly computed) factor that fails the objective check is retried once
  // with a fresh factorisation, in case rounding in the updates misled it; a refused one is not.
  int face_step(const std::vector<int64_t>& idx, bool* singular) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      bool fresh = false;
      const int64_t fail = factor_support(idx, attempt > 0, &fresh);
      if (fail == kEmpty) return -1;
      *singular = fail >= 0;
      const int moved = move(fail);
      if (moved == kRefused) return -1;
      if (moved >= 0 || fresh) return moved;
    }
    return -1;
  }

  // Brings the factor (fS_, U_) to the support S = {j in idx : beta_j != 0} and lists the support in
  // S_: the factored coordinates first, in factor order, then any not factored. Few changes are made
  // by updates (O(k^2) each): removed coordinates by deleting their row and column (a rank-one update
  // of the trailing block), new ones appended at the end; many changes, or `fresh`, refactorise from
  // scratch in idx order. Returns kEmpty if S is empty, -1 if all of S is factored, else the position
  // c of the first column whose pivot vanished (numerically dependent on the columns before it): the
  // columns before it are factored and column c of U_ above the diagonal holds L_<c,<c^-1 Q_<c,c.
  int64_t factor_support(const std::vector<int64_t>& idx, bool fresh, bool* was_fresh) {
    S_.clear();
    for (const int64_t j : idx) {
      if (p_.beta[j] != 0) S_.push_back(j);
    }
    const int64_t k = static_cast<int64_t>(S_.size());
    if (k == 0) return kEmpty;
    for (const int64_t j : S_) in_S_[j] = 1;
    int64_t stale = 0;
    for (const int64_t j : fS_) stale += in_S_[j] ? 0 : 1;
    const int64_t kept = static_cast<int64_t>(fS_.size()) - stale;
    const int64_t changes = stale + (k - kept);
    if (fresh || 3 * changes > k) {
      fS_.clear();
      *was_fresh = true;
    } else {
      for (int64_t r = static_cast<int64_t>(fS_.size()) - 1; r >= 0; --r) {
        if (!in_S_[fS_[r]]) remove_column(r);
      }
    }
    for (const int64_t j : fS_) in_S_[j] = 2;  // factored
    int64_t fail = -1;
    pending_.clear();
    for (const int64_t j : S_) {
      if (in_S_[j] == 2) continue;
      if (fail < 0 && !append_column(j)) fail = static_cast<int64_t>(fS_.size());
      if (fail >= 0) pending_.push_back(j);
    }
    for (const int64_t j : S_) in_S_[j] = 0;
    S_.assign(fS_.begin(), fS_.end());
    S_.insert(S_.end(), pending_.begin(), pending_.end());
    return fail;
  }

  // The move of face_step on the support S_ (see factor_support for `fail`).
  int move(int64_t fail) {
    const int64_t C = p_.C;
    const int64_t k = static_cast<int64_t>(S_.size());
    x_.resize(k);
    gold_.resize(C);
    recompute_gradient(p_.beta, gold_.data());
    double t;
    if (fail < 0) {
      for (int64_t r = 0; r < k; ++r) x_[r] = p_.b[S_[r]] - (p_.beta[S_[r]] > 0 ? p_.lam : -p_.lam);
      solve_lower(k, x_.data());
      solve_upper(k, x_.data());
      for (int64_t r = 0; r < k; ++r) x_[r] -= p_.beta[S_[r]];
      t = 1;
    } else {
      std::fill(x_.begin(), x_.end(), 0.0);
      for (int64_t r = 0; r < fail; ++r) x_[r] = U_[r * C + fail];
      solve_upper(fail, x_.data());
      for (int64_t r = 0; r < fail; ++r) x_[r] = -x_[r];
      x_[fail] = 1;
      double slope = 0;
      for (int64_t r = 0; r <= fail; ++r) {
        slope -= (gold_[S_[r]] - (p_.beta[S_[r]] > 0 ? p_.lam : -p_.lam)) * x_[r];
      }
      // Downhill; on a flat direction either way, so take one that reaches zero.
      if (slope > 0 || (slope == 0 && step_length(k, kInf).second < 0)) {
        for (int64_t r = 0; r <= fail; ++r) x_[r] = -x_[r];
      }
      t = kInf;
    }
    int64_t block;
    std::tie(t, block) = step_length(k, t);
    if (!std::isfinite(t)) return -1;
    trial_.assign(p_.beta, p_.beta + C);
    for (int64_t r = 0; r < k; ++r) {
      const int64_t j = S_[r];
      trial_[j] = (r == block) ? 0.0 : trial_[j] + t * x_[r];
      // Rounding in beta + t dir must not let a coefficient cross zero.
      if ((p_.beta[j] > 0 && trial_[j] < 0) || (p_.beta[j] < 0 && trial_[j] > 0)) trial_[j] = 0;
    }
    // Along a null direction of a (numerically) singular face the objective is flat, so the move can
    // be huge and still pass the check below: with alpha = 0, positive = false and dependent columns,
    // repeated moves grew beta past 1e100 and the solve never converged. No sweep needs such a beta.
    if (fail >= 0) {
      const double l1_new = l1_norm(trial_.data());
      if (l1_new > l1_norm(p_.beta) && l1_new > l1_limit_) return kRefused;
    }
    gtrial_.resize(C);
    recompute_gradient(trial_.data(), gtrial_.data());
    const double f_old = objective(p_.beta, gold_.data());
    if (!(objective(trial_.data(), gtrial_.data()) <= f_old + kObjectiveSlack * std::fabs(f_old))) return -1;
    bool dropped = false;
    for (int64_t j = 0; j < C; ++j) {
      dropped = dropped || ((trial_[j] == 0) != (p_.beta[j] == 0));
      p_.beta[j] = trial_[j];
    }
    g_.swap(gtrial_);
    return dropped ? 1 : 0;
  }

  // The largest step <= t_max along x_ before a coordinate of S_ reaches zero, and that coordinate
  // (-1 if none does).
  std::pair<double, int64_t> step_length(int64_t k, double t_max) const {
    double t = t_max;
    int64_t block = -1;
    for (int64_t r = 0; r < k; ++r) {
      const double bj = p_.beta[S_[r]];
      if ((bj > 0 && x_[r] < 0) || (bj < 0 && x_[r] > 0)) {
        const double tj = -bj / x_[r];
        if (tj < t) {
          t = tj;
          block = r;
        }
      }
    }
    return {t, block};
  }

  // The factor L (L L^T = Q restricted to fS_, in that order) is held as U_ = L^T, row-major with
  // leading dimension C: column r of L is the contiguous row r of U_, so every inner loop below is a
  // unit-stride axpy or dot.

  // Appends coordinate j as the last column: w = L^-1 Q[fS_, j] goes into column m = |fS_| of U_ above
  // the diagonal, then the pivot sqrt(Q_jj - |w|^2). Returns false, leaving fS_ unchanged, if the
  // pivot is numerically zero (below kPivotRel of Q_jj).
  APIB_LASSO_TARGETS bool append_column(int64_t j) {
    const int64_t C = p_.C;
    const int64_t m = static_cast<int64_t>(fS_.size());
    const double* qj = p_.Q + j * C;
    w_.resize(m);
    for (int64_t r = 0; r < m; ++r) w_[r] = qj[fS_[r]];
    solve_lower(m, w_.data());
    double s = qj[j];
    for (int64_t r = 0; r < m; ++r) {
      U_[r * C + m] = w_[r];
      s -= w_[r] * w_[r];
    }
    if (!(s > kPivotRel * qj[j])) return false;
    U_[m * C + m] = std::sqrt(s);
    fS_.push_back(j);
    return true;
  }

  // Removes the column at position p: drops row and column p of U_ and restores L L^T = Q on the
  // remaining coordinates by the rank-one update L22 L22^T + l l^T of the trailing block, l being
  // the removed column of L below its diagonal (Givens form, as LINPACK's dchud).
  APIB_LASSO_TARGETS void remove_column(int64_t p) {
    const int64_t C = p_.C;
    const int64_t m = static_cast<int64_t>(fS_.size());
    double* U = U_.data();
    w_.assign(U + p * C + p + 1, U + p * C + m);
    for (int64_t r = 0; r < p; ++r) {
      double* ur = U + r * C;
      std::copy(ur + p + 1, ur + m, ur + p);
    }
    for (int64_t r = p + 1; r < m; ++r) std::copy(U + r * C + r, U + r * C + m, U + (r - 1) * C + (r - 1));
    const int64_t n = m - 1 - p;
    for (int64_t i = 0; i < n; ++i) {
      double* ui = U + (p + i) * C + p;
      const double lii = ui[i];
      const double r = std::hypot(lii, w_[i]);
      const double c = r / lii, s = w_[i] / lii;
      ui[i] = r;
      for (int64_t t = i + 1; t < n; ++t) {
        ui[t] = (ui[t] + s * w_[t]) / c;
        w_[t] = c * w_[t] - s * ui[t];
      }
    }
    fS_.erase(fS_.begin() + p);
  }

  // v[:n] = L[:n, :n]^-1 v[:n] (leading block of the factor), column by column.
  APIB_LASSO_TARGETS void solve_lower(int64_t n, double* v) const {
    for (int64_t c = 0; c < n; ++c) {
      const double* uc = U_.data() + c * p_.C;
      v[c] /= uc[c];
      for (int64_t r = c + 1; r < n; ++r) v[r] -= uc[r] * v[c];
    }
  }

  // v[:n] = L[:n, :n]^-T v[:n].
  APIB_LASSO_TARGETS void solve_upper(int64_t n, double* v) const {
    for (int64_t r = n - 1; r >= 0; --r) {
      const double* ur = U_.data() + r * p_.C;
      double s = v[r];
      for (int64_t c = r + 1; c < n; ++c) s -= ur[c] * v[c];
      v[r] = s / ur[r];
    }
  }

  Problem p_;
  std::vector<double> g_, d_;
  std::vector<int64_t> S_;
  std::vector<int64_t> fS_, pending_;  // the factored coordinates, in factor order; the support not factored
  std::vector<char> in_S_;
  std::vector<double> U_, w_, x_, trial_, gold_, gtrial_;
  double l1_limit_ = kInf;  // see run and move
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> lasso_cd_cpu(const at::Tensor& Q, const at::Tensor& b,
                                                            const at::Tensor& alpha, const at::Tensor& coef0,
                                                            double n_rows, bool positive, double tol,
                                                            int64_t max_iter, bool newton) {
  TORCH_CHECK(Q.dim() == 3 && Q.size(1) == Q.size(2), "apib::lasso_cd: Q must have shape (B, C, C), got ",
              Q.sizes());
  const int64_t B = Q.size(0), C = Q.size(1);
  TORCH_CHECK(b.dim() == 2 && b.size(0) == B && b.size(1) == C, "apib::lasso_cd: b must have shape (B, C) = (",
              B, ", ", C, "), got ", b.sizes());
  TORCH_CHECK(alpha.dim() == 1 && alpha.size(0) == B, "apib::lasso_cd: alpha must have shape (B,) = (", B,
              ",), got ", alpha.sizes());
  TORCH_CHECK(coef0.dim() == 2 && coef0.size(0) == B && coef0.size(1) == C,
              "apib::lasso_cd: coef0 must have shape (B, C) = (", B, ", ", C, "), got ", coef0.sizes());
  for (const at::Tensor* t : {&Q, &b, &alpha, &coef0}) {
    TORCH_CHECK(t->scalar_type() == at::kDouble, "apib::lasso_cd: all tensors must be float64, got ",
                t->scalar_type());
    TORCH_CHECK(t->device().is_cpu(), "apib::lasso_cd (CPU): all tensors must be CPU tensors, got ", t->device());
  }
  TORCH_CHECK(n_rows > 0 && std::isfinite(n_rows), "apib::lasso_cd: n_rows must be positive, got ", n_rows);
  TORCH_CHECK(tol >= 0, "apib::lasso_cd: tol must be >= 0, got ", tol);
  TORCH_CHECK(max_iter >= 1, "apib::lasso_cd: max_iter must be >= 1, got ", max_iter);

  const at::Tensor Qc = Q.contiguous(), bc = b.contiguous(), ac = alpha.contiguous();
  at::Tensor coef = coef0.contiguous().clone();
  at::Tensor n_iter = at::empty({B}, Q.options().dtype(at::kLong));
  at::Tensor viol = at::empty({B}, Q.options());
  const double* Qp = Qc.data_ptr<double>();
  const double* bp = bc.data_ptr<double>();
  const double* ap = ac.data_ptr<double>();
  double* cp = coef.data_ptr<double>();
  int64_t* ip = n_iter.data_ptr<int64_t>();
  double* vp = viol.data_ptr<double>();
  for (int64_t p = 0; p < B; ++p) {
    TORCH_CHECK(ap[p] >= 0, "apib::lasso_cd: alpha must be >= 0, got ", ap[p], " for problem ", p);
  }
  at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t p = lo; p < hi; ++p) {
      Solver s(Problem{Qp + p * C * C, bp + p * C, cp + p * C, C, ap[p] * n_rows, positive});
      const auto [it, v] = s.run(tol, max_iter, newton);
      ip[p] = it;
      vp[p] = v;
    }
  });
  return {coef, n_iter, viol};
}

}  // namespace
}  // namespace apib

TORCH_LIBRARY_IMPL(apib, CPU, m) { m.impl("lasso_cd", &apib::lasso_cd_cpu); }
