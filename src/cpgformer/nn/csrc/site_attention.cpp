// Fused CPU kernels of the fast path (cpgformer.nn.attention.kernels): window attention along sites,
// forward and backward.
//
// Layouts (contiguous, T = float or double; P = W rounded up to a multiple of 8):
//   qkv   [B, L, C, 3, H, D]  q (pre-scaled by D^-1/2) | k | v of every token
//   relt  [B, L, H, D, P]     projected relative encodings of each site's W window slots,
//                             slot-minor (the P - W padding slots are never used)
//   u, v  [H, D]              content and position biases
//   draws [B, L, C, H, W]     int8 dropout draws (kept where draw >= threshold - 128), or null
//   z     [B, L, C, H, D]     output
//   probs [B, L, C, H, W]     softmax probabilities before dropout (0 on slots outside the segment)
//
// score(i, o) = (q_i + u) . k_{i+o-w} + (q_i + v) . rel_{i,o} over the slots o whose key lies in
// [0, L); z_i = sum_o dropout(softmax(score))_o v_{i+o-w}.
//
// Work: each batch entry's sites are split into `parts` ranges (a number fixed by the caller,
// independent of the thread count, so results are too), run on OpenMP threads (the library links
// the libgomp PyTorch has loaded: its threads, no second pool). Within a range, tiles of TILE
// sites x CELL_BLOCK cells: the tile's keys and values are copied site-minor
// ([cell][h*D+d][site]), so that the W scores of a token and head are a sum over d of
// (scalar x contiguous run of W sites): vector FMAs over the window slots, no horizontal sums.
// The backward accumulates key and value gradients in the same layout; gradients that fall on
// another range's sites (w either side) go to a per-range halo buffer, added after the parallel
// loop in a fixed order, as are the bias gradients.
// Compiled with -ffast-math (vectorised exp): slots outside the segment are never given an
// infinite score; their probabilities are set to 0.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels.h"

