// Fused CPU kernels of the fast path (cpgformer.nn.attention.kernels): attention across the cells of each
// site, forward and backward.
//
// Layouts (contiguous, T = float or double):
//   qkv [N, C, 3, H, D]  q (pre-scaled by D^-1/2) | k | v of every token, N = batch x sites
//   z   [N, C, H, D]     output
//
// z_{c} = sum_{c'} dropout(softmax_{c'}(q_c . k_{c'})) v_{c'} per site and head. Rows (one query
// cell) are processed one at a time against the site's keys and values copied cell-minor
// ([h][d][cell], padded to a multiple of 8 cells), so the C scores of a row are D vector FMAs
// and memory stays O(C) per row whatever C. Nothing of size C x C is stored: the backward
// recomputes each row's probabilities, and the dropout draws come from a counter-based hash of
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

struct Cells {
  int64_t N, C, H, D, CP;
  int64_t HD() const { return H * D; }
  int64_t token() const { return 3 * H * D; }
};

// Keys or values (part 1 or 2) of head h at one site -> out [D][CP] (padding left as is).
template <typename T>
void cell_minor(const T* site, const Cells& s, int64_t h, int part, T* out) {
  for (int64_t c = 0; c < s.C; ++c) {
    const T* src = site + c * s.token() + part * s.HD() + h * s.D;
    for (int64_t d = 0; d < s.D; ++d) out[d * s.CP + c] = src[d];
  }
}

// Probabilities of one row (query q, D values) against kt [D][CP]: p[c'] for c' < C, 0 beyond.
template <typename T>
void row_probs(const T* q, const T* __restrict kt, const Cells& s, T* __restrict p) {
  const int64_t CP = s.CP, C = s.C;
  for (int64_t c = 0; c < CP; ++c) p[c] = 0;
  for (int64_t d = 0; d < s.D; ++d) {
    const T a = q[d];
    const T* __restrict kr = kt + d * CP;
    for (int64_t c = 0; c < CP; ++c) p[c] += a * kr[c];
  }
  T m = p[0];
  for (int64_t c = 1; c < C; ++c) m = std::max(m, p[c]);
  T total = 0;
  for (int64_t c = 0; c < CP; ++c) {
    const T x = c < C ? std::exp(p[c] - m) : T(0);
    p[c] = x;
    total += x;
  }
  const T inv = T(1) / total;
  for (int64_t c = 0; c < CP; ++c) p[c] *= inv;
}

// Keep factors of a row: scale where kept, 0 where dropped (1 without dropout), 0 on padding.
template <typename T>
void row_keep(uint64_t seed, uint64_t row, int threshold, T scale, int64_t C, int64_t CP,
              int8_t* draws, T* keep) {
  if (threshold) row_draws(seed, row, C, draws);
  const int cut = threshold - 128;
  for (int64_t c = 0; c < CP; ++c)
    keep[c] = c >= C ? T(0) : threshold ? T(draws[c] >= cut) * scale : T(1);
}

template <typename T>
void cell_forward(const T* qkv, uint64_t seed, int threshold, double scale, T* z, const Cells& s,
                  int threads) {
  const int64_t C = s.C, H = s.H, D = s.D, CP = s.CP, HD = s.HD();
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> kt(D * CP, T(0)), vt(D * CP, T(0)), p(CP);
    std::vector<int8_t> draws(CP);
    std::vector<T> keep(CP);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < s.N; ++n) {
      const T* site = qkv + n * C * s.token();
      for (int64_t h = 0; h < H; ++h) {
        cell_minor(site, s, h, 1, kt.data());
        cell_minor(site, s, h, 2, vt.data());
        for (int64_t c = 0; c < C; ++c) {
          row_probs(site + c * s.token() + h * D, kt.data(), s, p.data());
          const uint64_t row = uint64_t((n * H + h) * C + c);
          row_keep<T>(seed, row, threshold, T(scale), C, CP, draws.data(), keep.data());
          T* zt = z + (n * C + c) * HD + h * D;
          for (int64_t d = 0; d < D; ++d) {
            const T* __restrict vr = vt.data() + d * CP;
            T acc = 0;
            for (int64_t x = 0; x < CP; ++x) acc += p[x] * keep[x] * vr[x];
            zt[d] = acc;
          }
        }
      }
    }
  }
}

