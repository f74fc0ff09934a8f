// Purpose: backend/cpu RMSNorm and SwiGLU, forward and backward. Owned by backend/cpu.
// Rows are independent, so forward passes and dx split over rows; the weight gradient (a sum over
// rows) splits over columns instead, each column summed in row order, which keeps it race-free
// and independent of the thread count.
#include <omp.h>

#include <cmath>
#include <vector>

#include "checks.h"
#include "cpu_backend.h"
#include "fast_math.h"

namespace nnkit::cpu {

void CpuBackend::rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, const Tensor& y,
                                 const Tensor& rstd) {
  const RowShape s = expect_rows("rmsnorm_forward", "x", x, DType::kF32);
  expect_tensor("rmsnorm_forward", "weight", weight, DType::kF32, {s.cols});
  expect_dtype("rmsnorm_forward", "y", y, DType::kF32);
  expect_same_shape("rmsnorm_forward", "x", x, "y", y);
  expect_tensor("rmsnorm_forward", "rstd", rstd, DType::kF32, {s.rows});
  const float* px = ptr<float>(x);
  const float* pw = ptr<float>(weight);
  float* py = ptr<float>(y);
  float* pr = ptr<float>(rstd);
  const int64_t rows = s.rows, cols = s.cols;
#pragma omp parallel for if (rows * cols > kParallelGrain) schedule(static)
  for (int64_t n = 0; n < rows; ++n) {
    const float* xr = px + n * cols;
    float* yr = py + n * cols;
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int64_t c = 0; c < cols; ++c) acc += static_cast<double>(xr[c]) * xr[c];
    const double mean = cols > 0 ? acc / static_cast<double>(cols) : 0.0;
    const float r = static_cast<float>(1.0 / std::sqrt(mean + static_cast<double>(eps)));
    pr[n] = r;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) yr[c] = xr[c] * r * pw[c];
  }
}

void CpuBackend::rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                  const Tensor& rstd, const Tensor& dx, const Tensor& dweight) {
  const RowShape s = expect_rows("rmsnorm_backward", "x", x, DType::kF32);
  expect_dtype("rmsnorm_backward", "dy", dy, DType::kF32);
  expect_same_shape("rmsnorm_backward", "x", x, "dy", dy);
  expect_dtype("rmsnorm_backward", "dx", dx, DType::kF32);
  expect_same_shape("rmsnorm_backward", "x", x, "dx", dx);
  expect_tensor("rmsnorm_backward", "weight", weight, DType::kF32, {s.cols});
  expect_tensor("rmsnorm_backward", "dweight", dweight, DType::kF32, {s.cols});
  expect_tensor("rmsnorm_backward", "rstd", rstd, DType::kF32, {s.rows});
  const float* pdy = ptr<float>(dy);
  const float* px = ptr<float>(x);
  const float* pw = ptr<float>(weight);
  const float* pr = ptr<float>(rstd);
  float* pdx = ptr<float>(dx);
  float* pdw = ptr<float>(dweight);
  const int64_t rows = s.rows, cols = s.cols;
  const bool parallel = rows * cols > kParallelGrain;

  // y = x r w with r = (mean(x^2) + eps)^-1/2, so
  // dx = r (dy w - x r^2 mean(dy w x)). dx may alias dy, hence the dot is taken first.
#pragma omp parallel for if (parallel) schedule(static)
  for (int64_t n = 0; n < rows; ++n) {
    const float* dyr = pdy + n * cols;
    const float* xr = px + n * cols;
    float* dxr = pdx + n * cols;
    const float r = pr[n];
    double dot = 0.0;
#pragma omp simd reduction(+ : dot)
    for (int64_t c = 0; c < cols; ++c) dot += static_cast<double>(dyr[c]) * pw[c] * xr[c];
    const float k = cols > 0 ? static_cast<float>(dot / static_cast<double>(cols)) * r * r : 0.0f;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) dxr[c] = r * (dyr[c] * pw[c] - xr[c] * k);
  }

  // dweight[c] += sum_n dy[n, c] x[n, c] r[n] (accumulates), columns split across threads.
#pragma omp parallel if (parallel)
  {
    const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t c0 = cols * tid / nth, c1 = cols * (tid + 1) / nth;
    std::vector<double> acc(static_cast<size_t>(c1 - c0), 0.0);
    double* a = acc.data();
    for (int64_t n = 0; n < rows; ++n) {
      const float* dyr = pdy + n * cols;
      const float* xr = px + n * cols;
      const double r = pr[n];
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) a[c - c0] += static_cast<double>(dyr[c]) * xr[c] * r;
    }
    for (int64_t c = c0; c < c1; ++c) {
      pdw[c] = static_cast<float>(static_cast<double>(pdw[c]) + a[c - c0]);
    }
  }
}

void CpuBackend::swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out) {
  expect_dtype("swiglu_forward", "gate", gate, DType::kF32);
  expect_dtype("swiglu_forward", "up", up, DType::kF32);
  expect_dtype("swiglu_forward", "out", out, DType::kF32);
  expect_same_shape("swiglu_forward", "gate", gate, "up", up);
  expect_same_shape("swiglu_forward", "gate", gate, "out", out);
  const float* g = ptr<float>(gate);
  const float* u = ptr<float>(up);
  float* o = ptr<float>(out);
  const int64_t n = gate.numel();
#pragma omp parallel for simd if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) o[i] = g[i] * sigmoid(g[i]) * u[i];
}

void CpuBackend::swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up,
                                 const Tensor& dgate, const Tensor& dup) {
  const char* op = "swiglu_backward";
  expect_dtype(op, "dout", dout, DType::kF32);
  expect_dtype(op, "gate", gate, DType::kF32);
  expect_dtype(op, "up", up, DType::kF32);
  expect_dtype(op, "dgate", dgate, DType::kF32);
  expect_dtype(op, "dup", dup, DType::kF32);
  expect_same_shape(op, "gate", gate, "dout", dout);
  expect_same_shape(op, "gate", gate, "up", up);
  expect_same_shape(op, "gate", gate, "dgate", dgate);
  expect_same_shape(op, "gate", gate, "dup", dup);
  const float* __restrict d = ptr<float>(dout);
  const float* __restrict g = ptr<float>(gate);
  const float* __restrict u = ptr<float>(up);
  float* __restrict dg = ptr<float>(dgate);
  float* __restrict du = ptr<float>(dup);
  const int64_t n = gate.numel();
  // silu'(g) = s (1 + g (1 - s)) with s = sigmoid(g).
#pragma omp parallel for simd if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float s = sigmoid(g[i]);
    du[i] = d[i] * g[i] * s;
    dg[i] = d[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
  }
}

// add() then rmsnorm_forward(), the composition it is defined as (bit for bit).
void CpuBackend::add_rmsnorm(const Tensor& x, const Tensor& residual, const Tensor& weight,
                             float eps, const Tensor& sum, const Tensor& y) {
  const RowShape s = expect_rows("add_rmsnorm", "x", x, DType::kF32);
  expect_same_shape("add_rmsnorm", "x", x, "residual", residual);
  expect_same_shape("add_rmsnorm", "x", x, "sum", sum);
  add(sum, x, residual);
  Tensor rstd = empty({s.rows});
  rmsnorm_forward(sum, weight, eps, y, rstd);
}

}  // namespace nnkit::cpu
