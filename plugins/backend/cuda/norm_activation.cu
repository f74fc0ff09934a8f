// Purpose: backend/cuda RMSNorm forward/backward and SwiGLU forward/backward. Owned by
// backend/cuda.
// RMSNorm runs one block per row; the row reductions are in double like the CPU's. The weight
// gradient is a column sum over all rows: a first kernel sums fixed chunks of rows per column
// (coalesced across columns), a second adds the chunk partials in chunk order, so the sum never
// depends on scheduling and needs no atomics.
#include "cuda_check.h"
#include "kernel_utils.cuh"

namespace nnkit::cuda {

namespace {

constexpr int kNormThreads = 256;
constexpr int64_t kRowsPerChunk = 64;  // rows summed by one partial of the weight gradient

__global__ void rmsnorm_forward_kernel(const float* x, const float* w, float eps, float* y,
                                       float* rstd, int64_t cols) {
  __shared__ double shared[32];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * cols;
  float* yr = y + row * cols;
  double acc = 0.0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) acc += double(xr[c]) * xr[c];
  acc = block_sum(acc, shared);
  const double mean = cols > 0 ? acc / double(cols) : 0.0;
  const float r = static_cast<float>(1.0 / sqrt(mean + double(eps)));
  if (threadIdx.x == 0) rstd[row] = r;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = xr[c] * r * w[c];
}

// dx = r (dy w - x r^2 mean(dy w x)); dx may alias dy, so the dot is complete before any write.
__global__ void rmsnorm_backward_dx_kernel(const float* dy, const float* x, const float* w,
                                           const float* rstd, float* dx, int64_t cols) {
  __shared__ double shared[32];
  const int64_t row = blockIdx.x;
  const float* dyr = dy + row * cols;
  const float* xr = x + row * cols;
  float* dxr = dx + row * cols;
  const float r = rstd[row];
  double dot = 0.0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) dot += double(dyr[c]) * w[c] * xr[c];
  dot = block_sum(dot, shared);
  const float k = cols > 0 ? static_cast<float>(dot / double(cols)) * r * r : 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    dxr[c] = r * (dyr[c] * w[c] - xr[c] * k);
  }
}

// partial[chunk, c] = sum over the chunk's rows of dy x r (double). Grid: (column blocks, chunks).
__global__ void rmsnorm_dweight_partial_kernel(const float* dy, const float* x, const float* rstd,
                                               double* partial, int64_t rows, int64_t cols) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  const int64_t begin = blockIdx.y * kRowsPerChunk;
  const int64_t end = begin + kRowsPerChunk < rows ? begin + kRowsPerChunk : rows;
  double acc = 0.0;
  for (int64_t n = begin; n < end; ++n) acc += double(dy[n * cols + c]) * x[n * cols + c] * rstd[n];
  partial[blockIdx.y * cols + c] = acc;
}

__global__ void rmsnorm_dweight_final_kernel(const double* partial, int64_t chunks, float* dw,
                                             int64_t cols) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  double acc = 0.0;
  for (int64_t k = 0; k < chunks; ++k) acc += partial[k * cols + c];
  dw[c] = static_cast<float>(double(dw[c]) + acc);
}

__device__ __forceinline__ float sigmoid(float x) {
  return 1.0f / (1.0f + expf(-x));
}

__global__ void swiglu_forward_kernel(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = g * sigmoid(g) * up[i];
  }
}

// silu'(g) = s (1 + g (1 - s)) with s = sigmoid(g).
__global__ void swiglu_backward_kernel(const float* dout, const float* gate, const float* up,
                                       float* dgate, float* dup, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float g = gate[i], u = up[i], d = dout[i];
    const float s = sigmoid(g);
    dup[i] = d * g * s;
    dgate[i] = d * u * s * (1.0f + g * (1.0f - s));
  }
}

}  // namespace

void CudaBackend::rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, const Tensor& y,
                                  const Tensor& rstd) {
  OpScope op_scope(profiler_.get(), "rmsnorm_forward");
  const char* op = "rmsnorm_forward";
  const backend_common::RowShape s = kChecks.rows(op, "x", x, DType::kF32);
  kChecks.tensor(op, "weight", weight, DType::kF32, {s.cols});
  kChecks.dtype(op, "y", y, DType::kF32);
  kChecks.same_shape(op, "x", x, "y", y);
  kChecks.tensor(op, "rstd", rstd, DType::kF32, {s.rows});
  if (s.rows == 0) return;
  rmsnorm_forward_kernel<<<static_cast<unsigned>(s.rows), kNormThreads, 0, stream_>>>(
      ptr<float>(x), ptr<float>(weight), eps, ptr<float>(y), ptr<float>(rstd), s.cols);
  NNKIT_CUDA_CHECK_LAUNCH(rmsnorm_forward_kernel);
}

