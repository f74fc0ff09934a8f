// Purpose: backend/cuda row softmax (forward, backward), row logsumexp and row top-k. Owned by
// backend/cuda.
// Softmax: one block per row, three passes over x (max, sum of exp, exp times 1/sum) so y is
// written once: a bf16/f16 y is then rounded once, and y may alias x (all reads of the first two
// passes are done before the barrier that ends the sum). x and y have storage types of their own,
// widened to f32 and rounded on store (kernel_utils.cuh); the f32 case computes exactly what it
// did when y held the exponentials between passes (the same expf of the same argument). The
// backward's tensors share one dtype; its dot product is in double. Top-k (f32 only): the MoE
// router asks for k <= 8 of at most a few dozen experts per token, so each row is one warp: every
// lane keeps a sorted list of the best k of its strided columns, then k rounds of a warp arg-max
// merge the 32 lists. Ranking is the CPU's: larger value first, ties to the lower index. Large k
// (more than kWarpTopK, e.g. sampling over a vocabulary) takes one thread per row with insertion
// into the output row itself. Logsumexp (the router z-loss, E columns): one warp per row, the sum
// of exponentials in double like the CPU's.
#include "cuda_check.h"
#include "kernel_utils.cuh"

namespace nnkit::cuda {

namespace {

using backend_common::kFloatDTypes;

constexpr int kWarpTopK = 16;

template <typename TX, typename TY>
__global__ void softmax_rows_kernel(const TX* x, TY* y, int64_t cols) {
  __shared__ float shared_max[32];
  __shared__ float shared_sum[32];
  const int64_t row = blockIdx.x;
  const TX* xr = x + row * cols;
  TY* yr = y + row * cols;
  float mx = -INFINITY;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) mx = fmaxf(mx, to_float(xr[c]));
  mx = block_max(mx, shared_max);
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) sum += expf(to_float(xr[c]) - mx);
  sum = block_sum(sum, shared_sum);  // ends with a barrier: x may be overwritten from here on
  const float inv = 1.0f / sum;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    yr[c] = from_float<TY>(expf(to_float(xr[c]) - mx) * inv);
  }
}

// dx may alias dy: each thread reads dy[c] before writing dx[c], and the dot is complete first.
template <typename T>
__global__ void softmax_backward_kernel(const T* y, const T* dy, T* dx, int64_t cols) {
  __shared__ double shared[32];
  const int64_t row = blockIdx.x;
  const T* yr = y + row * cols;
  const T* dyr = dy + row * cols;
  T* dxr = dx + row * cols;
  double dot = 0.0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    dot += double(to_float(yr[c])) * to_float(dyr[c]);
  }
  const float d = static_cast<float>(block_sum(dot, shared));
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    dxr[c] = from_float<T>(to_float(yr[c]) * (to_float(dyr[c]) - d));
  }
}

__device__ __forceinline__ bool ranks_before(float va, int32_t ia, float vb, int32_t ib) {
  return va > vb || (va == vb && ia < ib);
}

// Inserts (v, idx) into the sorted list (vals, idxs) of capacity k holding `filled` entries.
__device__ __forceinline__ void insert_sorted(float* vals, int32_t* idxs, int k, int& filled,
                                              float v, int32_t idx) {
  if (filled == k && !ranks_before(v, idx, vals[k - 1], idxs[k - 1])) return;
  int pos = filled < k ? filled++ : k - 1;
  while (pos > 0 && ranks_before(v, idx, vals[pos - 1], idxs[pos - 1])) {
    vals[pos] = vals[pos - 1];
    idxs[pos] = idxs[pos - 1];
    --pos;
  }
  vals[pos] = v;
  idxs[pos] = idx;
}

// One warp per row, k <= kWarpTopK.
__global__ void topk_warp_kernel(const float* x, int64_t rows, int64_t cols, int k, float* values,
                                 int32_t* indices) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const float* xr = x + row * cols;
  float vals[kWarpTopK];
  int32_t idxs[kWarpTopK];
  int filled = 0;
  for (int64_t c = lane; c < cols; c += 32) {
    insert_sorted(vals, idxs, k, filled, xr[c], static_cast<int32_t>(c));
  }
  int head = 0;  // next unconsumed entry of this lane's list
  for (int j = 0; j < k; ++j) {
    float best_v = head < filled ? vals[head] : -INFINITY;
    int32_t best_i = head < filled ? idxs[head] : INT32_MAX;
    bool has = head < filled;
    // Warp arg-max under ranks_before; lanes without entries never win.
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, best_v, offset);
      const int32_t oi = __shfl_xor_sync(0xffffffffu, best_i, offset);
      const bool ohas = __shfl_xor_sync(0xffffffffu, has, offset);
      if (ohas && (!has || ranks_before(ov, oi, best_v, best_i))) {
        best_v = ov;
        best_i = oi;
        has = true;
      }
    }
    if (head < filled && idxs[head] == best_i) ++head;  // the winning lane consumes its head
    if (lane == 0) {
      values[row * k + j] = best_v;
      indices[row * k + j] = best_i;
    }
  }
}

// One thread per row, any k: insertion straight into the output row.
__global__ void topk_row_kernel(const float* x, int64_t rows, int64_t cols, int k, float* values,
                                int32_t* indices) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (row >= rows) return;
  const float* xr = x + row * cols;
  float* vr = values + row * k;
  int32_t* ir = indices + row * k;
  int filled = 0;
  for (int64_t c = 0; c < cols; ++c) insert_sorted(vr, ir, k, filled, xr[c], int32_t(c));
}

