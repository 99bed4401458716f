// Fused CPU kernels of the fast path (cpgformer.nn.attention.kernels): attention across the cells of each
// site, forward and backward.
//
// Layouts (contiguous, T = float or double):
//   qkv [N, C, 3, H, D]  q (pre-scaled by D^-1/2) | k | v of every token, N = batch x sites
//   z   [N, C, H, D]     output
//
// z_{c} = sum_{c'} dropout(softmax_{c'}(q_c . k_{c'})) v_{c'} per site and head. For each site and
// head the keys and values are copied cell-major ([cell][d]) and the query cells are taken in
// blocks of up to QBLOCK, transposed to [d][query] (padded to a multiple of 16): every score,
// softmax and output loop is then a vector loop over the block's query cells with a scalar key or
// value entry broadcast — no horizontal sums, and the exponentials of a whole block in one pass.
// Memory is O(C x QBLOCK) per thread whatever C. Nothing of size C x C is stored: the backward
// recomputes each block's probabilities, and the dropout draws come from a counter-based hash of
// (seed, row, cell) — the same draws in forward, backward and `cell_draws` (for tests), whatever
// the thread count. Sites are independent: the parallel loop over them needs no reduction.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels.h"

namespace {

inline uint64_t mix(uint64_t x) {  // the splitmix64 finaliser
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Draws (int8) of row `row` for cells [0, C): byte j % 8 of word j / 8 of the row's stream.
inline void row_draws(uint64_t seed, uint64_t row, int64_t C, int8_t* out) {
  const uint64_t key = mix(seed ^ mix(row));
  for (int64_t k = 0; k * 8 < C; ++k) {
    uint64_t word = mix(key + uint64_t(k));
    for (int64_t j = 0; j < 8 && k * 8 + j < C; ++j, word >>= 8) out[k * 8 + j] = int8_t(word & 0xff);
  }
}

constexpr int64_t QBLOCK = 64;

using cpgformer_kernels::Vec;
// A block of 16 query columns is NV vectors.
template <typename T>
constexpr int64_t NV = 16 / Vec<T>::lanes;

struct Cells {
  int64_t N, C, H, D;
  int64_t HD() const { return H * D; }
  int64_t token() const { return 3 * H * D; }
  // query columns of a block of `n` cells, padded to a multiple of 16
  static int64_t padded(int64_t n) { return (n + 15) / 16 * 16; }
};

// Per-thread buffers of one site-head: keys and values cell-major, and the block matrices.
template <typename T>
struct Work {
  std::vector<T> k, v, qt, st, pk, keep, m, sum, zt;
  std::vector<int8_t> draws;
  Work(const Cells& s)
      : k(s.C * s.D), v(s.C * s.D), qt(s.D * QBLOCK), st(s.C * QBLOCK), pk(s.C * QBLOCK),
        keep(s.C * QBLOCK), m(QBLOCK), sum(QBLOCK), zt(s.D * QBLOCK), draws(s.C) {}
};

// Keys and values of head h at one site -> k, v [C][D].
template <typename T, int64_t DK>
void gather_kv(const T* site, const Cells& s, int64_t h, T* __restrict k, T* __restrict v) {
  const int64_t D = DK ? DK : s.D, HD = s.HD();
  for (int64_t c = 0; c < s.C; ++c) {
    const T* src = site + c * s.token() + h * D;
    for (int64_t d = 0; d < D; ++d) {
      k[c * D + d] = src[HD + d];
      v[c * D + d] = src[2 * HD + d];
    }
  }
}

// Rows j < n of `base` (row j at base + j * stride, D values) -> out [D][QP], 0 on padding.
template <typename T>
void gather_block(const T* base, int64_t stride, int64_t D, int64_t n, int64_t QP, T* out) {
  std::fill(out, out + D * QP, T(0));
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; ++d) out[d * QP + j] = base[j * stride + d];
}

// The three products of a block; a [C][QP] is indexed (key cell x, query column j).
// out[x][j] = sum_d rows[x][d] * colsT[d][j]        (rows [C][D], colsT [D][QP])
template <typename T, int64_t DK>
void rows_by_cols(const T* __restrict rows, const T* __restrict colsT, int64_t C, int64_t D0,
                  int64_t QP, T* __restrict out) {
  const int64_t D = DK ? DK : D0;
  if constexpr (DK > 0) {  // the D column vectors of 16 columns stay in registers over all rows
    using V = Vec<T>;
    for (int64_t jb = 0; jb < QP; jb += 16) {
      typename V::type col[DK][NV<T>];
      for (int64_t d = 0; d < DK; ++d)
        for (int64_t u = 0; u < NV<T>; ++u) col[d][u] = V::load(colsT + d * QP + jb + u * V::lanes);
      for (int64_t x = 0; x < C; ++x) {
        typename V::type acc[NV<T>] = {};
        for (int64_t d = 0; d < DK; ++d) {
          const T a = rows[x * DK + d];
          for (int64_t u = 0; u < NV<T>; ++u) acc[u] += a * col[d][u];
        }
        for (int64_t u = 0; u < NV<T>; ++u) V::store(out + x * QP + jb + u * V::lanes, acc[u]);
      }
    }
  } else {
    for (int64_t x = 0; x < C; ++x) {
      T* __restrict row = out + x * QP;
      for (int64_t j = 0; j < QP; ++j) row[j] = 0;
      for (int64_t d = 0; d < D; ++d) {
        const T a = rows[x * D + d];
        const T* __restrict cr = colsT + d * QP;
#pragma omp simd
        for (int64_t j = 0; j < QP; ++j) row[j] += a * cr[j];
      }
    }
  }
}

// outT[d][j] = sum_x vals[x][d] * a[x][j]             (vals [C][D], outT [D][QP])
template <typename T, int64_t DK>
void vals_by_a(const T* __restrict a, const T* __restrict vals, int64_t C, int64_t D0,
               int64_t QP, T* __restrict outT) {
  const int64_t D = DK ? DK : D0;
  if constexpr (DK > 0) {  // D accumulators of 16 columns in registers over all keys
    using V = Vec<T>;
    for (int64_t jb = 0; jb < QP; jb += 16) {
      typename V::type acc[DK][NV<T>] = {};
      for (int64_t x = 0; x < C; ++x) {
        typename V::type av[NV<T>];
        for (int64_t u = 0; u < NV<T>; ++u) av[u] = V::load(a + x * QP + jb + u * V::lanes);
        for (int64_t d = 0; d < DK; ++d) {
          const T b = vals[x * DK + d];
          for (int64_t u = 0; u < NV<T>; ++u) acc[d][u] += b * av[u];
        }
      }
      for (int64_t d = 0; d < DK; ++d)
        for (int64_t u = 0; u < NV<T>; ++u) V::store(outT + d * QP + jb + u * V::lanes, acc[d][u]);
    }
  } else {
    std::fill(outT, outT + D * QP, T(0));
    for (int64_t x = 0; x < C; ++x) {
      const T* __restrict ar = a + x * QP;
      for (int64_t d = 0; d < D; ++d) {
        const T b = vals[x * D + d];
        T* __restrict orow = outT + d * QP;
#pragma omp simd
        for (int64_t j = 0; j < QP; ++j) orow[j] += b * ar[j];
      }
    }
  }
}

// out[x][d] += sum_{j < n} a[x][j] * base[j * stride + d]   (the rows of the block's queries)
template <typename T, int64_t DK>
void a_by_rows(const T* __restrict a, const T* __restrict base, int64_t stride, int64_t n,
               int64_t C, int64_t D0, int64_t QP, T* __restrict out) {
  const int64_t D = DK ? DK : D0;
  if constexpr (DK > 0 && DK % Vec<T>::lanes == 0) {  // a row of D values is ND vectors
    using V = Vec<T>;
    constexpr int64_t ND = DK / V::lanes;
    for (int64_t x = 0; x < C; ++x) {
      const T* __restrict ar = a + x * QP;
      typename V::type acc[2][ND] = {};  // two chains: even and odd j
      int64_t j = 0;
      for (; j + 1 < n; j += 2)
        for (int64_t e = 0; e < 2; ++e)
          for (int64_t u = 0; u < ND; ++u)
            acc[e][u] += ar[j + e] * V::load(base + (j + e) * stride + u * V::lanes);
      for (; j < n; ++j)
        for (int64_t u = 0; u < ND; ++u) acc[0][u] += ar[j] * V::load(base + j * stride + u * V::lanes);
      for (int64_t u = 0; u < ND; ++u) {
        typename V::type sum = V::load(out + x * DK + u * V::lanes) + acc[0][u] + acc[1][u];
        V::store(out + x * DK + u * V::lanes, sum);
      }
    }
  } else {
    for (int64_t x = 0; x < C; ++x) {
      const T* __restrict ar = a + x * QP;
      for (int64_t j = 0; j < n; ++j) {
        const T w = ar[j];
        const T* __restrict br = base + j * stride;
        for (int64_t d = 0; d < D; ++d) out[x * D + d] += w * br[d];
      }
    }
  }
}

// Scores st [C][QP] (from rows_by_cols) -> softmax over the C keys of each query column.
template <typename T>
void softmax_columns(int64_t C, int64_t QP, T* __restrict st, T* __restrict m, T* __restrict sum) {
  for (int64_t j = 0; j < QP; ++j) m[j] = st[j];
  for (int64_t x = 1; x < C; ++x) {
    const T* __restrict row = st + x * QP;
#pragma omp simd
    for (int64_t j = 0; j < QP; ++j) m[j] = std::max(m[j], row[j]);
  }
  for (int64_t j = 0; j < QP; ++j) sum[j] = 0;
  for (int64_t x = 0; x < C; ++x) {
    T* __restrict row = st + x * QP;
#pragma omp simd
    for (int64_t j = 0; j < QP; ++j) {
      row[j] = std::exp(row[j] - m[j]);
      sum[j] += row[j];
    }
  }
  for (int64_t j = 0; j < QP; ++j) sum[j] = T(1) / sum[j];
  for (int64_t x = 0; x < C; ++x) {
    T* __restrict row = st + x * QP;
#pragma omp simd
    for (int64_t j = 0; j < QP; ++j) row[j] *= sum[j];
  }
}

// Keep factors keep [C][QP] of query cells [c0, c0 + n) of site n, head h: scale where kept, 0
// where dropped (padding columns 0).
template <typename T>
void block_keep(uint64_t seed, const Cells& s, int64_t site, int64_t h, int64_t c0, int64_t n,
                int64_t QP, int threshold, T scale, int8_t* draws, T* keep) {
  const int cut = threshold - 128;
  std::fill(keep, keep + s.C * QP, T(0));
  for (int64_t j = 0; j < n; ++j) {
    row_draws(seed, uint64_t((site * s.H + h) * s.C + c0 + j), s.C, draws);
    for (int64_t x = 0; x < s.C; ++x) keep[x * QP + j] = draws[x] >= cut ? scale : T(0);
  }
}

template <typename T, int64_t DK>
void cell_forward(const T* qkv, uint64_t seed, int threshold, double scale, T* z, const Cells& s,
                  int threads) {
  const int64_t C = s.C, H = s.H, D = DK ? DK : s.D, HD = s.HD(), token = s.token();
#pragma omp parallel num_threads(threads)
  {
    Work<T> w(s);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < s.N; ++n) {
      const T* site = qkv + n * C * token;
      for (int64_t h = 0; h < H; ++h) {
        gather_kv<T, DK>(site, s, h, w.k.data(), w.v.data());
        for (int64_t c0 = 0; c0 < C; c0 += QBLOCK) {
          const int64_t nq = std::min(QBLOCK, C - c0), QP = Cells::padded(nq);
          gather_block(site + c0 * token + h * D, token, D, nq, QP, w.qt.data());
          T* p = w.st.data();
          rows_by_cols<T, DK>(w.k.data(), w.qt.data(), C, D, QP, p);
          softmax_columns(C, QP, p, w.m.data(), w.sum.data());
          if (threshold) {
            block_keep(seed, s, n, h, c0, nq, QP, threshold, T(scale), w.draws.data(),
                       w.keep.data());
            for (int64_t i = 0; i < C * QP; ++i) p[i] *= w.keep[i];
          }
          vals_by_a<T, DK>(p, w.v.data(), C, D, QP, w.zt.data());
          for (int64_t j = 0; j < nq; ++j) {
            T* out = z + (n * C + c0 + j) * HD + h * D;
            for (int64_t d = 0; d < D; ++d) out[d] = w.zt[d * QP + j];
          }
        }
      }
    }
  }
}

