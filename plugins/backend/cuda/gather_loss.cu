// Purpose: backend/cuda row gather / scatter-add (embeddings, MoE dispatch and combine) and the
// softmax cross-entropy loss. Owned by backend/cuda.
// scatter_add_rows must add rows in order of n (the Backend contract, and what makes training
// repeat bit for bit). Few sources (<= 512, decoding) take one kernel that finds each
// destination's sources by an in-order ballot scan. Otherwise, instead of float atomics, the
// source rows are stably sorted by destination (CUB radix sort of (index, n) pairs), then one
// block per destination row walks its sources in ascending n and adds each into the running
// value, the same order as the CPU.
// Out-of-range indices cannot throw from a kernel: they are skipped and reported through the
// backend's fault word (see cuda_backend.h).
// Dtypes: gather_rows copies rows of any dtype as raw bytes, in the widest units (up to 16 bytes)
// the row size and alignment allow, one warp per row. scatter_add_rows widens each source row to
// f32 and keeps each destination element's running sum in f32, rounding it once into dst (bf16
// expert outputs combine into an f32 or bf16 residual). Cross-entropy widens bf16/f16 logits and
// rounds dlogits once; f32 logits keep the kernels they always had (block of 256 threads, two
// passes for max and sum), while bf16/f16 rows (the (16384, 32000) logits of training) are read
// in 16-byte packs by up to 1024 threads with the max and the sum of exponentials found in one
// pass (each thread rescales its running sum when its maximum grows), so a row is read once for
// the loss and twice (the second time mostly from L2) for its gradient.
#include <cub/device/device_radix_sort.cuh>
#include <type_traits>

#include "cuda_check.h"
#include "dependent_launch.cuh"
#include "kernel_utils.cuh"

