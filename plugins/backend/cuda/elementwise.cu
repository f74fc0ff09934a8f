// Purpose: backend/cuda fills and elementwise ops (fill, fill_normal, add, axpy, scale,
// scale_rows, row_dot, sum_squares). Owned by backend/cuda.
// Memory-bound one-pass kernels with grid-stride loops. fill_normal evaluates the same
// counter-based formula as the CPU (nnkit/random.h, in double), so both backends initialise
// identical weights for a seed. The reductions (row_dot, sum_squares) sum in double over a fixed
// tree, like the CPU's double accumulators, and repeat bit for bit.
#include <cuda_bf16.h>

#include "cuda_check.h"
#include "kernel_utils.cuh"
#include "nnkit/random.h"

namespace nnkit::cuda {

namespace {

template <typename T>
__global__ void fill_kernel(T* p, int64_t n, T value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    p[i] = value;
  }
}

__global__ void fill_normal_kernel(float* p, int64_t n, double mean, double std, uint64_t key) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    p[i] = static_cast<float>(mean + std * random::standard_normal_at(key, uint64_t(i)));
  }
}

__global__ void add_kernel(float* out, const float* a, const float* b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = a[i] + b[i];
  }
}

__global__ void axpy_kernel(float* y, float alpha, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    y[i] += alpha * x[i];
  }
}

__global__ void scale_kernel(float* t, float alpha, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    t[i] *= alpha;
  }
}

__global__ void scale_rows_kernel(float* x, const float* w, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    x[i] *= w[i / cols];
  }
}

// One warp per row: out[r] = sum_c a[r, c] b[r, c] in double.
__global__ void row_dot_kernel(const float* a, const float* b, float* out, int64_t rows,
                               int64_t cols) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const float* ar = a + row * cols;
  const float* br = b + row * cols;
  double acc = 0.0;
  for (int64_t c = lane; c < cols; c += 32) acc += double(ar[c]) * br[c];
  acc = warp_sum(acc);
  if (lane == 0) out[row] = static_cast<float>(acc);
}

constexpr int kSumBlocks = 256;  // partials of sum_squares: fixed, so the tree never changes

__global__ void sum_squares_partial_kernel(const float* x, int64_t n, double* partial) {
  __shared__ double shared[32];
  double acc = 0.0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    acc += double(x[i]) * x[i];
  }
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sum_squares_final_kernel(const double* partial, float* out) {
  __shared__ double shared[32];
  const double total = block_sum(partial[threadIdx.x], shared);
  if (threadIdx.x == 0) out[0] = static_cast<float>(double(out[0]) + total);
}

// Round-to-nearest-even float -> bf16 bits.
uint16_t to_bf16(float value) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(value));
}

template <typename T>
void launch_fill(cudaStream_t stream, const Tensor& t, T value) {
  const int64_t n = t.numel();
  if (n == 0) return;
  fill_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(ptr<T>(t), n, value);
  NNKIT_CUDA_CHECK_LAUNCH(fill_kernel);
}

}  // namespace

void CudaBackend::fill(const Tensor& t, float value) {
  OpScope op_scope(profiler_.get(), "fill");
  if (!t.defined() || t.device() != device()) {
    kChecks.fail("fill", "t is " + describe(t) + "; expected a tensor on " + to_string(device()));
  }
  switch (t.dtype()) {
    case DType::kF32:
      return launch_fill(stream_, t, value);
    case DType::kI32:
      return launch_fill(stream_, t, static_cast<int32_t>(value));
    case DType::kI64:
      return launch_fill(stream_, t, static_cast<int64_t>(value));
    case DType::kU8:
      return launch_fill(stream_, t, static_cast<uint8_t>(value));
    case DType::kBF16:
      return launch_fill(stream_, t, to_bf16(value));
    case DType::kF16:
      return launch_fill(stream_, t, __half_as_ushort(__float2half_rn(value)));
  }
}

void CudaBackend::fill_normal(const Tensor& t, float mean, float std, uint64_t seed) {
  OpScope op_scope(profiler_.get(), "fill_normal");
  kChecks.dtype("fill_normal", "t", t, DType::kF32);
  const int64_t n = t.numel();
  if (n == 0) return;
  fill_normal_kernel<<<grid_for(n), kThreads, 0, stream_>>>(ptr<float>(t), n, mean, std,
                                                            random::normal_key(seed));
  NNKIT_CUDA_CHECK_LAUNCH(fill_normal_kernel);
}

