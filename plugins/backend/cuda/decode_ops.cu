// Purpose: backend/cuda ops of the device-resident decode step: kv_cache_append reads the cache
// length from device memory (so one recorded CUDA Graph serves every token), and
// moe_grouped_gemm_nt / moe_grouped_swiglu_nt run every expert's few decode rows in one launch
// that reads only the chosen experts' weights. (attention_decode is in attention_decode.cu.)
// Owned by backend/cuda. Fixed orders throughout: results repeat bit for bit.
#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "cuda_check.h"
#include "dependent_launch.cuh"
#include "grouped_experts.cuh"
#include "kernel_utils.cuh"
#include "mma_m16n8k16.cuh"

namespace nnkit::cuda {

namespace {

using backend_common::kFloatDTypes;

// ---- kv_cache_append ------------------------------------------------------------------------
template <typename T>
__global__ void kv_append_kernel(T* cache, const T* rows, int64_t batch, int64_t t_rows,
                                 int64_t width, int64_t capacity, const int32_t* cache_len,
                                 DeviceFault* fault) {
  const int64_t len = *cache_len;
  if (len < 0 || len + t_rows > capacity) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      report_fault(fault, FaultOp::kKvCacheAppend, len + t_rows, capacity + 1, 0);
    }
    return;
  }
  const int64_t n = batch * t_rows * width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / width, col = i % width;
    const int64_t b = row / t_rows, t = row % t_rows;
    cache[(b * capacity + len + t) * width + col] = rows[i];
  }
}