namespace nnkit::cuda {

namespace {

using backend_common::kFloatDTypes;

// One warp per destination row; lanes copy the row's `units` copy units (Unit: 16, 8, 4, 2 or 1
// bytes). A skipped or out-of-range row is all zero bits: 0 in every dtype.
template <typename Unit>
__global__ void gather_rows_kernel(const Unit* src, int64_t src_rows, const int32_t* index,
                                   Unit* dst, int64_t n, int64_t units, DeviceFault* fault) {
  wait_for_preceding_grid();
  allow_dependent_launch();
  const int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= n) return;
  const int32_t from = index[row];
  Unit* dr = dst + row * units;
  if (from >= 0 && from < src_rows) {
    const Unit* sr = src + int64_t(from) * units;
    for (int64_t u = lane; u < units; u += 32) dr[u] = sr[u];
  } else {
    for (int64_t u = lane; u < units; u += 32) dr[u] = Unit{};
    if (from != -1 && lane == 0) report_fault(fault, FaultOp::kGatherRows, from, src_rows, row);
  }
}

// The widest copy unit (16, 8, 4, 2 or 1 bytes) dividing the row size and both base addresses.
int copy_unit_bytes(size_t row_bytes, const void* a, const void* b) {
  const uintptr_t bits =
      row_bytes | reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b);
  int unit = 16;
  while (unit > 1 && bits % unit != 0) unit /= 2;
  return unit;
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

// One block per destination row; threads over packs of kWidth columns (cols a multiple of kWidth
// when kWidth > 1); sources in ascending n. The running sum stays in f32 and is rounded into dst
// once.
// Few sources (decoding: the MoE combine of a handful of tokens): one block per destination
// row finds its sources by scanning the index list in order (a warp ballot per 32 entries), so
// no sort is needed; the sum then runs over the same sources in the same ascending order as
// scatter_accumulate_kernel, bit for bit. Out-of-range indices are reported by block 0.
constexpr int64_t kSmallScatterSources = 512;

// moe_combine_rows runs the same kernel with weight_index (each source's weight is
// weight[weight_index[n]]) and overwrite (the sum starts at 0, and rows without a source are
// written as zeros): the fill, the gather of the gates and the scatter in one launch, bit for bit.
template <typename TS, typename TD, int kWidth>
__global__ void scatter_small_kernel(const TS* src, const float* weight,
                                     const int32_t* weight_index, const int32_t* index, int64_t n,
                                     int64_t dst_rows, TD* dst, int64_t cols, bool overwrite,
                                     DeviceFault* fault) {
  wait_for_preceding_grid();
  allow_dependent_launch();
  __shared__ int32_t sources[kSmallScatterSources];
  __shared__ float source_weight[kSmallScatterSources];
  __shared__ int count;
  const int32_t row = static_cast<int32_t>(blockIdx.x);
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int found = 0;
    for (int64_t base = 0; base < n; base += 32) {
      const int64_t i = base + lane;
      const int32_t to = i < n ? index[i] : -1;
      if (blockIdx.x == 0 && i < n && to != -1 && (to < 0 || to >= dst_rows)) {
        report_fault(fault, FaultOp::kScatterAddRows, to, dst_rows, i);
      }
      const unsigned match = __ballot_sync(0xffffffffu, i < n && to == row);
      if ((match >> lane) & 1u) {
        // Each source's weight looked up here, by its own lane: the column loop below then
        // has no dependent loads.
        const int at = found + __popc(match & ((1u << lane) - 1u));
        sources[at] = int32_t(i);
        source_weight[at] = weight == nullptr         ? 1.0f
                            : weight_index != nullptr ? weight[weight_index[i]]
                                                      : weight[i];
      }
      found += __popc(match);
    }
    if (lane == 0) count = found;
  }
  __syncthreads();
  const int found = count;
  if (found == 0 && !overwrite) return;
  TD* dr = dst + int64_t(row) * cols;
  constexpr int kInFlight = 4;  // sources' rows loaded before any is added (same order of sums)
  for (int64_t c = int64_t(threadIdx.x) * kWidth; c < cols; c += int64_t(blockDim.x) * kWidth) {
    float acc[kWidth];
    if (overwrite) {
#pragma unroll
      for (int e = 0; e < kWidth; ++e) acc[e] = 0.0f;
    } else {
      load_floats<kWidth>(dr + c, acc);
    }
    for (int j0 = 0; j0 < found; j0 += kInFlight) {
      float v[kInFlight][kWidth];
#pragma unroll
      for (int r = 0; r < kInFlight; ++r) {
        if (j0 + r < found) load_floats<kWidth>(src + int64_t(sources[j0 + r]) * cols + c, v[r]);
      }
#pragma unroll
      for (int r = 0; r < kInFlight; ++r) {
        if (j0 + r < found) {
          const float w = source_weight[j0 + r];
#pragma unroll
          for (int e = 0; e < kWidth; ++e) acc[e] += w * v[r][e];
        }
      }
    }
    store_floats<kWidth>(dr + c, acc);
  }
}

