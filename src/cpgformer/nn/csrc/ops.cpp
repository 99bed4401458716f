// The fused kernels as PyTorch operators (namespace `cpgformer`): schemas, checks of shapes,
// dtypes and layouts, and the CPU implementations that call the plain C++ kernels of kernels.h.
// Fake (meta) implementations and the autograd formulas are registered from Python
// (cpgformer.nn.attention.kernels); the backward operators below compute those formulas.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "kernels.h"

namespace {

// Site ranges per batch entry for the window kernels: a fixed number (results do not depend on
// the thread count), the same as cpgformer.nn.attention.cores.PARTS_MULTIPLE.
constexpr int64_t PARTS = 4;

void check_cpu(const at::Tensor& t, const char* name, c10::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), "cpgformer: ", name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == dtype, "cpgformer: ", name, " has dtype ", t.scalar_type(),
              ", expected ", dtype);
  TORCH_CHECK(t.is_contiguous(), "cpgformer: ", name, " must be contiguous");
}

void check_float(const at::Tensor& qkv) {
  TORCH_CHECK(qkv.scalar_type() == at::kFloat || qkv.scalar_type() == at::kDouble,
              "cpgformer: the fused kernels take float32 or float64, got ", qkv.scalar_type());
}

void check_draws(const std::optional<at::Tensor>& draws, int64_t threshold, at::IntArrayRef shape) {
  TORCH_CHECK(threshold >= 0 && threshold < 256, "cpgformer: dropout threshold out of range");
  if (threshold == 0) return;
  TORCH_CHECK(draws.has_value(), "cpgformer: dropout needs draws");
  check_cpu(*draws, "draws", at::kChar);
  TORCH_CHECK(draws->sizes() == shape, "cpgformer: draws have shape ", draws->sizes(),
              ", expected ", shape);
}

const int8_t* draws_ptr(const std::optional<at::Tensor>& draws, int64_t threshold) {
  return threshold && draws.has_value() ? draws->data_ptr<int8_t>() : nullptr;
}

// Shapes of the window operators: qkv [B, L, C, 3, H, D], relt [B, L, H, D, P], u, v [H, D].
struct SiteShape {
  int64_t B, L, C, H, D, W;
};

SiteShape site_shape(const at::Tensor& qkv, const at::Tensor& relt, const at::Tensor& u,
                     const at::Tensor& v, int64_t width) {
  check_float(qkv);
  const auto dtype = qkv.scalar_type();
  check_cpu(qkv, "qkv", dtype);
  check_cpu(relt, "relt", dtype);
  check_cpu(u, "u", dtype);
  check_cpu(v, "v", dtype);
  TORCH_CHECK(qkv.dim() == 6 && qkv.size(3) == 3, "cpgformer: qkv must be [B, L, C, 3, H, D]");
  const SiteShape s{qkv.size(0), qkv.size(1), qkv.size(2), qkv.size(4), qkv.size(5), width};
  TORCH_CHECK(width >= 1 && width % 2 == 1, "cpgformer: the window width must be odd");
  const int64_t padded = (width + 7) / 8 * 8;
  TORCH_CHECK(relt.sizes() == at::IntArrayRef({s.B, s.L, s.H, s.D, padded}),
              "cpgformer: relt has shape ", relt.sizes(), ", expected [B, L, H, D, ", padded, "]");
  TORCH_CHECK(u.sizes() == at::IntArrayRef({s.H, s.D}) && v.sizes() == u.sizes(),
              "cpgformer: the biases must be [H, D]");
  return s;
}

