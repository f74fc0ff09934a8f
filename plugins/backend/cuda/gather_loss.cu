// Purpose: backend/cuda row gather / scatter-add (embeddings, MoE dispatch and combine) and the
// softmax cross-entropy loss. Owned by backend/cuda.
// scatter_add_rows must add rows in order of n (the Backend contract, and what makes training
// repeat bit for bit). Instead of float atomics, the source rows are stably sorted by destination
// (CUB radix sort of (index, n) pairs), then one block per destination row walks its sources in
// ascending n and adds each into the running value, the same order as the CPU.
// Out-of-range indices cannot throw from a kernel: they are skipped and reported through the
// backend's fault word (see cuda_backend.h).
#include <cub/device/device_radix_sort.cuh>

#include "cuda_check.h"
#include "kernel_utils.cuh"

namespace nnkit::cuda {

namespace {

__global__ void gather_rows_kernel(const float* src, int64_t src_rows, const int32_t* index,
                                   float* dst, int64_t n, int64_t cols, DeviceFault* fault) {
  const int64_t total = n * cols;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = t / cols, c = t % cols;
    const int32_t from = index[row];
    if (from >= 0 && from < src_rows) {
      dst[t] = src[int64_t(from) * cols + c];
    } else {
      dst[t] = 0.0f;
      if (from != -1 && c == 0) report_fault(fault, FaultOp::kGatherRows, from, src_rows, row);
    }
  }
}

// Sort keys: the destination row, or dst_rows for skipped / out-of-range rows (sorted last).
__global__ void scatter_keys_kernel(const int32_t* index, int64_t n, int64_t dst_rows,
                                    int32_t* keys, int32_t* order, DeviceFault* fault) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int32_t to = index[i];
    const bool valid = to >= 0 && to < dst_rows;
    if (!valid && to != -1) report_fault(fault, FaultOp::kScatterAddRows, to, dst_rows, i);
    keys[i] = valid ? to : static_cast<int32_t>(dst_rows);
    order[i] = static_cast<int32_t>(i);
  }
}

// First position in sorted[0, n) whose key is >= key.
__device__ int64_t lower_bound(const int32_t* sorted, int64_t n, int32_t key) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (sorted[mid] < key) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// One block per destination row; threads over columns; sources in ascending n.
__global__ void scatter_accumulate_kernel(const float* src, const float* weight,
                                          const int32_t* sorted_keys, const int32_t* sorted_order,
                                          int64_t n, float* dst, int64_t cols) {
  const int32_t row = static_cast<int32_t>(blockIdx.x);
  __shared__ int64_t range[2];
  if (threadIdx.x == 0) {
    range[0] = lower_bound(sorted_keys, n, row);
    range[1] = lower_bound(sorted_keys, n, row + 1);
  }
  __syncthreads();
  const int64_t begin = range[0], end = range[1];
  if (begin == end) return;
  float* dr = dst + int64_t(row) * cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float acc = dr[c];
    for (int64_t j = begin; j < end; ++j) {
      const int64_t from = sorted_order[j];
      const float w = weight != nullptr ? weight[from] : 1.0f;
      acc += w * src[from * cols + c];
    }
    dr[c] = acc;
  }
}

// One block per row: losses[n] = logsumexp(x) - x[target]; negative targets are ignored (0).
__global__ void cross_entropy_forward_kernel(const float* logits, const int32_t* targets,
                                             float* losses, int64_t cols, DeviceFault* fault) {
  __shared__ float shared_max[32];
  __shared__ float shared_sum[32];
  const int64_t row = blockIdx.x;
  const int32_t target = targets[row];
  if (target < 0 || target >= cols) {
    if (threadIdx.x == 0) {
      losses[row] = 0.0f;
      if (target >= cols) report_fault(fault, FaultOp::kCrossEntropy, target, cols, row);
    }
    return;
  }
  const float* xr = logits + row * cols;
  float mx = -INFINITY;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) mx = fmaxf(mx, xr[c]);
  mx = block_max(mx, shared_max);
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) sum += expf(xr[c] - mx);
  sum = block_sum(sum, shared_sum);
  if (threadIdx.x == 0) losses[row] = logf(sum) - (xr[target] - mx);
}

// dlogits = scale (softmax - onehot(target)); may alias logits (max and sum are read first).
__global__ void cross_entropy_backward_kernel(const float* logits, const int32_t* targets,
                                              float scale, float* dlogits, int64_t cols,
                                              DeviceFault* fault) {
  __shared__ float shared_max[32];
  __shared__ float shared_sum[32];
  const int64_t row = blockIdx.x;
  const int32_t target = targets[row];
  const float* xr = logits + row * cols;
  float* dr = dlogits + row * cols;
  if (target < 0 || target >= cols) {
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) dr[c] = 0.0f;
    if (threadIdx.x == 0 && target >= cols) {
      report_fault(fault, FaultOp::kCrossEntropy, target, cols, row);
    }
    return;
  }
  float mx = -INFINITY;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) mx = fmaxf(mx, xr[c]);
  mx = block_max(mx, shared_max);
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) sum += expf(xr[c] - mx);
  sum = block_sum(sum, shared_sum);  // ends with a barrier: every read of xr is done
  const float k = scale / sum;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    dr[c] = k * expf(xr[c] - mx) - (c == target ? scale : 0.0f);
  }
}

int key_bits(int64_t max_key) {
  int bits = 1;
  while (bits < 31 && (int64_t{1} << bits) <= max_key) ++bits;
  return bits;
}

}  // namespace