void CudaBackend::rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                   const Tensor& rstd, const Tensor& dx, const Tensor& dweight) {
  OpScope op_scope(profiler_.get(), "rmsnorm_backward");
  const char* op = "rmsnorm_backward";
  const backend_common::RowShape s = kChecks.rows(op, "x", x, DType::kF32);
  kChecks.dtype(op, "dy", dy, DType::kF32);
  kChecks.same_shape(op, "x", x, "dy", dy);
  kChecks.dtype(op, "dx", dx, DType::kF32);
  kChecks.same_shape(op, "x", x, "dx", dx);
  kChecks.tensor(op, "weight", weight, DType::kF32, {s.cols});
  kChecks.tensor(op, "dweight", dweight, DType::kF32, {s.cols});
  kChecks.tensor(op, "rstd", rstd, DType::kF32, {s.rows});
  if (s.rows == 0 || s.cols == 0) return;
  // The weight gradient reads dy, so it runs before dx (which may overwrite dy in place).
  const int64_t chunks = (s.rows + kRowsPerChunk - 1) / kRowsPerChunk;
  Tensor partial = scratch(static_cast<size_t>(chunks * s.cols) * sizeof(double));
  const unsigned column_blocks = static_cast<unsigned>((s.cols + kThreads - 1) / kThreads);
  rmsnorm_dweight_partial_kernel<<<dim3(column_blocks, static_cast<unsigned>(chunks)), kThreads, 0,
                                   stream_>>>(ptr<float>(dy), ptr<float>(x), ptr<float>(rstd),
                                              ptr<double>(partial), s.rows, s.cols);
  NNKIT_CUDA_CHECK_LAUNCH(rmsnorm_dweight_partial_kernel);
  rmsnorm_dweight_final_kernel<<<column_blocks, kThreads, 0, stream_>>>(
      ptr<double>(partial), chunks, ptr<float>(dweight), s.cols);
  NNKIT_CUDA_CHECK_LAUNCH(rmsnorm_dweight_final_kernel);
  rmsnorm_backward_dx_kernel<<<static_cast<unsigned>(s.rows), kNormThreads, 0, stream_>>>(
      ptr<float>(dy), ptr<float>(x), ptr<float>(weight), ptr<float>(rstd), ptr<float>(dx), s.cols);
  NNKIT_CUDA_CHECK_LAUNCH(rmsnorm_backward_dx_kernel);
}

void CudaBackend::swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out) {
  OpScope op_scope(profiler_.get(), "swiglu_forward");
  const char* op = "swiglu_forward";
  kChecks.dtype(op, "gate", gate, DType::kF32);
  kChecks.dtype(op, "up", up, DType::kF32);
  kChecks.dtype(op, "out", out, DType::kF32);
  kChecks.same_shape(op, "gate", gate, "up", up);
  kChecks.same_shape(op, "gate", gate, "out", out);
  const int64_t n = gate.numel();
  if (n == 0) return;
  swiglu_forward_kernel<<<grid_for(n), kThreads, 0, stream_>>>(ptr<float>(gate), ptr<float>(up),
                                                               ptr<float>(out), n);
  NNKIT_CUDA_CHECK_LAUNCH(swiglu_forward_kernel);
}

void CudaBackend::swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up,
                                  const Tensor& dgate, const Tensor& dup) {
  OpScope op_scope(profiler_.get(), "swiglu_backward");
  const char* op = "swiglu_backward";
  kChecks.dtype(op, "dout", dout, DType::kF32);
  kChecks.dtype(op, "gate", gate, DType::kF32);
  kChecks.dtype(op, "up", up, DType::kF32);
  kChecks.dtype(op, "dgate", dgate, DType::kF32);
  kChecks.dtype(op, "dup", dup, DType::kF32);
  kChecks.same_shape(op, "gate", gate, "dout", dout);
  kChecks.same_shape(op, "gate", gate, "up", up);
  kChecks.same_shape(op, "gate", gate, "dgate", dgate);
  kChecks.same_shape(op, "gate", gate, "dup", dup);
  const int64_t n = gate.numel();
  if (n == 0) return;
  swiglu_backward_kernel<<<grid_for(n), kThreads, 0, stream_>>>(
      ptr<float>(dout), ptr<float>(gate), ptr<float>(up), ptr<float>(dgate), ptr<float>(dup), n);
  NNKIT_CUDA_CHECK_LAUNCH(swiglu_backward_kernel);
}

}  // namespace nnkit::cuda