template <typename TS, typename TD, int kWidth>
__global__ void scatter_accumulate_kernel(const TS* src, const float* weight,
                                          const int32_t* sorted_keys, const int32_t* sorted_order,
                                          int64_t n, TD* dst, int64_t cols) {
  const int32_t row = static_cast<int32_t>(blockIdx.x);
  __shared__ int64_t range[2];
  if (threadIdx.x == 0) {
    range[0] = lower_bound(sorted_keys, n, row);
    range[1] = lower_bound(sorted_keys, n, row + 1);
  }
  __syncthreads();
  const int64_t begin = range[0], end = range[1];
  if (begin == end) return;
  TD* dr = dst + int64_t(row) * cols;
  for (int64_t c = int64_t(threadIdx.x) * kWidth; c < cols; c += int64_t(blockDim.x) * kWidth) {
    float acc[kWidth];
    load_floats<kWidth>(dr + c, acc);
    for (int64_t j = begin; j < end; ++j) {
      const int64_t from = sorted_order[j];
      const float w = weight != nullptr ? weight[from] : 1.0f;
      float v[kWidth];
      load_floats<kWidth>(src + from * cols + c, v);
#pragma unroll
      for (int e = 0; e < kWidth; ++e) acc[e] += w * v[e];
    }
    store_floats<kWidth>(dr + c, acc);
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
// f32 logits; dlogits of any float type TD.
template <typename TD>
__global__ void cross_entropy_backward_kernel(const float* logits, const int32_t* targets,
                                              float scale, TD* dlogits, int64_t cols,
                                              DeviceFault* fault) {
  __shared__ float shared_max[32];
  __shared__ float shared_sum[32];
  const int64_t row = blockIdx.x;
  const int32_t target = targets[row];
  const float* xr = logits + row * cols;
  TD* dr = dlogits + row * cols;
  if (target < 0 || target >= cols) {
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) dr[c] = from_float<TD>(0.0f);
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
    dr[c] = from_float<TD>(k * expf(xr[c] - mx) - (c == target ? scale : 0.0f));
  }
}

// The row's maximum and sum of exp(x - max) for bf16/f16 logits, in one pass: each thread keeps
// a running maximum of its packs and a sum relative to it (rescaled when the maximum grows); the
// block then rescales every thread's sum to the row maximum and adds them (fixed trees).
template <int kWidth, typename TL>
__device__ void row_max_and_sum(const TL* xr, int64_t cols, float* shared_max, float* shared_sum,
                                float& row_max, float& row_sum) {
  float m = -INFINITY, s = 0.0f;
  for (int64_t c = int64_t(threadIdx.x) * kWidth; c < cols; c += int64_t(blockDim.x) * kWidth) {
    float v[kWidth];
    load_floats<kWidth>(xr + c, v);
    float pack_max = v[0];
#pragma unroll
    for (int e = 1; e < kWidth; ++e) pack_max = fmaxf(pack_max, v[e]);
    if (pack_max > m) {
      s *= expf(m - pack_max);  // 0 while m is -inf (s is 0 then too)
      m = pack_max;
    }
    if (m != -INFINITY) {
#pragma unroll
      for (int e = 0; e < kWidth; ++e) s += expf(v[e] - m);
    }
  }
  row_max = block_max(m, shared_max);
  const float rescaled = m == -INFINITY ? 0.0f : s * expf(m - row_max);
  row_sum = block_sum(rescaled, shared_sum);  // ends with a barrier: every read of xr is done
}

// One block per row of bf16/f16 logits: losses[n] = logsumexp(x) - x[target].
template <typename TL, int kWidth>
__global__ void __launch_bounds__(1024)
    cross_entropy_forward_half_kernel(const TL* logits, const int32_t* targets, float* losses,
                                      int64_t cols, DeviceFault* fault) {
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
  const TL* xr = logits + row * cols;
  float mx, sum;
  row_max_and_sum<kWidth>(xr, cols, shared_max, shared_sum, mx, sum);
  if (threadIdx.x == 0) losses[row] = logf(sum) - (to_float(xr[target]) - mx);
}

// One block per row of bf16/f16 logits: dlogits (any float type) = scale (softmax - onehot);
// may alias logits when the dtypes agree (each thread rewrites only the packs it read).
template <typename TL, typename TD, int kWidth>
__global__ void __launch_bounds__(1024)
    cross_entropy_backward_half_kernel(const TL* logits, const int32_t* targets, float scale,
                                       TD* dlogits, int64_t cols, DeviceFault* fault) {
  __shared__ float shared_max[32];
  __shared__ float shared_sum[32];
  const int64_t row = blockIdx.x;
  const int32_t target = targets[row];
  const TL* xr = logits + row * cols;
  TD* dr = dlogits + row * cols;
  const int64_t first = int64_t(threadIdx.x) * kWidth, stride = int64_t(blockDim.x) * kWidth;
  if (target < 0 || target >= cols) {
    float zeros[kWidth];
#pragma unroll
    for (int e = 0; e < kWidth; ++e) zeros[e] = 0.0f;
    for (int64_t c = first; c < cols; c += stride) store_floats<kWidth>(dr + c, zeros);
    if (threadIdx.x == 0 && target >= cols) {
      report_fault(fault, FaultOp::kCrossEntropy, target, cols, row);
    }
    return;
  }
  float mx, sum;
  row_max_and_sum<kWidth>(xr, cols, shared_max, shared_sum, mx, sum);
  const float k = scale / sum;
  for (int64_t c = first; c < cols; c += stride) {
    float v[kWidth];
    load_floats<kWidth>(xr + c, v);
#pragma unroll
    for (int e = 0; e < kWidth; ++e) {
      v[e] = k * expf(v[e] - mx) - (c + e == target ? scale : 0.0f);
    }
    store_floats<kWidth>(dr + c, v);
  }
}

// Threads for a bf16/f16 cross-entropy row of `packs` packs: a power of two from 32 to 1024, so
// wide rows keep many loads in flight and narrow ones leave few threads idle.
int cross_entropy_threads(int64_t packs) {
  int threads = 32;
  while (threads < 1024 && threads < packs) threads *= 2;
  return threads;
}

int key_bits(int64_t max_key) {
  int bits = 1;
  while (bits < 31 && (int64_t{1} << bits) <= max_key) ++bits;
  return bits;
}

}  // namespace