void CudaBackend::gather_rows(const Tensor& src, const Tensor& index, const Tensor& dst) {
  OpScope op_scope(profiler_.get(), "gather_rows");
  const backend_common::RowShape s = kChecks.rows("gather_rows", "src", src, DType::kF32);
  kChecks.dtype("gather_rows", "index", index, DType::kI32);
  if (index.rank() != 1) {
    kChecks.fail("gather_rows", "index is " + describe(index) + "; expected (N)");
  }
  kChecks.tensor("gather_rows", "dst", dst, DType::kF32, {index.dim(0), s.cols});
  const int64_t n = index.dim(0);
  if (n * s.cols == 0) return;
  gather_rows_kernel<<<grid_for(n * s.cols), kThreads, 0, stream_>>>(
      ptr<float>(src), s.rows, ptr<int32_t>(index), ptr<float>(dst), n, s.cols, fault_);
  NNKIT_CUDA_CHECK_LAUNCH(gather_rows_kernel);
}

void CudaBackend::scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& weight,
                                   const Tensor& dst) {
  OpScope op_scope(profiler_.get(), "scatter_add_rows");
  const char* op = "scatter_add_rows";
  const backend_common::RowShape s = kChecks.rows(op, "src", src, DType::kF32);
  const backend_common::RowShape d = kChecks.rows(op, "dst", dst, DType::kF32);
  kChecks.tensor(op, "index", index, DType::kI32, {s.rows});
  if (src.rank() != 2 || dst.rank() != 2 || d.cols != s.cols) {
    kChecks.fail(op, "src is " + describe(src) + " and dst is " + describe(dst) +
                         "; expected (N, C) and (R, C)");
  }
  if (weight.defined()) kChecks.tensor(op, "weight", weight, DType::kF32, {s.rows});
  if (d.rows >= INT32_MAX) kChecks.fail(op, "dst has too many rows: " + describe(dst));
  const int64_t n = s.rows;
  if (n == 0 || s.cols == 0 || d.rows == 0) return;

  // keys_in | order_in | keys_out | order_out | CUB temporary storage, one scratch block.
  size_t temp_bytes = 0;
  NNKIT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, temp_bytes, static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), static_cast<int>(n), 0,
      key_bits(d.rows), stream_));
  const size_t array_bytes = (static_cast<size_t>(n) * sizeof(int32_t) + 255) / 256 * 256;
  Tensor buffer = scratch(4 * array_bytes + temp_bytes);
  char* base = static_cast<char*>(buffer.raw());
  auto* keys_in = reinterpret_cast<int32_t*>(base);
  auto* order_in = reinterpret_cast<int32_t*>(base + array_bytes);
  auto* keys_out = reinterpret_cast<int32_t*>(base + 2 * array_bytes);
  auto* order_out = reinterpret_cast<int32_t*>(base + 3 * array_bytes);
  void* temp = base + 4 * array_bytes;

  scatter_keys_kernel<<<grid_for(n), kThreads, 0, stream_>>>(ptr<int32_t>(index), n, d.rows,
                                                             keys_in, order_in, fault_);
  NNKIT_CUDA_CHECK_LAUNCH(scatter_keys_kernel);
  NNKIT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, order_in,
                                                   order_out, static_cast<int>(n), 0,
                                                   key_bits(d.rows), stream_));
  const int threads = s.cols >= 256 ? 256 : (s.cols >= 128 ? 128 : 64);
  scatter_accumulate_kernel<<<static_cast<unsigned>(d.rows), threads, 0, stream_>>>(
      ptr<float>(src), weight.defined() ? ptr<float>(weight) : nullptr, keys_out, order_out, n,
      ptr<float>(dst), s.cols);
  NNKIT_CUDA_CHECK_LAUNCH(scatter_accumulate_kernel);
}

void CudaBackend::cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                        const Tensor& losses) {
  OpScope op_scope(profiler_.get(), "cross_entropy_forward");
  const char* op = "cross_entropy_forward";
  const backend_common::RowShape s = kChecks.rows(op, "logits", logits, DType::kF32);
  kChecks.tensor(op, "targets", targets, DType::kI32, {s.rows});
  kChecks.tensor(op, "losses", losses, DType::kF32, {s.rows});
  if (s.rows == 0) return;
  cross_entropy_forward_kernel<<<static_cast<unsigned>(s.rows), kThreads, 0, stream_>>>(
      ptr<float>(logits), ptr<int32_t>(targets), ptr<float>(losses), s.cols, fault_);
  NNKIT_CUDA_CHECK_LAUNCH(cross_entropy_forward_kernel);
}

void CudaBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets, float scale,
                                         const Tensor& dlogits) {
  OpScope op_scope(profiler_.get(), "cross_entropy_backward");
  const char* op = "cross_entropy_backward";
  const backend_common::RowShape s = kChecks.rows(op, "logits", logits, DType::kF32);
  kChecks.tensor(op, "targets", targets, DType::kI32, {s.rows});
  kChecks.dtype(op, "dlogits", dlogits, DType::kF32);
  kChecks.same_shape(op, "logits", logits, "dlogits", dlogits);
  if (s.rows == 0) return;
  cross_entropy_backward_kernel<<<static_cast<unsigned>(s.rows), kThreads, 0, stream_>>>(
      ptr<float>(logits), ptr<int32_t>(targets), scale, ptr<float>(dlogits), s.cols, fault_);
  NNKIT_CUDA_CHECK_LAUNCH(cross_entropy_backward_kernel);
}

}  // namespace nnkit::cuda