// One warp per row: max, then the sum of exp(x - max) in double.
__global__ void logsumexp_rows_kernel(const float* x, float* out, int64_t rows, int64_t cols) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const float* xr = x + row * cols;
  float mx = -INFINITY;
  for (int64_t c = lane; c < cols; c += 32) mx = fmaxf(mx, xr[c]);
  for (int d = 16; d > 0; d >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, d));
  if (!isfinite(mx)) {
    if (lane == 0) out[row] = mx;
    return;
  }
  double sum = 0.0;
  for (int64_t c = lane; c < cols; c += 32) sum += exp(double(xr[c] - mx));
  for (int d = 16; d > 0; d >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, d);
  if (lane == 0) out[row] = float(double(mx) + log(sum));
}

}  // namespace

void CudaBackend::softmax_rows(const Tensor& x, const Tensor& y) {
  OpScope op_scope(profiler_.get(), "softmax_rows");
  const char* op = "softmax_rows";
  const backend_common::RowShape s = kChecks.float_rows(op, "x", x, kFloatDTypes);
  kChecks.float_dtype(op, "y", y, kFloatDTypes);
  kChecks.same_shape(op, "x", x, "y", y);
  if (x.raw() == y.raw() && x.dtype() != y.dtype()) {
    kChecks.fail(op, "y is " + describe(y) + " over the memory of x " + describe(x) +
                         "; in place, x and y must share a dtype");
  }
  if (s.rows == 0 || s.cols == 0) return;
  dispatch_float(x.dtype(), [&](auto x_tag) {
    using TX = typename decltype(x_tag)::type;
    dispatch_float(y.dtype(), [&](auto y_tag) {
      using TY = typename decltype(y_tag)::type;
      softmax_rows_kernel<TX, TY>
          <<<static_cast<unsigned>(s.rows), kThreads, 0, stream_>>>(ptr<TX>(x), ptr<TY>(y), s.cols);
      NNKIT_CUDA_CHECK_LAUNCH(softmax_rows_kernel);
    });
  });
}

void CudaBackend::logsumexp_rows(const Tensor& x, const Tensor& out) {
  OpScope op_scope(profiler_.get(), "logsumexp_rows");
  const char* op = "logsumexp_rows";
  const backend_common::RowShape s = kChecks.rows(op, "x", x, DType::kF32);
  kChecks.tensor(op, "out", out, DType::kF32, {s.rows});
  if (s.rows == 0) return;
  constexpr int kWarpsPerBlock = kThreads / 32;
  const auto blocks = static_cast<unsigned>((s.rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  logsumexp_rows_kernel<<<blocks, kThreads, 0, stream_>>>(ptr<float>(x), ptr<float>(out), s.rows,
                                                          s.cols);
  NNKIT_CUDA_CHECK_LAUNCH(logsumexp_rows_kernel);
}

void CudaBackend::softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  OpScope op_scope(profiler_.get(), "softmax_backward");
  const char* op = "softmax_backward";
  const backend_common::RowShape s = kChecks.float_rows(op, "y", y, kFloatDTypes);
  kChecks.dtype_as(op, "dy", dy, "y", y);
  kChecks.dtype_as(op, "dx", dx, "y", y);
  kChecks.same_shape(op, "y", y, "dy", dy);
  kChecks.same_shape(op, "y", y, "dx", dx);
  if (s.rows == 0 || s.cols == 0) return;
  dispatch_float(y.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    softmax_backward_kernel<T><<<static_cast<unsigned>(s.rows), kThreads, 0, stream_>>>(
        ptr<T>(y), ptr<T>(dy), ptr<T>(dx), s.cols);
    NNKIT_CUDA_CHECK_LAUNCH(softmax_backward_kernel);
  });
}

void CudaBackend::topk_rows(const Tensor& x, int64_t k, const Tensor& values,
                            const Tensor& indices) {
  OpScope op_scope(profiler_.get(), "topk_rows");
  const backend_common::RowShape s = kChecks.rows("topk_rows", "x", x, DType::kF32);
  if (k < 0 || k > s.cols) {
    kChecks.fail("topk_rows", "k = " + std::to_string(k) + " is outside [0, " +
                                  std::to_string(s.cols) + "] for x " + describe(x));
  }
  kChecks.tensor("topk_rows", "values", values, DType::kF32, {s.rows, k});
  kChecks.tensor("topk_rows", "indices", indices, DType::kI32, {s.rows, k});
  if (s.rows == 0 || k == 0) return;
  if (k <= kWarpTopK) {
    const int64_t warps_per_block = kThreads / 32;
    const unsigned blocks = static_cast<unsigned>((s.rows + warps_per_block - 1) / warps_per_block);
    topk_warp_kernel<<<blocks, kThreads, 0, stream_>>>(ptr<float>(x), s.rows, s.cols, int(k),
                                                       ptr<float>(values), ptr<int32_t>(indices));
    NNKIT_CUDA_CHECK_LAUNCH(topk_warp_kernel);
  } else {
    topk_row_kernel<<<grid_for(s.rows, 64), 64, 0, stream_>>>(
        ptr<float>(x), s.rows, s.cols, int(k), ptr<float>(values), ptr<int32_t>(indices));
    NNKIT_CUDA_CHECK_LAUNCH(topk_row_kernel);
  }
}

}  // namespace nnkit::cuda
