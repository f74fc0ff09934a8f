// Purpose: backend/cpu optimizer ops: the fused AdamW step (one pass over param, grad, m, v), and
// the multi-tensor forms the trainer calls once per step (sum_squares_multi for the global
// gradient norm, adamw_update_multi for clip + step + grad reset). Owned by backend/cpu.
// The bias corrections are computed once per call in double; the per-element update is fp32,
// matching the state's precision.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "checks.h"
#include "cpu_backend.h"
#include "nnkit/io/half.h"

namespace nnkit::cpu {

void CpuBackend::adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m,
                              const Tensor& v, const AdamWStep& step) {
  const char* op = "adamw_update";
  expect_dtype(op, "param", param, DType::kF32);
  expect_dtype(op, "grad", grad, DType::kF32);
  expect_dtype(op, "m", m, DType::kF32);
  expect_dtype(op, "v", v, DType::kF32);
  expect_same_shape(op, "param", param, "grad", grad);
  expect_same_shape(op, "param", param, "m", m);
  expect_same_shape(op, "param", param, "v", v);
  if (step.step < 1) shape_fail(op, "step = " + std::to_string(step.step) + "; steps are 1-based");
  const double s = static_cast<double>(step.step);
  const float inv_bc1 = static_cast<float>(1.0 / (1.0 - std::pow(double(step.beta1), s)));
  const float inv_bc2 = static_cast<float>(1.0 / (1.0 - std::pow(double(step.beta2), s)));
  const float b1 = step.beta1, b2 = step.beta2, lr = step.lr, eps = step.eps;
  const float wd = step.weight_decay, gs = step.grad_scale;
  float* __restrict p = ptr<float>(param);
  const float* __restrict g = ptr<float>(grad);
  float* __restrict pm = ptr<float>(m);
  float* __restrict pv = ptr<float>(v);
  const int64_t n = param.numel();
#pragma omp parallel for simd if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = gs * g[i];
    const float mi = b1 * pm[i] + (1.0f - b1) * gi;
    const float vi = b2 * pv[i] + (1.0f - b2) * gi * gi;
    pm[i] = mi;
    pv[i] = vi;
    const float update = (mi * inv_bc1) / (std::sqrt(vi * inv_bc2) + eps) + wd * p[i];
    p[i] -= lr * update;
  }
}

}  // namespace nnkit::cpu

// ---- multi-tensor ops (ABI 2): the global gradient norm and the fused step over every tensor ----
// sum_squares_multi sums in double over fixed chunks of each tensor, added in order, so the
// result does not depend on the thread count. adamw_update_multi is the per-tensor adamw_update
// above with the clip folded into grad_scale, which makes it bit-identical to that op by
// construction; the CPU is not where 3.7B-parameter steps run, so clarity wins over one fused pass.
namespace nnkit::cpu {

namespace {

// A float tensor for the multi-tensor ops: defined, on the host, f32 / bf16 / f16.
void expect_float(const char* op, const std::string& name, const Tensor& t) {
  if (!t.defined() || !t.device().is_host() ||
      (t.dtype() != DType::kF32 && t.dtype() != DType::kBF16 && t.dtype() != DType::kF16)) {
    shape_fail(op,
               name + " is " + describe(t) + "; expected a host tensor of dtype f32, bf16 or f16");
  }
}

// sum(x[begin, end)^2) in double; the element is widened to f32 first (exact for bf16/f16).
double sum_squares_range(const Tensor& x, int64_t begin, int64_t end) {
  double acc = 0.0;
  if (x.dtype() == DType::kF32) {
    const float* p = ptr<float>(x);
#pragma omp simd reduction(+ : acc)
    for (int64_t i = begin; i < end; ++i) acc += static_cast<double>(p[i]) * p[i];
  } else if (x.dtype() == DType::kBF16) {
    const uint16_t* p = ptr<uint16_t>(x);
#pragma omp simd reduction(+ : acc)
    for (int64_t i = begin; i < end; ++i) {
      const double v = bf16_to_f32(p[i]);
      acc += v * v;
    }
  } else {
    const uint16_t* p = ptr<uint16_t>(x);
    for (int64_t i = begin; i < end; ++i) {
      const double v = f16_to_f32(p[i]);
      acc += v * v;
    }
  }
  return acc;
}

}  // namespace

void CpuBackend::sum_squares_multi(const std::vector<Tensor>& xs, const Tensor& out) {
  const char* op = "sum_squares_multi";
  for (size_t t = 0; t < xs.size(); ++t) expect_float(op, "xs[" + std::to_string(t) + "]", xs[t]);
  expect_dtype(op, "out", out, DType::kF32);
  if (out.numel() != 1) shape_fail(op, "out is " + describe(out) + "; expected (1)");
  // The same chunking as sum_squares, per tensor: (tensor, first element) of every chunk.
  constexpr int64_t kChunk = 1 << 15;
  std::vector<std::pair<size_t, int64_t>> chunks;
  for (size_t t = 0; t < xs.size(); ++t) {
    for (int64_t begin = 0; begin < xs[t].numel(); begin += kChunk) chunks.emplace_back(t, begin);
  }
  const auto n_chunks = static_cast<int64_t>(chunks.size());
  std::vector<double> partial(chunks.size(), 0.0);
#pragma omp parallel for if (n_chunks > 1) schedule(static)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const auto [t, begin] = chunks[static_cast<size_t>(c)];
    const int64_t end = std::min(begin + kChunk, xs[t].numel());
    partial[static_cast<size_t>(c)] = sum_squares_range(xs[t], begin, end);
  }
  double total = 0.0;
  for (double p : partial) total += p;
  float* po = ptr<float>(out);
  po[0] = static_cast<float>(static_cast<double>(po[0]) + total);
}