namespace {

using cpgformer_kernels::Vec;

// A tile: TILE query sites x CELL_BLOCK cells, whose keys and values (TILE + P - 1 sites per row)
// are copied site-minor together; the tile is then walked one cell at a time along its sites, so
// that the cell's window rows slide by one site per step and stay in the L1 cache. 8 x 64 with the
// head-size-8 loops unrolled: of 4 x 128, 8 x 64 and 16 x 32, the fastest at 20 and 122 cells
// (the gather's cache misses fall with more cells per tile).
constexpr int64_t CELL_BLOCK = 8;
constexpr int64_t TILE = 64;

struct Shape {
  int64_t L, C, H, D, W, P;
  int64_t w() const { return (W - 1) / 2; }
  int64_t HD() const { return H * D; }
  int64_t token() const { return 3 * H * D; }
  int64_t site() const { return C * 3 * H * D; }
};

// Part `part` (1 = k, 2 = v) of cells [c, c + n) at key sites i0 - w + r, r in [0, R) ->
// out [n][HD][R] (0 for sites outside the segment).
template <typename T>
void gather_tile(const T* qkv, const Shape& s, int64_t c, int64_t n, int part, int64_t i0,
                 int64_t R, T* out) {
  const int64_t HD = s.HD();
  for (int64_t cc = 0; cc < n; ++cc)
    for (int64_t r = 0; r < R; ++r) {
      const int64_t j = i0 - s.w() + r;
      T* dst = out + cc * HD * R + r;
      if (j < 0 || j >= s.L) {
        for (int64_t e = 0; e < HD; ++e) dst[e * R] = 0;
        continue;
      }
      const T* src = qkv + j * s.site() + (c + cc) * s.token() + part * HD;
      for (int64_t e = 0; e < HD; ++e) dst[e * R] = src[e];
    }
}

// The adjoint of gather_tile: adds tile gradients onto part `part` of the qkv gradient for the
// sites [s0, s1) the call owns, and onto `halo` [2w][C][2][HD] for the w sites either side
// (owned by other calls: the caller adds them afterwards).
template <typename T>
void scatter_tile(const T* tile, const Shape& s, int64_t c, int64_t n, int part, int64_t i0,
                  int64_t R, int64_t s0, int64_t s1, T* dqkv, T* halo) {
  const int64_t HD = s.HD(), w = s.w();
  for (int64_t cc = 0; cc < n; ++cc)
    for (int64_t r = 0; r < R; ++r) {
      const int64_t j = i0 - w + r;
      if (j < 0 || j >= s.L || j < s0 - w || j >= s1 + w) continue;
      const T* src = tile + cc * HD * R + r;
      T* dst;
      if (j >= s0 && j < s1)
        dst = dqkv + j * s.site() + (c + cc) * s.token() + part * HD;
      else
        dst = halo + (((j < s0 ? j - (s0 - w) : w + j - s1) * s.C + c + cc) * 2 + part - 1) * HD;
      for (int64_t e = 0; e < HD; ++e) dst[e] += src[e * R];
    }
}

template <typename T, int PC, int DK>
void site_forward(const T* qkv, const T* relt, const T* ub, const T* vb, const int8_t* draws,
                  int threshold, T scale, T* z, T* probs, const Shape& s, int64_t s0, int64_t s1) {
  const int64_t P = PC ? PC : s.P, L = s.L, C = s.C, H = s.H, D = DK ? DK : s.D, W = s.W,
                w = s.w();
  const int64_t HD = s.HD(), token = s.token(), site = s.site(), R = TILE + P - 1;
  const int cut = threshold - 128;
  std::vector<T> kt_(CELL_BLOCK * HD * R), sc_(H * P), pw_(H * P), acc_(HD);
  T* __restrict kt = kt_.data();
  T* __restrict sc = sc_.data();
  T* __restrict pw = pw_.data();
  T* __restrict acc = acc_.data();
  for (int64_t cb = 0; cb < C; cb += CELL_BLOCK) {
    const int64_t n = std::min(CELL_BLOCK, C - cb);
    for (int64_t i0 = s0; i0 < s1; i0 += TILE) {
      gather_tile(qkv, s, cb, n, 1, i0, R, kt);
      // one cell at a time along the tile: its window rows slide by one site per step and
      // stay in the L1 cache
      for (int64_t cc = 0; cc < n; ++cc)
        for (int64_t i = i0; i < std::min(s1, i0 + TILE); ++i) {
          const int64_t lo = std::max<int64_t>(0, w - i), hi = std::min<int64_t>(W, L + w - i);
          const T* __restrict rt = relt + i * HD * P;
          {
          const int64_t t = i * C + cb + cc;
          const T* __restrict q = qkv + t * token;
          for (int64_t x = 0; x < H * P; ++x) sc[x] = 0;
          for (int64_t h = 0; h < H; ++h) {
            T* __restrict sh = sc + h * P;
            for (int64_t e = h * D; e < (h + 1) * D; ++e) {
              const T a = q[e] + ub[e], b = q[e] + vb[e];
              const T* __restrict kr = kt + (cc * HD + e) * R + (i - i0);
              const T* __restrict rr = rt + e * P;
#pragma GCC ivdep
              for (int64_t o = 0; o < P; ++o) sh[o] += a * kr[o] + b * rr[o];
            }
          }
          const int8_t* dr = draws ? draws + t * H * W : nullptr;
          T* pt = probs ? probs + t * H * W : nullptr;
          for (int64_t h = 0; h < H; ++h) {
            T* __restrict sh = sc + h * P;
            T* __restrict ph = pw + h * P;
            T m = sh[lo];
            for (int64_t o = lo + 1; o < hi; ++o) m = std::max(m, sh[o]);
            T total = 0;
            for (int64_t o = 0; o < P; ++o) {
              const T x = (o >= lo && o < hi) ? std::exp(sh[o] - m) : T(0);
              ph[o] = x;
              total += x;
            }
            const T inv = T(1) / total;
            for (int64_t o = 0; o < P; ++o) ph[o] *= inv;
            if (pt)
              for (int64_t o = 0; o < W; ++o) pt[h * W + o] = ph[o];
            if (dr)  // branch-free: drops are random, a branch would be mispredicted
              for (int64_t o = 0; o < W; ++o) ph[o] *= T(dr[h * W + o] >= cut) * scale;
          }
          T* __restrict zt = z + t * HD;
          const T* values = qkv + (i - w) * site + (cb + cc) * token + 2 * HD;
          if constexpr (DK > 0 && DK % Vec<T>::lanes == 0) {
            // per head: D / lanes vector accumulators in registers, two chains (even, odd slot)
            using V = Vec<T>;
            constexpr int64_t ND = DK / V::lanes;
            for (int64_t h = 0; h < H; ++h) {
              typename V::type a0[ND] = {}, a1[ND] = {};
              const T* __restrict ph = pw + h * P;
              const T* hv = values + h * DK;
              int64_t o = lo;
              for (; o + 1 < hi; o += 2)
                for (int64_t u = 0; u < ND; ++u) {
                  a0[u] += ph[o] * V::load(hv + o * site + u * V::lanes);
                  a1[u] += ph[o + 1] * V::load(hv + (o + 1) * site + u * V::lanes);
                }
              if (o < hi)
                for (int64_t u = 0; u < ND; ++u) a0[u] += ph[o] * V::load(hv + o * site + u * V::lanes);
              for (int64_t u = 0; u < ND; ++u) V::store(zt + h * DK + u * V::lanes, a0[u] + a1[u]);
            }
          } else {
            for (int64_t e = 0; e < HD; ++e) acc[e] = 0;
            for (int64_t o = lo; o < hi; ++o) {
              const T* __restrict val = values + o * site;
              for (int64_t h = 0; h < H; ++h) {
                const T a = pw[h * P + o];
#pragma GCC ivdep
                for (int64_t d = 0; d < D; ++d) acc[h * D + d] += a * val[h * D + d];
              }
            }
            for (int64_t e = 0; e < HD; ++e) zt[e] = acc[e];
          }
        }
      }
    }
  }
}

template <typename T, int PC, int DK>
void site_backward(const T* qkv, const T* relt, const T* ub, const T* vb, const T* probs,
                   const int8_t* draws, int threshold, T scale, const T* dz, T* dqkv, T* drelt,
                   T* du, T* dv, T* halo, const Shape& s, int64_t s0, int64_t s1) {
  const int64_t P = PC ? PC : s.P, C = s.C, H = s.H, D = DK ? DK : s.D, W = s.W;
  const int64_t HD = s.HD(), token = s.token(), site = s.site(), R = TILE + P - 1;
  const int cut = threshold - 128;
  const int64_t block = CELL_BLOCK * HD * R;
  std::vector<T> kt_(block), vt_(block), dkt_(block), dvt_(block);
  std::vector<T> pp_(H * P, T(0)), kept_(H * P, T(0)), ds_(H * P);
  T* __restrict kt = kt_.data();
  T* __restrict vt = vt_.data();
  T* __restrict dkt = dkt_.data();
  T* __restrict dvt = dvt_.data();
  T* __restrict pp = pp_.data();
  T* __restrict kept = kept_.data();
  T* __restrict ds = ds_.data();
  // key and value gradients are added tile by tile, rel gradients cell by cell
  std::fill(dqkv + s0 * site, dqkv + s1 * site, T(0));
  std::fill(drelt + s0 * HD * P, drelt + s1 * HD * P, T(0));
  for (int64_t cb = 0; cb < C; cb += CELL_BLOCK) {
    const int64_t n = std::min(CELL_BLOCK, C - cb);
    for (int64_t i0 = s0; i0 < s1; i0 += TILE) {
      gather_tile(qkv, s, cb, n, 1, i0, R, kt);
      gather_tile(qkv, s, cb, n, 2, i0, R, vt);
      std::fill(dkt, dkt + n * HD * R, T(0));
      std::fill(dvt, dvt + n * HD * R, T(0));
      for (int64_t cc = 0; cc < n; ++cc)  // one cell at a time, as in the forward
        for (int64_t i = i0; i < std::min(s1, i0 + TILE); ++i) {
          const T* __restrict rt = relt + i * HD * P;
          T* __restrict drt = drelt + i * HD * P;
          {
          const int64_t t = i * C + cb + cc;
          const T* __restrict q = qkv + t * token;
          const T* __restrict g = dz + t * HD;
          const T* __restrict p = probs + t * H * W;
          const int8_t* dr = draws ? draws + t * H * W : nullptr;
          for (int64_t h = 0; h < H; ++h)  // padding slots stay 0
            for (int64_t o = 0; o < W; ++o) pp[h * P + o] = p[h * W + o];
          if (dr)  // branch-free, as in the forward
            for (int64_t h = 0; h < H; ++h)
              for (int64_t o = 0; o < W; ++o) kept[h * P + o] = T(dr[h * W + o] >= cut) * scale;
          else
            for (int64_t h = 0; h < H; ++h)
              for (int64_t o = 0; o < W; ++o) kept[h * P + o] = T(1);
          // dp = (dz . v) * keep * scale; ds = p * (dp - sum_o p dp)
          for (int64_t x = 0; x < H * P; ++x) ds[x] = 0;
          for (int64_t h = 0; h < H; ++h) {
            T* __restrict dh = ds + h * P;
            for (int64_t e = h * D; e < (h + 1) * D; ++e) {
              const T a = g[e];
              const T* __restrict vr = vt + (cc * HD + e) * R + (i - i0);
#pragma GCC ivdep
              for (int64_t o = 0; o < P; ++o) dh[o] += a * vr[o];
            }
          }
          for (int64_t h = 0; h < H; ++h) {
            T* __restrict dh = ds + h * P;
            T* __restrict kh = kept + h * P;
            const T* __restrict ph = pp + h * P;
            T row = 0;
            for (int64_t o = 0; o < P; ++o) {
              dh[o] *= kh[o];
              row += ph[o] * dh[o];
              kh[o] *= ph[o];  // the dropped probability
            }
            for (int64_t o = 0; o < P; ++o) dh[o] = ph[o] * (dh[o] - row);
          }
          T* __restrict dq = dqkv + t * token;
          for (int64_t h = 0; h < H; ++h) {
            const T* __restrict dh = ds + h * P;
            const T* __restrict kh = kept + h * P;
            for (int64_t e = h * D; e < (h + 1) * D; ++e) {
              const int64_t at = (cc * HD + e) * R + (i - i0);
              const T* __restrict kr = kt + at;
              const T* __restrict rr = rt + e * P;
              T* __restrict dkr = dkt + at;
              T* __restrict dvr = dvt + at;
              T* __restrict drr = drt + e * P;
              const T a = q[e] + ub[e], b = q[e] + vb[e], ge = g[e];
              T dqu = 0, dqv = 0;
#pragma GCC ivdep
              for (int64_t o = 0; o < P; ++o) {
                dqu += dh[o] * kr[o];
                dqv += dh[o] * rr[o];
                dkr[o] += a * dh[o];
                dvr[o] += ge * kh[o];
                drr[o] += b * dh[o];
              }
              dq[e] = dqu + dqv;
              du[e] += dqu;
              dv[e] += dqv;
            }
          }
        }
      }
      scatter_tile(dkt, s, cb, n, 1, i0, R, s0, s1, dqkv, halo);
      scatter_tile(dvt, s, cb, n, 2, i0, R, s0, s1, dqkv, halo);
    }
  }
}

template <typename T, int DK>
void forward_dispatch(const T* qkv, const T* relt, const T* ub, const T* vb, const int8_t* draws,
                      int threshold, T scale, T* z, T* probs, const Shape& s, int64_t s0,
                      int64_t s1) {
  switch (s.P) {
    case 8: return site_forward<T, 8, DK>(qkv, relt, ub, vb, draws, threshold, scale, z, probs, s, s0, s1);
    case 16: return site_forward<T, 16, DK>(qkv, relt, ub, vb, draws, threshold, scale, z, probs, s, s0, s1);
    case 24: return site_forward<T, 24, DK>(qkv, relt, ub, vb, draws, threshold, scale, z, probs, s, s0, s1);
    case 32: return site_forward<T, 32, DK>(qkv, relt, ub, vb, draws, threshold, scale, z, probs, s, s0, s1);
    default: return site_forward<T, 0, DK>(qkv, relt, ub, vb, draws, threshold, scale, z, probs, s, s0, s1);
  }
}

template <typename T, int DK>
void backward_dispatch(const T* qkv, const T* relt, const T* ub, const T* vb, const T* probs,
                       const int8_t* draws, int threshold, T scale, const T* dz, T* dqkv,
                       T* drelt, T* du, T* dv, T* halo, const Shape& s, int64_t s0,
                       int64_t s1) {
  switch (s.P) {
    case 8: return site_backward<T, 8, DK>(qkv, relt, ub, vb, probs, draws, threshold, scale, dz, dqkv, drelt, du, dv, halo, s, s0, s1);
    case 16: return site_backward<T, 16, DK>(qkv, relt, ub, vb, probs, draws, threshold, scale, dz, dqkv, drelt, du, dv, halo, s, s0, s1);
    case 24: return site_backward<T, 24, DK>(qkv, relt, ub, vb, probs, draws, threshold, scale, dz, dqkv, drelt, du, dv, halo, s, s0, s1);
    case 32: return site_backward<T, 32, DK>(qkv, relt, ub, vb, probs, draws, threshold, scale, dz, dqkv, drelt, du, dv, halo, s, s0, s1);
    default: return site_backward<T, 0, DK>(qkv, relt, ub, vb, probs, draws, threshold, scale, dz, dqkv, drelt, du, dv, halo, s, s0, s1);
  }
}

Shape make_shape(int64_t L, int64_t C, int64_t H, int64_t D, int64_t W) {
  return Shape{L, C, H, D, W, (W + 7) / 8 * 8};
}

// Work item k of B x parts: batch entry k / parts, sites [s0, s1) of part k % parts (the split
// of cpgformer.nn.attention.cores._split: part * L / parts).
struct Item {
  int64_t b, s0, s1;
};
Item item(int64_t k, int64_t parts, int64_t L) {
  const int64_t part = k % parts;
  return Item{k / parts, part * L / parts, (part + 1) * L / parts};
}

template <typename T>
void forward_all(const T* qkv, const T* relt, const T* ub, const T* vb, const int8_t* draws,
                 int threshold, T scale, T* z, T* probs, int64_t B, const Shape& s,
                 int64_t parts, int threads) {
  const int64_t per_qkv = s.L * s.site(), per_rel = s.L * s.HD() * s.P;
  const int64_t per_z = s.L * s.C * s.HD(), per_slot = s.L * s.C * s.H * s.W;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t k = 0; k < B * parts; ++k) {
    const Item it = item(k, parts, s.L);
    // the published head size (8) with its loops unrolled; any other through the general loops
    (s.D == 8 ? forward_dispatch<T, 8> : forward_dispatch<T, 0>)(
        qkv + it.b * per_qkv, relt + it.b * per_rel, ub, vb,
        draws ? draws + it.b * per_slot : nullptr, threshold, scale, z + it.b * per_z,
        probs ? probs + it.b * per_slot : nullptr, s, it.s0, it.s1);
  }
}