void CudaBackend::gather_rows(const Tensor& src, const Tensor& index, const Tensor& dst) {
  OpScope op_scope(profiler_.get(), "gather_rows");
  const char* op = "gather_rows";
  kChecks.on_device(op, "src", src);
  const backend_common::RowShape s = kChecks.rows(op, "src", src, src.dtype());
  kChecks.dtype(op, "index", index, DType::kI32);
  if (index.rank() != 1) kChecks.fail(op, "index is " + describe(index) + "; expected (N)");
  kChecks.dtype_as(op, "dst", dst, "src", src);
  if (dst.shape() != Shape{index.dim(0), s.cols}) {
    kChecks.fail(op, "dst is " + describe(dst) + "; expected shape " +
                         to_string(Shape{index.dim(0), s.cols}));
  }
  const int64_t n = index.dim(0);
  if (n * s.cols == 0) return;
  const size_t row_bytes = static_cast<size_t>(s.cols) * dtype_size(src.dtype());
  const int unit = copy_unit_bytes(row_bytes, src.raw(), dst.raw());
  const int64_t units = static_cast<int64_t>(row_bytes / unit);
  const int64_t rows_per_block = kThreads / 32;
  const unsigned blocks = static_cast<unsigned>((n + rows_per_block - 1) / rows_per_block);
  auto launch = [&](auto unit_tag) {
    using Unit = typename decltype(unit_tag)::type;
    launch_dependent(gather_rows_kernel<Unit>, blocks, kThreads, 0, stream_,
                     static_cast<const Unit*>(src.raw()), s.rows, ptr<int32_t>(index),
                     static_cast<Unit*>(dst.raw()), n, units, fault_);
    NNKIT_CUDA_CHECK_LAUNCH(gather_rows_kernel);
  };
  switch (unit) {
    case 16:
      launch(StorageTag<uint4>{});
      break;
    case 8:
      launch(StorageTag<uint2>{});
      break;
    case 4:
      launch(StorageTag<uint32_t>{});
      break;
    case 2:
      launch(StorageTag<uint16_t>{});
      break;
    default:
      launch(StorageTag<uint8_t>{});
      break;
  }
}

namespace {

constexpr int64_t kSmallScatterRows = 4096;  // destination rows the few-source kernel takes

// Runs launch(src tag, dst tag, width tag, threads) with the storage types, the pack width (one
// 16-byte source load; the destination pack, 8 or 32 bytes for halves into f32, must be aligned
// too; each element's sum runs in the same order either way) and the block size.
template <typename Launch>
void dispatch_scatter(const Tensor& src, const Tensor& dst, int64_t cols, Launch&& launch) {
  dispatch_float(src.dtype(), [&](auto src_tag) {
    using TS = typename decltype(src_tag)::type;
    dispatch_float(dst.dtype(), [&](auto dst_tag) {
      using TD = typename decltype(dst_tag)::type;
      constexpr int kPacked = kPackWidth<TS>;
      const bool packed = cols % kPacked == 0 && aligned16(src.raw()) &&
                          reinterpret_cast<uintptr_t>(dst.raw()) % alignof(Pack<TD, kPacked>) == 0;
      with_pack_width<TS>(packed, [&](auto width) {
        const int64_t lanes = cols / decltype(width)::value;
        launch(src_tag, dst_tag, width, lanes <= 64 ? 64 : (lanes <= 128 ? 128 : 256));
      });
    });
  });
}

}  // namespace