std::tuple<at::Tensor, at::Tensor> site_forward(const at::Tensor& qkv, const at::Tensor& relt,
                                                const at::Tensor& u, const at::Tensor& v,
                                                const std::optional<at::Tensor>& draws,
                                                int64_t width, int64_t threshold, double scale,
                                                bool store_probs) {
  const SiteShape s = site_shape(qkv, relt, u, v, width);
  check_draws(draws, threshold, {s.B, s.L, s.C, s.H, s.W});
  at::Tensor z = at::empty({s.B, s.L, s.C, s.H, s.D}, qkv.options());
  at::Tensor probs = at::empty(store_probs ? at::IntArrayRef({s.B, s.L, s.C, s.H, s.W})
                                           : at::IntArrayRef({0}),
                               qkv.options());
  const int64_t parts = std::min(PARTS, s.L);
  const int threads = at::get_num_threads();
  if (s.B * s.L * s.C == 0) return {z, probs};
  if (qkv.scalar_type() == at::kFloat) {
    site_forward_f32(qkv.data_ptr<float>(), relt.data_ptr<float>(), u.data_ptr<float>(),
                     v.data_ptr<float>(), draws_ptr(draws, threshold), int(threshold), scale,
                     z.data_ptr<float>(), store_probs ? probs.data_ptr<float>() : nullptr, s.B,
                     s.L, s.C, s.H, s.D, s.W, parts, threads);
  } else {
    site_forward_f64(qkv.data_ptr<double>(), relt.data_ptr<double>(), u.data_ptr<double>(),
                     v.data_ptr<double>(), draws_ptr(draws, threshold), int(threshold), scale,
                     z.data_ptr<double>(), store_probs ? probs.data_ptr<double>() : nullptr, s.B,
                     s.L, s.C, s.H, s.D, s.W, parts, threads);
  }
  return {z, probs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> site_backward(
    const at::Tensor& grad, const at::Tensor& qkv, const at::Tensor& relt, const at::Tensor& u,
    const at::Tensor& v, const at::Tensor& probs, const std::optional<at::Tensor>& draws,
    int64_t width, int64_t threshold, double scale) {
  const SiteShape s = site_shape(qkv, relt, u, v, width);
  check_draws(draws, threshold, {s.B, s.L, s.C, s.H, s.W});
  check_cpu(grad, "grad", qkv.scalar_type());
  check_cpu(probs, "probs", qkv.scalar_type());
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({s.B, s.L, s.C, s.H, s.D}),
              "cpgformer: grad must be [B, L, C, H, D]");
  TORCH_CHECK(probs.sizes() == at::IntArrayRef({s.B, s.L, s.C, s.H, s.W}),
              "cpgformer: probs must be [B, L, C, H, W] (stored by the forward)");
  at::Tensor dqkv = at::empty(qkv.sizes(), qkv.options());  // every entry written
  at::Tensor drelt = at::empty(relt.sizes(), relt.options());
  at::Tensor du = at::empty(u.sizes(), u.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  const int64_t parts = std::min(PARTS, s.L);
  const int threads = at::get_num_threads();
  if (s.B * s.L * s.C == 0) {
    dqkv.zero_(), drelt.zero_(), du.zero_(), dv.zero_();
    return {dqkv, drelt, du, dv};
  }
  if (qkv.scalar_type() == at::kFloat) {
    site_backward_f32(qkv.data_ptr<float>(), relt.data_ptr<float>(), u.data_ptr<float>(),
                      v.data_ptr<float>(), probs.data_ptr<float>(), draws_ptr(draws, threshold),
                      int(threshold), scale, grad.data_ptr<float>(), dqkv.data_ptr<float>(),
                      drelt.data_ptr<float>(), du.data_ptr<float>(), dv.data_ptr<float>(), s.B,
                      s.L, s.C, s.H, s.D, s.W, parts, threads);
  } else {
    site_backward_f64(qkv.data_ptr<double>(), relt.data_ptr<double>(), u.data_ptr<double>(),
                      v.data_ptr<double>(), probs.data_ptr<double>(),
                      draws_ptr(draws, threshold), int(threshold), scale,
                      grad.data_ptr<double>(), dqkv.data_ptr<double>(), drelt.data_ptr<double>(),
                      du.data_ptr<double>(), dv.data_ptr<double>(), s.B, s.L, s.C, s.H, s.D, s.W,
                      parts, threads);
  }
  return {dqkv, drelt, du, dv};
}

void check_cells(const at::Tensor& qkv, int64_t threshold) {
  check_float(qkv);
  check_cpu(qkv, "qkv", qkv.scalar_type());
  TORCH_CHECK(qkv.dim() == 6 && qkv.size(3) == 3, "cpgformer: qkv must be [B, L, C, 3, H, D]");
  TORCH_CHECK(threshold >= 0 && threshold < 256, "cpgformer: dropout threshold out of range");
}

at::Tensor cell_forward(const at::Tensor& qkv, int64_t seed, int64_t threshold, double scale) {
  check_cells(qkv, threshold);
  const int64_t B = qkv.size(0), L = qkv.size(1), C = qkv.size(2), H = qkv.size(4),
                D = qkv.size(5);
  at::Tensor z = at::empty({B, L, C, H, D}, qkv.options());
  if (B * L * C == 0) return z;
  const int threads = at::get_num_threads();
  if (qkv.scalar_type() == at::kFloat)
    cell_forward_f32(qkv.data_ptr<float>(), uint64_t(seed), int(threshold), scale,
                     z.data_ptr<float>(), B * L, C, H, D, threads);
  else
    cell_forward_f64(qkv.data_ptr<double>(), uint64_t(seed), int(threshold), scale,
                     z.data_ptr<double>(), B * L, C, H, D, threads);
  return z;
}

at::Tensor cell_backward(const at::Tensor& grad, const at::Tensor& qkv, int64_t seed,
                         int64_t threshold, double scale) {
  check_cells(qkv, threshold);
  check_cpu(grad, "grad", qkv.scalar_type());
  const int64_t B = qkv.size(0), L = qkv.size(1), C = qkv.size(2), H = qkv.size(4),
                D = qkv.size(5);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({B, L, C, H, D}),
              "cpgformer: grad must be [B, L, C, H, D]");
  at::Tensor dqkv = at::empty(qkv.sizes(), qkv.options());  // every entry written
  if (B * L * C == 0) return dqkv;
  const int threads = at::get_num_threads();
  if (qkv.scalar_type() == at::kFloat)
    cell_backward_f32(qkv.data_ptr<float>(), uint64_t(seed), int(threshold), scale,
                      grad.data_ptr<float>(), dqkv.data_ptr<float>(), B * L, C, H, D, threads);
  else
    cell_backward_f64(qkv.data_ptr<double>(), uint64_t(seed), int(threshold), scale,
                      grad.data_ptr<double>(), dqkv.data_ptr<double>(), B * L, C, H, D, threads);
  return dqkv;
}

at::Tensor cell_draws_op(int64_t seed, int64_t sites, int64_t heads, int64_t cells) {
  TORCH_CHECK(sites >= 0 && heads >= 0 && cells >= 0, "cpgformer: negative size");
  at::Tensor out = at::empty({sites, heads, cells, cells}, at::TensorOptions().dtype(at::kChar));
  cell_draws(uint64_t(seed), sites * heads * cells, cells, out.data_ptr<int8_t>());
  return out;
}

}  // namespace

TORCH_LIBRARY(cpgformer, m) {
  m.def(
      "site_attention(Tensor qkv, Tensor relt, Tensor u, Tensor v, Tensor? draws, int width, "
      "int threshold, float scale, bool store_probs) -> (Tensor, Tensor)");
  m.def(
      "site_attention_backward(Tensor grad, Tensor qkv, Tensor relt, Tensor u, Tensor v, "
      "Tensor probs, Tensor? draws, int width, int threshold, float scale) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("cell_attention(Tensor qkv, int seed, int threshold, float scale) -> Tensor");
  m.def(
      "cell_attention_backward(Tensor grad, Tensor qkv, int seed, int threshold, float scale) "
      "-> Tensor");
  m.def("cell_draws(int seed, int sites, int heads, int cells) -> Tensor");
}

TORCH_LIBRARY_IMPL(cpgformer, CPU, m) {
  m.impl("site_attention", &site_forward);
  m.impl("site_attention_backward", &site_backward);
  m.impl("cell_attention", &cell_forward);
  m.impl("cell_attention_backward", &cell_backward);
}

TORCH_LIBRARY_IMPL(cpgformer, CompositeExplicitAutograd, m) {
  m.impl("cell_draws", &cell_draws_op);
}
