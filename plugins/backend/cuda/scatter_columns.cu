// Purpose: backend/cuda scatter_add_columns: dst[n, index[n, j]] += src[n, j], the top-k gate
// gradients landing on the router's (N, E) scores without leaving the device. Owned by
// backend/cuda. One thread per row walks its k entries in order, so the result is deterministic
// (no atomics); rows are short (k <= E <= a few hundred), so this is launch-bound, not
// bandwidth-bound. An index outside [0, C) is skipped and reported through the fault word.
#include "cuda_check.h"
#include "kernel_utils.cuh"

namespace nnkit::cuda {

namespace {

__global__ void scatter_add_columns_kernel(const float* src, const int32_t* index, float* dst,
                                           int64_t rows, int64_t k, int64_t cols,
                                           DeviceFault* fault) {
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < rows;
       n += int64_t(gridDim.x) * blockDim.x) {
    for (int64_t j = 0; j < k; ++j) {
      const int32_t column = index[n * k + j];
      if (column < 0) continue;
      if (column >= cols) {
        report_fault(fault, FaultOp::kMoeSort, column, cols, n);
        continue;
      }
      dst[n * cols + column] += src[n * k + j];
    }
  }
}

}  // namespace

void CudaBackend::scatter_add_columns(const Tensor& src, const Tensor& index, const Tensor& dst) {
  OpScope op_scope(profiler_.get(), "scatter_add_columns");
  const char* op = "scatter_add_columns";
  const auto s = kChecks.rows(op, "src", src, DType::kF32);
  const auto i = kChecks.rows(op, "index", index, DType::kI32);
  const auto d = kChecks.rows(op, "dst", dst, DType::kF32);
  if (i.rows != s.rows || i.cols != s.cols || d.rows != s.rows) {
    kChecks.fail(op, "src is " + describe(src) + ", index " + describe(index) + ", dst " +
                         describe(dst) + "; expected src and index (N, k) and dst (N, C)");
  }
  if (s.rows == 0 || s.cols == 0) return;
  scatter_add_columns_kernel<<<grid_for(s.rows), kThreads, 0, stream_>>>(
      ptr<float>(src), ptr<int32_t>(index), ptr<float>(dst), s.rows, s.cols, d.cols, fault_);
  NNKIT_CUDA_CHECK_LAUNCH(scatter_add_columns_kernel);
}

}  // namespace nnkit::cuda