void CudaBackend::scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& weight,
                                   const Tensor& dst) {
  OpScope op_scope(profiler_.get(), "scatter_add_rows");
  const char* op = "scatter_add_rows";
  const backend_common::RowShape s = kChecks.float_rows(op, "src", src, kFloatDTypes);
  const backend_common::RowShape d = kChecks.float_rows(op, "dst", dst, kFloatDTypes);
  kChecks.tensor(op, "index", index, DType::kI32, {s.rows});
  if (src.rank() != 2 || dst.rank() != 2 || d.cols != s.cols) {
    kChecks.fail(op, "src is " + describe(src) + " and dst is " + describe(dst) +
                         "; expected (N, C) and (R, C)");
  }
  if (weight.defined()) kChecks.tensor(op, "weight", weight, DType::kF32, {s.rows});
  if (d.rows >= INT32_MAX) kChecks.fail(op, "dst has too many rows: " + describe(dst));
  const int64_t n = s.rows;
  if (n == 0 || s.cols == 0 || d.rows == 0) return;

  const float* weights = weight.defined() ? ptr<float>(weight) : nullptr;
  auto dispatch = [&](auto&& launch) { dispatch_scatter(src, dst, s.cols, launch); };
  if (n <= kSmallScatterSources && d.rows <= kSmallScatterRows) {
    dispatch([&](auto src_tag, auto dst_tag, auto width, int threads) {
      using TS = typename decltype(src_tag)::type;
      using TD = typename decltype(dst_tag)::type;
      scatter_small_kernel<TS, TD, decltype(width)::value>
          <<<static_cast<unsigned>(d.rows), threads, 0, stream_>>>(
              ptr<TS>(src), weights, nullptr, ptr<int32_t>(index), n, d.rows, ptr<TD>(dst), s.cols,
              false, fault_);
      NNKIT_CUDA_CHECK_LAUNCH(scatter_small_kernel);
    });
    return;
  }
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
  dispatch([&](auto src_tag, auto dst_tag, auto width, int threads) {
    using TS = typename decltype(src_tag)::type;
    using TD = typename decltype(dst_tag)::type;
    scatter_accumulate_kernel<TS, TD, decltype(width)::value>
        <<<static_cast<unsigned>(d.rows), threads, 0, stream_>>>(
            ptr<TS>(src), weights, keys_out, order_out, n, ptr<TD>(dst), s.cols);
    NNKIT_CUDA_CHECK_LAUNCH(scatter_accumulate_kernel);
  });
}

void CudaBackend::moe_combine_rows(const Tensor& src, const Tensor& token, const Tensor& slot,
                                   const Tensor& gate, const Tensor& dst) {
  OpScope op_scope(profiler_.get(), "moe_combine_rows");
  const char* op = "moe_combine_rows";
  const backend_common::RowShape s = kChecks.float_rows(op, "src", src, kFloatDTypes);
  const backend_common::RowShape d = kChecks.float_rows(op, "dst", dst, kFloatDTypes);
  kChecks.tensor(op, "token", token, DType::kI32, {s.rows});
  kChecks.tensor(op, "slot", slot, DType::kI32, {s.rows});
  if (src.rank() != 2 || dst.rank() != 2 || d.cols != s.cols || gate.rank() != 1 ||
      gate.dtype() != DType::kF32) {
    kChecks.fail(op, "src is " + describe(src) + ", dst " + describe(dst) + " and gate " +
                         describe(gate) + "; expected (N, C), (R, C) and (S) f32");
  }
  if (s.rows > kSmallScatterSources || d.rows > kSmallScatterRows) {
    // Many rows (not a decode step): the three ops this one fuses.
    fill(dst, 0.0f);
    Tensor weights = empty({s.rows, 1});
    gather_rows(gate.view({gate.numel(), 1}), slot, weights);
    scatter_add_rows(src, token, weights.view({s.rows}), dst);
    return;
  }
  if (s.cols == 0 || d.rows == 0) return;
  dispatch_scatter(src, dst, s.cols, [&](auto src_tag, auto dst_tag, auto width, int threads) {
    using TS = typename decltype(src_tag)::type;
    using TD = typename decltype(dst_tag)::type;
    launch_dependent(scatter_small_kernel<TS, TD, decltype(width)::value>,
                     static_cast<unsigned>(d.rows), threads, 0, stream_, ptr<TS>(src),
                     ptr<float>(gate), ptr<int32_t>(slot), ptr<int32_t>(token), s.rows, d.rows,
                     ptr<TD>(dst), s.cols, true, fault_);
    NNKIT_CUDA_CHECK_LAUNCH(scatter_small_kernel);
  });
}