// ---- moe_grouped_gemm_nt ---------------------------------------------------------------------
// A fixed grid of warps walks the (chosen expert, output column j) pairs: a warp per pair, all
// of the expert's kept rows at once (kRows >= capacity registers), consecutive warps on
// consecutive columns (contiguous weight rows). Experts nobody chose cost no weight read and no
// block of their own: the grid zeroes their rows of y at the end. kSwiglu: two weight tables
// (gate, up) and y = silu(x Wg^T) * (x Wu^T) from the f32 sums (the SwiGLU of the experts' first
// two products in one pass over x).
template <typename T, int kRows, int kWidth, bool kSwiglu>
__global__ void grouped_gemm_nt_kernel(const T* x, ExpertWeights weights, ExpertWeights up,
                                       const int32_t* kept, int capacity, int64_t n, int64_t k,
                                       T* y, int experts) {
  __shared__ int counts[kMaxGroupedExperts], chosen[kMaxGroupedExperts], idle[kMaxGroupedExperts];
  __shared__ int chosen_count, idle_count;
  // The kept counts in one parallel read (a serial walk of the offsets would cost every block a
  // chain of dependent memory latencies), then listed from shared memory.
  if (threadIdx.x < experts) counts[threadIdx.x] = kept[threadIdx.x + 1] - kept[threadIdx.x];
  __syncthreads();
  if (threadIdx.x == 0) {
    int c = 0, i = 0;
    for (int e = 0; e < experts; ++e) {
      if (counts[e] > 0) {
        chosen[c++] = e;
      } else {
        idle[i++] = e;
      }
    }
    chosen_count = c;
    idle_count = i;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const int64_t pairs = int64_t(chosen_count) * n;
  for (int64_t pair = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32; pair < pairs;
       pair += warps) {
    const int e = chosen[pair / n];
    const int64_t j = pair % n;
    const int rows = min(counts[e], capacity);
    T* ye = y + int64_t(e) * capacity * n;
    const T* xe = x + int64_t(e) * capacity * k;
    const T* wj = static_cast<const T*>(weights.w[e]) + j * k;
    const T* uj = kSwiglu ? static_cast<const T*>(up.w[e]) + j * k : nullptr;
    float acc[kRows], acc_up[kSwiglu ? kRows : 1];
#pragma unroll
    for (int i = 0; i < kRows; ++i) acc[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < (kSwiglu ? kRows : 1); ++i) acc_up[i] = 0.0f;
      // Unrolled so each lane keeps several weight loads in flight: these products are bound
      // by memory latency x bytes in flight, not by arithmetic (same per-lane order: same sums).
      // The down product's long rows (few output rows): eight loads in flight per lane.
#pragma unroll(!kSwiglu && kRows <= 2 ? 8 : 4)
    for (int64_t p = int64_t(lane) * kWidth; p < k; p += 32 * kWidth) {
      float w[kWidth], u[kWidth];
      load_floats<kWidth>(wj + p, w);
      if constexpr (kSwiglu) load_floats<kWidth>(uj + p, u);
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        if (i < rows) {
          float xv[kWidth];
          load_floats<kWidth>(xe + i * k + p, xv);
#pragma unroll
          for (int c = 0; c < kWidth; ++c) {
            acc[i] += xv[c] * w[c];
            if constexpr (kSwiglu) acc_up[i] += xv[c] * u[c];
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      float sum = warp_sum(acc[i]);
      if constexpr (kSwiglu) {
        const float g = sum, u = warp_sum(acc_up[i]);
        sum = g * (1.0f / (1.0f + expf(-g))) * u;  // swiglu_forward's formula, in f32
      }
      if (lane == 0 && i < capacity) ye[i * n + j] = from_float<T>(i < rows ? sum : 0.0f);
    }
    if (lane == 0) {
      for (int i = kRows; i < capacity; ++i) ye[i * n + j] = from_float<T>(0.0f);
    }
  }
  // The idle experts' blocks of y: zeros, written by the whole grid.
  const int64_t block_elems = int64_t(capacity) * n;
  const int64_t zeros = int64_t(idle_count) * block_elems;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < zeros;
       i += int64_t(gridDim.x) * blockDim.x) {
    y[int64_t(idle[i / block_elems]) * block_elems + i % block_elems] = from_float<T>(0.0f);
  }
}

template <typename T, int kRows, int kWidth, bool kSwiglu>
void launch_grouped(const T* x, const ExpertWeights& w, const ExpertWeights& up,
                    const int32_t* kept, int capacity, int64_t n, int64_t k, T* y, int experts,
                    int sms, cudaStream_t stream) {
  constexpr int kWarps = kThreads / 32;
  // A fixed grid of eight blocks per multiprocessor walks the chosen experts' columns (one warp
  // per (expert, column) measured slower at batch 8 on the H200: 670 vs 738 tokens/s).
  const int64_t blocks = std::min<int64_t>(int64_t{8} * std::max(sms, 1),
                                           (int64_t(experts) * n + kWarps - 1) / kWarps);
  grouped_gemm_nt_kernel<T, kRows, kWidth, kSwiglu>
      <<<static_cast<unsigned>(std::max<int64_t>(blocks, 1)), kThreads, 0, stream>>>(
          x, w, up, kept, capacity, n, k, y, experts);
  NNKIT_CUDA_CHECK_LAUNCH(grouped_gemm_nt_kernel);
}

template <typename T, int kWidth, bool kSwiglu>
void grouped_by_rows(const T* x, const ExpertWeights& w, const ExpertWeights& up,
                     const int32_t* kept, int capacity, int64_t n, int64_t k, T* y, int experts,
                     int sms, cudaStream_t stream) {
  if (capacity <= 1) {
    launch_grouped<T, 1, kWidth, kSwiglu>(x, w, up, kept, capacity, n, k, y, experts, sms, stream);
  } else if (capacity <= 2) {
    launch_grouped<T, 2, kWidth, kSwiglu>(x, w, up, kept, capacity, n, k, y, experts, sms, stream);
  } else if (capacity <= 4) {
    launch_grouped<T, 4, kWidth, kSwiglu>(x, w, up, kept, capacity, n, k, y, experts, sms, stream);
  } else if (capacity <= 8) {
    launch_grouped<T, 8, kWidth, kSwiglu>(x, w, up, kept, capacity, n, k, y, experts, sms, stream);
  } else {
    launch_grouped<T, 16, kWidth, kSwiglu>(x, w, up, kept, capacity, n, k, y, experts, sms, stream);
  }
}

template <typename T, int kSplit, bool kSwiglu, bool kTwoRowTiles>
void launch_grouped_mma_rows(const T* x, const ExpertWeights& w, const ExpertWeights& up,
                             const int32_t* kept, int capacity, int64_t n, int64_t k, T* y,
                             int experts, int sms, cudaStream_t stream) {
  constexpr int64_t kColumnsPerBlock = kMmaWarps / kSplit * 8;
  auto kernel = grouped_mma_kernel<T, kSplit, kSwiglu, kTwoRowTiles>;
  static const int per_sm = resident_blocks_per_sm(kernel);
  const int groups = static_cast<int>((n + kColumnsPerBlock - 1) / kColumnsPerBlock);
  // As many blocks as stay resident, never more than the items of all experts.
  const int64_t blocks =
      std::min<int64_t>(int64_t(per_sm) * std::max(sms, 1), int64_t(groups) * experts);
  launch_dependent(kernel, static_cast<unsigned>(std::max<int64_t>(blocks, 1)), kMmaThreads, 0,
                   stream, x, static_cast<const int32_t*>(nullptr), w, up, kept, capacity, n, k, y,
                   experts, groups, CombineArgs{});
  NNKIT_CUDA_CHECK_LAUNCH(grouped_mma_kernel);
}

template <typename T, int kSplit, bool kSwiglu>
void launch_grouped_mma(const T* x, const ExpertWeights& w, const ExpertWeights& up,
                        const int32_t* kept, int capacity, int64_t n, int64_t k, T* y, int experts,
                        int sms, cudaStream_t stream) {
  if (capacity > 8) {
    launch_grouped_mma_rows<T, kSplit, kSwiglu, true>(x, w, up, kept, capacity, n, k, y, experts,
                                                      sms, stream);
  } else {
    launch_grouped_mma_rows<T, kSplit, kSwiglu, false>(x, w, up, kept, capacity, n, k, y, experts,
                                                       sms, stream);
  }
}

// Long rows (the down product's k = ffn_dim) split across all eight warps of a block, short ones
// (gate/up's k = hidden) across two or none: enough blocks to fill the GPU, and each warp still
// has several k steps of loads in flight.
template <typename T, bool kSwiglu>
void grouped_by_split(const T* x, const ExpertWeights& w, const ExpertWeights& up,
                      const int32_t* kept, int capacity, int64_t n, int64_t k, T* y, int experts,
                      int sms, cudaStream_t stream) {
  const int64_t steps = k / 32;
  if (steps >= 64) {
    launch_grouped_mma<T, 8, kSwiglu>(x, w, up, kept, capacity, n, k, y, experts, sms, stream);
  } else if (steps >= 16) {
    launch_grouped_mma<T, 2, kSwiglu>(x, w, up, kept, capacity, n, k, y, experts, sms, stream);
  } else {
    launch_grouped_mma<T, 1, kSwiglu>(x, w, up, kept, capacity, n, k, y, experts, sms, stream);
  }
}

// The tensor-core path is the default for 16-bit tensors of fitting shapes;
// NNKIT_GROUPED_MMA=0 runs the CUDA-core kernel instead (to compare the two on one machine).
bool grouped_mma_enabled() {
  static const bool enabled = [] {
    const char* flag = std::getenv("NNKIT_GROUPED_MMA");
    return flag == nullptr || std::string(flag) != "0";
  }();
  return enabled;
}

}  // namespace

void CudaBackend::kv_cache_append(const Tensor& cache, const Tensor& rows, int64_t batch,
                                  int64_t capacity, const Tensor& cache_len_device) {
  OpScope op_scope(profiler_.get(), "kv_cache_append");
  const char* op = "kv_cache_append";
  const backend_common::RowShape c = kChecks.float_rows(op, "cache", cache, kFloatDTypes);
  const backend_common::RowShape r = kChecks.rows(op, "rows", rows, cache.dtype());
  kChecks.tensor(op, "cache_len", cache_len_device, DType::kI32, {1});
  if (batch < 1 || capacity < 1 || c.rows != batch * capacity || r.cols != c.cols ||
      r.rows % batch != 0) {
    kChecks.fail(op, "cache is " + describe(cache) + " and rows " + describe(rows) +
                         "; expected (B * capacity, W) and (B * T, W) with B = " +
                         std::to_string(batch) + ", capacity = " + std::to_string(capacity));
  }
  if (r.rows == 0) return;
  dispatch_float(cache.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    kv_append_kernel<T><<<grid_for(r.rows * r.cols), kThreads, 0, stream_>>>(
        ptr<T>(cache), ptr<T>(rows), batch, r.rows / batch, r.cols, capacity,
        ptr<int32_t>(cache_len_device), fault_);
    NNKIT_CUDA_CHECK_LAUNCH(kv_append_kernel);
  });
}

