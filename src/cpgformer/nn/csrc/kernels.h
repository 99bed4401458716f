// Entry points of the fused CPU attention kernels (site_attention.cpp, cell_attention.cpp), and the
// vector type both use.
//
// Declared once here and included by the kernel sources and by ops.cpp (which registers them as
// PyTorch operators), so a signature mismatch is a compile error. The kernels themselves use no
// PyTorch headers: layouts, shapes and the work split are described at the top of each source.
#pragma once

#include <cstdint>

extern "C" {

void site_forward_f32(const float* qkv, const float* relt, const float* ub, const float* vb,
                      const int8_t* draws, int threshold, double scale, float* z, float* probs,
                      int64_t B, int64_t L, int64_t C, int64_t H, int64_t D, int64_t W,
                      int64_t parts, int threads);
void site_forward_f64(const double* qkv, const double* relt, const double* ub, const double* vb,
                      const int8_t* draws, int threshold, double scale, double* z, double* probs,
                      int64_t B, int64_t L, int64_t C, int64_t H, int64_t D, int64_t W,
                      int64_t parts, int threads);
void site_backward_f32(const float* qkv, const float* relt, const float* ub, const float* vb,
                       const float* probs, const int8_t* draws, int threshold, double scale,
                       const float* dz, float* dqkv, float* drelt, float* du, float* dv,
                       int64_t B, int64_t L, int64_t C, int64_t H, int64_t D, int64_t W,
                       int64_t parts, int threads);
void site_backward_f64(const double* qkv, const double* relt, const double* ub, const double* vb,
                       const double* probs, const int8_t* draws, int threshold, double scale,
                       const double* dz, double* dqkv, double* drelt, double* du, double* dv,
                       int64_t B, int64_t L, int64_t C, int64_t H, int64_t D, int64_t W,
                       int64_t parts, int threads);

void cell_forward_f32(const float* qkv, uint64_t seed, int threshold, double scale, float* z,
                      int64_t N, int64_t C, int64_t H, int64_t D, int threads);
void cell_forward_f64(const double* qkv, uint64_t seed, int threshold, double scale, double* z,
                      int64_t N, int64_t C, int64_t H, int64_t D, int threads);
void cell_backward_f32(const float* qkv, uint64_t seed, int threshold, double scale,
                       const float* dz, float* dqkv, int64_t N, int64_t C, int64_t H, int64_t D,
                       int threads);
void cell_backward_f64(const double* qkv, uint64_t seed, int threshold, double scale,
                       const double* dz, double* dqkv, int64_t N, int64_t C, int64_t H,
                       int64_t D, int threads);
// The dropout draws of rows [0, rows) (row = (site * H + head) * C + query cell): out [rows, C].
void cell_draws(uint64_t seed, int64_t rows, int64_t C, int8_t* out);

}  // extern "C"

namespace cpgformer_kernels {

// 32-byte vectors (GCC/Clang vector extensions: 8 floats or 4 doubles on any target).
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int64_t lanes = 32 / sizeof(T);
  static type load(const T* p) {
    type x;
    __builtin_memcpy(&x, p, sizeof(x));
    return x;
  }
  static void store(T* p, type x) { __builtin_memcpy(p, &x, sizeof(x)); }
};

}  // namespace cpgformer_kernels