void CudaBackend::cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                        const Tensor& losses) {
  OpScope op_scope(profiler_.get(), "cross_entropy_forward");
  const char* op = "cross_entropy_forward";
  const backend_common::RowShape s = kChecks.float_rows(op, "logits", logits, kFloatDTypes);
  kChecks.tensor(op, "targets", targets, DType::kI32, {s.rows});
  kChecks.tensor(op, "losses", losses, DType::kF32, {s.rows});
  if (s.rows == 0) return;
  if (logits.dtype() == DType::kF32) {
    cross_entropy_forward_kernel<<<static_cast<unsigned>(s.rows), kThreads, 0, stream_>>>(
        ptr<float>(logits), ptr<int32_t>(targets), ptr<float>(losses), s.cols, fault_);
    NNKIT_CUDA_CHECK_LAUNCH(cross_entropy_forward_kernel);
    return;
  }
  dispatch_half(logits.dtype(), [&](auto tag) {
    using TL = typename decltype(tag)::type;
    const bool packed = aligned16(logits.raw()) && s.cols % kPackWidth<TL> == 0;
    with_pack_width<TL>(packed, [&](auto width) {
      constexpr int kW = decltype(width)::value;
      cross_entropy_forward_half_kernel<TL, kW>
          <<<static_cast<unsigned>(s.rows), cross_entropy_threads(s.cols / kW), 0, stream_>>>(
              ptr<TL>(logits), ptr<int32_t>(targets), ptr<float>(losses), s.cols, fault_);
      NNKIT_CUDA_CHECK_LAUNCH(cross_entropy_forward_half_kernel);
    });
  });
}

void CudaBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets, float scale,
                                         const Tensor& dlogits) {
  OpScope op_scope(profiler_.get(), "cross_entropy_backward");
  const char* op = "cross_entropy_backward";
  const backend_common::RowShape s = kChecks.float_rows(op, "logits", logits, kFloatDTypes);
  kChecks.tensor(op, "targets", targets, DType::kI32, {s.rows});
  kChecks.float_dtype(op, "dlogits", dlogits, kFloatDTypes);
  kChecks.same_shape(op, "logits", logits, "dlogits", dlogits);
  if (logits.raw() == dlogits.raw() && logits.dtype() != dlogits.dtype()) {
    kChecks.fail(op, "dlogits is " + describe(dlogits) + " over the memory of logits " +
                         describe(logits) + "; in place, they must share a dtype");
  }
  if (s.rows == 0) return;
  dispatch_float(dlogits.dtype(), [&](auto dlogits_tag) {
    using TD = typename decltype(dlogits_tag)::type;
    if (logits.dtype() == DType::kF32) {
      cross_entropy_backward_kernel<TD><<<static_cast<unsigned>(s.rows), kThreads, 0, stream_>>>(
          ptr<float>(logits), ptr<int32_t>(targets), scale, ptr<TD>(dlogits), s.cols, fault_);
      NNKIT_CUDA_CHECK_LAUNCH(cross_entropy_backward_kernel);
      return;
    }
    dispatch_half(logits.dtype(), [&](auto logits_tag) {
      using TL = typename decltype(logits_tag)::type;
      constexpr int kPacked = kPackWidth<TL>;
      const bool packed =
          s.cols % kPacked == 0 && aligned16(logits.raw()) &&
          reinterpret_cast<uintptr_t>(dlogits.raw()) % alignof(Pack<TD, kPacked>) == 0;
      with_pack_width<TL>(packed, [&](auto width) {
        constexpr int kW = decltype(width)::value;
        cross_entropy_backward_half_kernel<TL, TD, kW>
            <<<static_cast<unsigned>(s.rows), cross_entropy_threads(s.cols / kW), 0, stream_>>>(
                ptr<TL>(logits), ptr<int32_t>(targets), scale, ptr<TD>(dlogits), s.cols, fault_);
        NNKIT_CUDA_CHECK_LAUNCH(cross_entropy_backward_half_kernel);
      });
    });
  });
}

}  // namespace nnkit::cuda