void CudaBackend::add(const Tensor& out, const Tensor& a, const Tensor& b) {
  OpScope op_scope(profiler_.get(), "add");
  kChecks.dtype("add", "out", out, DType::kF32);
  kChecks.dtype("add", "a", a, DType::kF32);
  kChecks.dtype("add", "b", b, DType::kF32);
  kChecks.same_shape("add", "out", out, "a", a);
  kChecks.same_shape("add", "out", out, "b", b);
  const int64_t n = out.numel();
  if (n == 0) return;
  add_kernel<<<grid_for(n), kThreads, 0, stream_>>>(ptr<float>(out), ptr<float>(a), ptr<float>(b),
                                                    n);
  NNKIT_CUDA_CHECK_LAUNCH(add_kernel);
}

void CudaBackend::axpy(const Tensor& y, float alpha, const Tensor& x) {
  OpScope op_scope(profiler_.get(), "axpy");
  kChecks.dtype("axpy", "y", y, DType::kF32);
  kChecks.dtype("axpy", "x", x, DType::kF32);
  kChecks.same_shape("axpy", "y", y, "x", x);
  const int64_t n = y.numel();
  if (n == 0) return;
  axpy_kernel<<<grid_for(n), kThreads, 0, stream_>>>(ptr<float>(y), alpha, ptr<float>(x), n);
  NNKIT_CUDA_CHECK_LAUNCH(axpy_kernel);
}

void CudaBackend::scale(const Tensor& t, float alpha) {
  OpScope op_scope(profiler_.get(), "scale");
  kChecks.dtype("scale", "t", t, DType::kF32);
  const int64_t n = t.numel();
  if (n == 0) return;
  scale_kernel<<<grid_for(n), kThreads, 0, stream_>>>(ptr<float>(t), alpha, n);
  NNKIT_CUDA_CHECK_LAUNCH(scale_kernel);
}

void CudaBackend::scale_rows(const Tensor& x, const Tensor& w) {
  OpScope op_scope(profiler_.get(), "scale_rows");
  const backend_common::RowShape s = kChecks.rows("scale_rows", "x", x, DType::kF32);
  kChecks.tensor("scale_rows", "w", w, DType::kF32, {s.rows});
  if (s.rows * s.cols == 0) return;
  scale_rows_kernel<<<grid_for(s.rows * s.cols), kThreads, 0, stream_>>>(
      ptr<float>(x), ptr<float>(w), s.rows, s.cols);
  NNKIT_CUDA_CHECK_LAUNCH(scale_rows_kernel);
}

void CudaBackend::row_dot(const Tensor& a, const Tensor& b, const Tensor& out) {
  OpScope op_scope(profiler_.get(), "row_dot");
  const backend_common::RowShape s = kChecks.rows("row_dot", "a", a, DType::kF32);
  kChecks.dtype("row_dot", "b", b, DType::kF32);
  kChecks.same_shape("row_dot", "a", a, "b", b);
  kChecks.tensor("row_dot", "out", out, DType::kF32, {s.rows});
  if (s.rows == 0) return;
  const int64_t warps_per_block = kThreads / 32;
  const unsigned blocks = static_cast<unsigned>((s.rows + warps_per_block - 1) / warps_per_block);
  row_dot_kernel<<<blocks, kThreads, 0, stream_>>>(ptr<float>(a), ptr<float>(b), ptr<float>(out),
                                                   s.rows, s.cols);
  NNKIT_CUDA_CHECK_LAUNCH(row_dot_kernel);
}

void CudaBackend::sum_squares(const Tensor& x, const Tensor& out) {
  OpScope op_scope(profiler_.get(), "sum_squares");
  kChecks.dtype("sum_squares", "x", x, DType::kF32);
  kChecks.dtype("sum_squares", "out", out, DType::kF32);
  if (out.numel() != 1) kChecks.fail("sum_squares", "out is " + describe(out) + "; expected (1)");
  const int64_t n = x.numel();
  if (n == 0) return;
  Tensor partial = scratch(kSumBlocks * sizeof(double));
  sum_squares_partial_kernel<<<kSumBlocks, kThreads, 0, stream_>>>(ptr<float>(x), n,
                                                                   ptr<double>(partial));
  NNKIT_CUDA_CHECK_LAUNCH(sum_squares_partial_kernel);
  sum_squares_final_kernel<<<1, kSumBlocks, 0, stream_>>>(ptr<double>(partial), ptr<float>(out));
  NNKIT_CUDA_CHECK_LAUNCH(sum_squares_final_kernel);
}

}  // namespace nnkit::cuda