template <typename T>
void backward_all(const T* qkv, const T* relt, const T* ub, const T* vb, const T* probs,
                  const int8_t* draws, int threshold, T scale, const T* dz, T* dqkv, T* drelt,
                  T* du, T* dv, int64_t B, const Shape& s, int64_t parts, int threads) {
  const int64_t per_qkv = s.L * s.site(), per_rel = s.L * s.HD() * s.P;
  const int64_t per_z = s.L * s.C * s.HD(), per_slot = s.L * s.C * s.H * s.W;
  const int64_t HD = s.HD(), w = s.w(), n = B * parts, per_halo = 2 * w * s.C * 2 * HD;
  std::vector<T> bias(2 * n * HD, T(0)), halos(n * per_halo, T(0));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t k = 0; k < n; ++k) {
    const Item it = item(k, parts, s.L);
    (s.D == 8 ? backward_dispatch<T, 8> : backward_dispatch<T, 0>)(qkv + it.b * per_qkv, relt + it.b * per_rel, ub, vb,
                         probs + it.b * per_slot, draws ? draws + it.b * per_slot : nullptr,
                         threshold, scale, dz + it.b * per_z, dqkv + it.b * per_qkv,
                         drelt + it.b * per_rel, bias.data() + 2 * k * HD,
                         bias.data() + (2 * k + 1) * HD, halos.data() + k * per_halo, s, it.s0,
                         it.s1);
  }
  // then, in a fixed order: the halo key and value gradients, the bias gradients
  std::fill(du, du + HD, T(0));
  std::fill(dv, dv + HD, T(0));
  for (int64_t k = 0; k < n; ++k) {
    const Item it = item(k, parts, s.L);
    for (int64_t r = 0; r < 2 * w; ++r) {
      const int64_t j = r < w ? it.s0 - w + r : it.s1 + r - w;
      if (j < 0 || j >= s.L) continue;
      for (int64_t c = 0; c < s.C; ++c) {
        const T* src = halos.data() + k * per_halo + (r * s.C + c) * 2 * HD;
        T* dst = dqkv + it.b * per_qkv + j * s.site() + c * s.token() + HD;
        for (int64_t e = 0; e < 2 * HD; ++e) dst[e] += src[e];
      }
    }
    for (int64_t e = 0; e < HD; ++e) {
      du[e] += bias[2 * k * HD + e];
      dv[e] += bias[(2 * k + 1) * HD + e];
    }
  }
}

}  // namespace