void CpuBackend::adamw_update_multi(const std::vector<AdamWTensor>& tensors, const AdamWStep& step,
                                    const Tensor& grad_sum_squares, float max_grad_norm) {
  const char* op = "adamw_update_multi";
  // Everything is checked before the first tensor moves, so a wiring error updates nothing.
  for (size_t t = 0; t < tensors.size(); ++t) {
    const AdamWTensor& a = tensors[t];
    const std::string at = "tensors[" + std::to_string(t) + "].";
    expect_dtype(op, (at + "param").c_str(), a.param, DType::kF32);
    expect_dtype(op, (at + "grad").c_str(), a.grad, DType::kF32);
    expect_dtype(op, (at + "exp_avg").c_str(), a.exp_avg, DType::kF32);
    expect_dtype(op, (at + "exp_avg_sq").c_str(), a.exp_avg_sq, DType::kF32);
    expect_same_shape(op, (at + "param").c_str(), a.param, (at + "grad").c_str(), a.grad);
    expect_same_shape(op, (at + "param").c_str(), a.param, (at + "exp_avg").c_str(), a.exp_avg);
    expect_same_shape(op, (at + "param").c_str(), a.param, (at + "exp_avg_sq").c_str(),
                      a.exp_avg_sq);
    if (a.compute_copy.defined()) {
      expect_float(op, at + "compute_copy", a.compute_copy);
      if (a.compute_copy.numel() != a.param.numel()) {
        shape_fail(op, at + "compute_copy is " + describe(a.compute_copy) + " and " + at +
                           "param is " + describe(a.param) +
                           "; expected the same number of elements");
      }
    }
  }
  expect_dtype(op, "grad_sum_squares", grad_sum_squares, DType::kF32);
  if (grad_sum_squares.numel() != 1) {
    shape_fail(op, "grad_sum_squares is " + describe(grad_sum_squares) + "; expected (1)");
  }
  if (step.step < 1) shape_fail(op, "step = " + std::to_string(step.step) + "; steps are 1-based");

  const float sum_squares = ptr<float>(grad_sum_squares)[0];
  // A non-finite norm (an overflowed or NaN gradient) skips the step and leaves everything,
  // grads included, as it was: the caller looks for the offending parameter, then zeroes them.
  if (!std::isfinite(sum_squares)) return;
  // clip = min(1, max_norm / norm) in f32, in this order on both backends (a zero norm gives
  // max_norm / 0 = inf, hence clip 1).
  float clip = 1.0f;
  if (max_grad_norm > 0.0f) {
    const float norm = std::sqrt(sum_squares) * step.grad_scale;
    clip = std::min(1.0f, max_grad_norm / norm);
  }
  AdamWStep per_tensor = step;
  per_tensor.grad_scale = step.grad_scale * clip;
  for (const AdamWTensor& a : tensors) {
    per_tensor.weight_decay = a.weight_decay;  // decoupled decay is per tensor here
    adamw_update(a.param, a.grad, a.exp_avg, a.exp_avg_sq, per_tensor);
    if (a.compute_copy.defined()) convert(a.compute_copy, a.param);
    if (a.grad.nbytes() > 0)
      std::memset(a.grad.raw(), 0, a.grad.nbytes());  // +0.0f is all zero bits
  }
}

}  // namespace nnkit::cpu