template <typename T>
void cell_backward(const T* qkv, uint64_t seed, int threshold, double scale, const T* dz, T* dqkv,
                   const Cells& s, int threads) {
  const int64_t C = s.C, H = s.H, D = s.D, CP = s.CP, HD = s.HD(), token = s.token();
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> kt(D * CP, T(0)), vt(D * CP, T(0)), dkt(D * CP), dvt(D * CP), p(CP), ds(CP);
    std::vector<int8_t> draws(CP);
    std::vector<T> keep(CP);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < s.N; ++n) {
      const T* site = qkv + n * C * token;
      T* dsite = dqkv + n * C * token;
      for (int64_t h = 0; h < H; ++h) {
        cell_minor(site, s, h, 1, kt.data());
        cell_minor(site, s, h, 2, vt.data());
        std::fill(dkt.begin(), dkt.end(), T(0));
        std::fill(dvt.begin(), dvt.end(), T(0));
        for (int64_t c = 0; c < C; ++c) {
          const T* q = site + c * token + h * D;
          const T* g = dz + (n * C + c) * HD + h * D;
          row_probs(q, kt.data(), s, p.data());
          const uint64_t row = uint64_t((n * H + h) * C + c);
          row_keep<T>(seed, row, threshold, T(scale), C, CP, draws.data(), keep.data());
          // dp = (dz . v) * keep; ds = p * (dp - sum p dp)
          for (int64_t x = 0; x < CP; ++x) ds[x] = 0;
          for (int64_t d = 0; d < D; ++d) {
            const T a = g[d];
            const T* __restrict vr = vt.data() + d * CP;
            for (int64_t x = 0; x < CP; ++x) ds[x] += a * vr[x];
          }
          T row_sum = 0;
          for (int64_t x = 0; x < CP; ++x) {
            ds[x] *= keep[x];
            row_sum += p[x] * ds[x];
          }
          for (int64_t x = 0; x < CP; ++x) ds[x] = p[x] * (ds[x] - row_sum);
          T* dq = dsite + c * token + h * D;
          for (int64_t d = 0; d < D; ++d) {
            const T* __restrict kr = kt.data() + d * CP;
            T* __restrict dkr = dkt.data() + d * CP;
            T* __restrict dvr = dvt.data() + d * CP;
            const T a = q[d], b = g[d];
            T acc = 0;
            for (int64_t x = 0; x < CP; ++x) {
              acc += ds[x] * kr[x];
              dkr[x] += a * ds[x];
              dvr[x] += b * p[x] * keep[x];
            }
            dq[d] = acc;
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          T* dk = dsite + c * token + HD + h * D;
          T* dv = dsite + c * token + 2 * HD + h * D;
          for (int64_t d = 0; d < D; ++d) {
            dk[d] = dkt[d * CP + c];
            dv[d] = dvt[d * CP + c];
          }
        }
      }
    }
  }
}

Cells make_cells(int64_t N, int64_t C, int64_t H, int64_t D) {
  return Cells{N, C, H, D, (C + 7) / 8 * 8};
}

}  // namespace

extern "C" {

void cell_forward_f32(const float* qkv, uint64_t seed, int threshold, double scale, float* z,
                      int64_t N, int64_t C, int64_t H, int64_t D, int threads) {
  cell_forward<float>(qkv, seed, threshold, scale, z, make_cells(N, C, H, D), threads);
}
void cell_forward_f64(const double* qkv, uint64_t seed, int threshold, double scale, double* z,
                      int64_t N, int64_t C, int64_t H, int64_t D, int threads) {
  cell_forward<double>(qkv, seed, threshold, scale, z, make_cells(N, C, H, D), threads);
}
void cell_backward_f32(const float* qkv, uint64_t seed, int threshold, double scale,
                       const float* dz, float* dqkv, int64_t N, int64_t C, int64_t H, int64_t D,
                       int threads) {
  cell_backward<float>(qkv, seed, threshold, scale, dz, dqkv, make_cells(N, C, H, D), threads);
}
void cell_backward_f64(const double* qkv, uint64_t seed, int threshold, double scale,
                       const double* dz, double* dqkv, int64_t N, int64_t C, int64_t H,
                       int64_t D, int threads) {
  cell_backward<double>(qkv, seed, threshold, scale, dz, dqkv, make_cells(N, C, H, D), threads);
}
void cell_draws(uint64_t seed, int64_t rows, int64_t C, int8_t* out) {
  for (int64_t r = 0; r < rows; ++r) row_draws(seed, uint64_t(r), C, out + r * C);
}

}  // extern "C"
