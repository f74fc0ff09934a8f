// Purpose: backend/cuda AdamW update, one fused elementwise pass over param, grad, m and v.
// Owned by backend/cuda. The arithmetic is the CPU's line for line (bias corrections computed
// once in double on the host), so both backends move weights the same way.
#include <cmath>

#include "cuda_check.h"
#include "kernel_utils.cuh"

namespace nnkit::cuda {

namespace {

struct AdamWConstants {
  float b1, b2, lr, eps, wd, grad_scale, inv_bc1, inv_bc2;
};

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n,
                             const AdamWConstants k) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float gi = k.grad_scale * g[i];
    const float mi = k.b1 * m[i] + (1.0f - k.b1) * gi;
    const float vi = k.b2 * v[i] + (1.0f - k.b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float update = (mi * k.inv_bc1) / (sqrtf(vi * k.inv_bc2) + k.eps) + k.wd * p[i];
    p[i] -= k.lr * update;
  }
}

}  // namespace

void CudaBackend::adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m,
                               const Tensor& v, const AdamWStep& step) {
  OpScope op_scope(profiler_.get(), "adamw_update");
  const char* op = "adamw_update";
  kChecks.dtype(op, "param", param, DType::kF32);
  kChecks.dtype(op, "grad", grad, DType::kF32);
  kChecks.dtype(op, "m", m, DType::kF32);
  kChecks.dtype(op, "v", v, DType::kF32);
  kChecks.same_shape(op, "param", param, "grad", grad);
  kChecks.same_shape(op, "param", param, "m", m);
  kChecks.same_shape(op, "param", param, "v", v);
  if (step.step < 1) {
    kChecks.fail(op, "step = " + std::to_string(step.step) + "; steps are 1-based");
  }
  const int64_t n = param.numel();
  if (n == 0) return;
  const double s = static_cast<double>(step.step);
  const AdamWConstants k{step.beta1,
                         step.beta2,
                         step.lr,
                         step.eps,
                         step.weight_decay,
                         step.grad_scale,
                         static_cast<float>(1.0 / (1.0 - std::pow(double(step.beta1), s))),
                         static_cast<float>(1.0 / (1.0 - std::pow(double(step.beta2), s)))};
  adamw_kernel<<<grid_for(n), kThreads, 0, stream_>>>(ptr<float>(param), ptr<float>(grad),
                                                      ptr<float>(m), ptr<float>(v), n, k);
  NNKIT_CUDA_CHECK_LAUNCH(adamw_kernel);
}

}  // namespace nnkit::cuda