template <typename T, int64_t DK>
void cell_backward(const T* qkv, uint64_t seed, int threshold, double scale, const T* dz, T* dqkv,
                   const Cells& s, int threads) {
  const int64_t C = s.C, H = s.H, D = DK ? DK : s.D, HD = s.HD(), token = s.token();
#pragma omp parallel num_threads(threads)
  {
    Work<T> w(s);
    std::vector<T> dzt(D * QBLOCK), dqt(D * QBLOCK), dk(C * D), dv(C * D), r(QBLOCK);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < s.N; ++n) {
      const T* site = qkv + n * C * token;
      T* dsite = dqkv + n * C * token;
      for (int64_t h = 0; h < H; ++h) {
        gather_kv<T, DK>(site, s, h, w.k.data(), w.v.data());
        std::fill(dk.begin(), dk.end(), T(0));
        std::fill(dv.begin(), dv.end(), T(0));
        for (int64_t c0 = 0; c0 < C; c0 += QBLOCK) {
          const int64_t nq = std::min(QBLOCK, C - c0), QP = Cells::padded(nq);
          const T* qrows = site + c0 * token + h * D;
          const T* grows = dz + (n * C + c0) * HD + h * D;
          gather_block(qrows, token, D, nq, QP, w.qt.data());
          gather_block(grows, HD, D, nq, QP, dzt.data());
          T* __restrict p = w.st.data();
          rows_by_cols<T, DK>(w.k.data(), w.qt.data(), C, D, QP, p);
          softmax_columns(C, QP, p, w.m.data(), w.sum.data());
          T* __restrict dp = w.pk.data();  // dp, then ds
          const T* __restrict keep = w.keep.data();
          // dv[x] += sum_j p[x][j] keep[x][j] dz[j]
          if (threshold) {
            block_keep(seed, s, n, h, c0, nq, QP, threshold, T(scale), w.draws.data(),
                       w.keep.data());
            for (int64_t i = 0; i < C * QP; ++i) dp[i] = p[i] * keep[i];
            a_by_rows<T, DK>(dp, grows, HD, nq, C, D, QP, dv.data());
          } else {
            a_by_rows<T, DK>(p, grows, HD, nq, C, D, QP, dv.data());
          }
          // dp[x][j] = keep[x][j] * (v[x] . dz[j]);  r[j] = sum_x p[x][j] dp[x][j]
          rows_by_cols<T, DK>(w.v.data(), dzt.data(), C, D, QP, dp);
          std::fill(r.begin(), r.begin() + QP, T(0));
          T* __restrict rr = r.data();
          for (int64_t x = 0; x < C; ++x) {
            T* __restrict dpr = dp + x * QP;
            const T* __restrict pr = p + x * QP;
            if (threshold) {
              const T* __restrict kr = keep + x * QP;
#pragma omp simd
              for (int64_t j = 0; j < QP; ++j) dpr[j] *= kr[j];
            }
#pragma omp simd
            for (int64_t j = 0; j < QP; ++j) rr[j] += pr[j] * dpr[j];
          }
          // ds = p * (dp - r);  dq[j] = sum_x ds[x][j] k[x];  dk[x] += sum_j ds[x][j] q[j]
          for (int64_t x = 0; x < C; ++x) {
            T* __restrict ds = dp + x * QP;
            const T* __restrict pr = p + x * QP;
#pragma omp simd
            for (int64_t j = 0; j < QP; ++j) ds[j] = pr[j] * (ds[j] - rr[j]);
          }
          vals_by_a<T, DK>(dp, w.k.data(), C, D, QP, dqt.data());
          a_by_rows<T, DK>(dp, qrows, token, nq, C, D, QP, dk.data());
          for (int64_t j = 0; j < nq; ++j) {
            T* dq = dsite + (c0 + j) * token + h * D;
            for (int64_t d = 0; d < D; ++d) dq[d] = dqt[d * QP + j];
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          T* out = dsite + c * token + h * D;
          std::copy(dk.data() + c * D, dk.data() + (c + 1) * D, out + HD);
          std::copy(dv.data() + c * D, dv.data() + (c + 1) * D, out + 2 * HD);
        }
      }
    }
  }
}