namespace {

// The checks of both grouped ops; fills the weight tables and says whether 16-byte packs fit.
struct GroupedArgs {
  ExpertWeights gate{}, up{};
  int64_t n = 0, k = 0;
  bool packed = false;
};

GroupedArgs check_grouped(const char* op, const Tensor& x, const std::vector<Tensor>& weights,
                          const std::vector<Tensor>* up_weights, const Tensor& kept_offsets,
                          int64_t capacity, const Tensor& y) {
  const auto E = static_cast<int64_t>(weights.size());
  if (E < 1 || E > kMaxGroupedExperts || capacity < 1 || capacity > 16 ||
      (up_weights != nullptr && static_cast<int64_t>(up_weights->size()) != E)) {
    kChecks.fail(op, std::to_string(E) + " experts, capacity " + std::to_string(capacity) +
                         "; this backend groups 1 to " + std::to_string(kMaxGroupedExperts) +
                         " experts of 1 to 16 rows (and as many up as gate weights)");
  }
  const backend_common::RowShape xs = kChecks.float_rows(op, "x", x, kFloatDTypes);
  GroupedArgs a;
  a.k = xs.cols;
  a.n = weights[0].rank() == 2 ? weights[0].dim(0) : -1;
  a.packed = x.dtype() != DType::kF32 && a.k % 8 == 0 && aligned16(x.raw());
  for (int64_t e = 0; e < E; ++e) {
    const Tensor& w = weights[static_cast<size_t>(e)];
    kChecks.tensor(op, ("weights[" + std::to_string(e) + "]").c_str(), w, x.dtype(), {a.n, a.k});
    a.gate.w[e] = w.raw();
    a.packed = a.packed && aligned16(w.raw());
    if (up_weights != nullptr) {
      const Tensor& u = (*up_weights)[static_cast<size_t>(e)];
      kChecks.tensor(op, ("up_weights[" + std::to_string(e) + "]").c_str(), u, x.dtype(),
                     {a.n, a.k});
      a.up.w[e] = u.raw();
      a.packed = a.packed && aligned16(u.raw());
    }
  }
  kChecks.tensor(op, "x", x, x.dtype(), {E * capacity, a.k});
  kChecks.tensor(op, "y", y, x.dtype(), {E * capacity, a.n});
  kChecks.tensor(op, "kept_offsets", kept_offsets, DType::kI32, {E + 1});
  return a;
}

template <bool kSwiglu>
void run_grouped(const GroupedArgs& a, const Tensor& x, const Tensor& kept_offsets,
                 int64_t capacity, const Tensor& y, int experts, int sms, cudaStream_t stream) {
  if (a.n == 0) return;
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, float>) {
      if (a.packed && aligned16(y.raw()) && a.k % 32 == 0 && a.n % 8 == 0 &&
          grouped_mma_enabled()) {
        grouped_by_split<T, kSwiglu>(ptr<T>(x), a.gate, a.up, ptr<int32_t>(kept_offsets),
                                     static_cast<int>(capacity), a.n, a.k, ptr<T>(y), experts, sms,
                                     stream);
        return;
      }
    }
    with_pack_width<T>(a.packed, [&](auto width) {
      grouped_by_rows<T, decltype(width)::value, kSwiglu>(
          ptr<T>(x), a.gate, a.up, ptr<int32_t>(kept_offsets), static_cast<int>(capacity), a.n, a.k,
          ptr<T>(y), experts, sms, stream);
    });
  });
}

}  // namespace