extern "C" {

#define CPG_FORWARD(NAME, T)                                                                    \
  void NAME(const T* qkv, const T* relt, const T* ub, const T* vb, const int8_t* draws,        \
            int threshold, double scale, T* z, T* probs, int64_t B, int64_t L, int64_t C,       \
            int64_t H, int64_t D, int64_t W, int64_t parts, int threads) {                      \
    forward_all<T>(qkv, relt, ub, vb, draws, threshold, T(scale), z, probs, B,                  \
                   make_shape(L, C, H, D, W), parts, threads);                                  \
  }
#define CPG_BACKWARD(NAME, T)                                                                   \
  void NAME(const T* qkv, const T* relt, const T* ub, const T* vb, const T* probs,             \
            const int8_t* draws, int threshold, double scale, const T* dz, T* dqkv, T* drelt,   \
            T* du, T* dv, int64_t B, int64_t L, int64_t C, int64_t H, int64_t D, int64_t W,     \
            int64_t parts, int threads) {                                                       \
    backward_all<T>(qkv, relt, ub, vb, probs, draws, threshold, T(scale), dz, dqkv, drelt, du,  \
                    dv, B, make_shape(L, C, H, D, W), parts, threads);                          \
  }

CPG_FORWARD(site_forward_f32, float)
CPG_FORWARD(site_forward_f64, double)
CPG_BACKWARD(site_backward_f32, float)
CPG_BACKWARD(site_backward_f64, double)

}  // extern "C"