Cells make_cells(int64_t N, int64_t C, int64_t H, int64_t D) { return Cells{N, C, H, D}; }

// The published head size (8) with the loops over d unrolled and kept in registers; any other
// size through the general loops.
template <typename T>
void forward(const T* qkv, uint64_t seed, int threshold, double scale, T* z, const Cells& s,
             int threads) {
  if (s.D == 8)
    cell_forward<T, 8>(qkv, seed, threshold, scale, z, s, threads);
  else
    cell_forward<T, 0>(qkv, seed, threshold, scale, z, s, threads);
}

template <typename T>
void backward(const T* qkv, uint64_t seed, int threshold, double scale, const T* dz, T* dqkv,
              const Cells& s, int threads) {
  if (s.D == 8)
    cell_backward<T, 8>(qkv, seed, threshold, scale, dz, dqkv, s, threads);
  else
    cell_backward<T, 0>(qkv, seed, threshold, scale, dz, dqkv, s, threads);
}

}  // namespace

extern "C" {

void cell_forward_f32(const float* qkv, uint64_t seed, int threshold, double scale, float* z,
                      int64_t N, int64_t C, int64_t H, int64_t D, int threads) {
  forward<float>(qkv, seed, threshold, scale, z, make_cells(N, C, H, D), threads);
}
void cell_forward_f64(const double* qkv, uint64_t seed, int threshold, double scale, double* z,
                      int64_t N, int64_t C, int64_t H, int64_t D, int threads) {
  forward<double>(qkv, seed, threshold, scale, z, make_cells(N, C, H, D), threads);
}
void cell_backward_f32(const float* qkv, uint64_t seed, int threshold, double scale,
                       const float* dz, float* dqkv, int64_t N, int64_t C, int64_t H, int64_t D,
                       int threads) {
  backward<float>(qkv, seed, threshold, scale, dz, dqkv, make_cells(N, C, H, D), threads);
}
void cell_backward_f64(const double* qkv, uint64_t seed, int threshold, double scale,
                       const double* dz, double* dqkv, int64_t N, int64_t C, int64_t H,
                       int64_t D, int threads) {
  backward<double>(qkv, seed, threshold, scale, dz, dqkv, make_cells(N, C, H, D), threads);
}
void cell_draws(uint64_t seed, int64_t rows, int64_t C, int8_t* out) {
  for (int64_t r = 0; r < rows; ++r) row_draws(seed, uint64_t(r), C, out + r * C);
}

}  // extern "C"