void CudaBackend::moe_grouped_gemm_nt(const Tensor& x, const std::vector<Tensor>& weights,
                                      const Tensor& kept_offsets, int64_t capacity,
                                      const Tensor& y) {
  OpScope op_scope(profiler_.get(), "moe_grouped_gemm_nt");
  const GroupedArgs a =
      check_grouped("moe_grouped_gemm_nt", x, weights, nullptr, kept_offsets, capacity, y);
  run_grouped<false>(a, x, kept_offsets, capacity, y, static_cast<int>(weights.size()), limits_.sms,
                     stream_);
}

void CudaBackend::moe_grouped_swiglu_nt(const Tensor& x, const std::vector<Tensor>& gate_weights,
                                        const std::vector<Tensor>& up_weights,
                                        const Tensor& kept_offsets, int64_t capacity,
                                        const Tensor& y) {
  OpScope op_scope(profiler_.get(), "moe_grouped_swiglu_nt");
  const GroupedArgs a = check_grouped("moe_grouped_swiglu_nt", x, gate_weights, &up_weights,
                                      kept_offsets, capacity, y);
  run_grouped<true>(a, x, kept_offsets, capacity, y, static_cast<int>(gate_weights.size()),
                    limits_.sms, stream_);
}

}  // namespace nnkit::cuda
