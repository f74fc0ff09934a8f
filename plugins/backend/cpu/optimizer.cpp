// Purpose: backend/cpu fused AdamW step (one pass over param, grad, m, v). Owned by backend/cpu.
// The bias corrections are computed once per call in double; the per-element update is fp32,
// matching the state's precision.
#include <cmath>

#include "checks.h"
#include "cpu_backend.h"

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
