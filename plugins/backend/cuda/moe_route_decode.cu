// Purpose: backend/cuda moe_route_padded: the router of a decode step in one launch. At decoding
// sizes (a few tokens, 16-64 experts) the router's product, top-k, gate softmax and padded sort
// are each a few microseconds of launch and latency for almost no work; one block does all of
// them from shared memory. Larger inputs run the same ops one by one (gemm, topk_rows,
// softmax_rows, moe_sort_by_expert_padded). Owned by backend/cuda. Fixed orders throughout:
// results repeat bit for bit, and the choices, gates and layout equal the ops one by one up to
// the rounding of the logits' summation order. add_rmsnorm_moe_route_padded folds the norm in
// front into the same block: a few warps normalise the step's rows (rmsnorm_row.cuh: add_rmsnorm's
// bits) while the others stage the router weight, so the norm costs no launch of its own.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "../common/composed_ops.h"
#include "cuda_check.h"
#include "dependent_launch.cuh"
#include "kernel_utils.cuh"
#include "rmsnorm_row.cuh"

namespace nnkit::cuda {

namespace {

using backend_common::kFloatDTypes;

constexpr int kRouteThreads = 256;  // 8 warps
constexpr int kRouteWarps = kRouteThreads / 32;
constexpr int kRouteMaxExperts = 64;       // two per lane in the top-k warp
constexpr int kRouteMaxSlots = 256;        // N * k
constexpr int kRouteMaxLogits = 1024;      // N * E
constexpr int kRouteMaxShared = 96 << 10;  // x and the weight staged in shared memory

// The norm in front of the router (add_rmsnorm_moe_route_padded); residual null: none, x is
// routed as it is.
template <typename T, typename W>
struct RouteNormArgs {
  const T* residual = nullptr;
  const W* weight = nullptr;
  float eps = 0.0f;
  T* sum = nullptr;     // x + residual
  T* normed = nullptr;  // what is routed (and what the experts read)
};

// Dynamic shared memory: x (N, C) | weight (E, C), in T (x normalised first with a norm).
template <typename T, typename W>
__global__ void __launch_bounds__(kRouteThreads)
    moe_route_decode_kernel(const T* x, const T* weight, int n_tokens, int cols, int experts,
                            int top_k, bool renormalize, int capacity, int32_t* expert_index,
                            float* gate, int32_t* token, int32_t* slot, int32_t* offsets,
                            float* load, RouteNormArgs<T, W> norm) {
  extern __shared__ uint4 staged[];
  __shared__ float logits[kRouteMaxLogits];
  __shared__ int choice[kRouteMaxSlots];
  __shared__ int counts[kRouteMaxExperts];
  __shared__ float kept_logits[kRouteMaxSlots];  // (N, k): the kept logits in rank order
  // The router weight is no kernel's output: into L2 while the predecessor finishes.
  const int64_t weight_bytes = int64_t(experts) * cols * sizeof(T);
  for (int64_t offset = int64_t(threadIdx.x) * 128; offset < weight_bytes;
       offset += int64_t(kRouteThreads) * 128) {
    prefetch_to_l2(reinterpret_cast<const char*>(weight) + offset);
  }
  const bool fold_norm = norm.residual != nullptr;
  if (fold_norm) {
    for (int64_t offset = int64_t(threadIdx.x) * 128; offset < int64_t(cols) * int64_t(sizeof(W));
         offset += int64_t(kRouteThreads) * 128) {
      prefetch_to_l2(reinterpret_cast<const char*>(norm.weight) + offset);
    }
  }
  wait_for_preceding_grid();
  allow_dependent_launch();
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int slots = n_tokens * top_k;
  // 1. Stage x and the weight (16-byte packs, all loads in flight at once); every padded row
  // starts as padding (placement below overwrites the kept ones after the barriers). With a
  // norm, the first norm_warps warps normalise x's rows into the staged x (and the outputs)
  // while the other warps stage the weight.
  const int norm_warps = fold_norm ? min(n_tokens, kRouteWarps / 2) : 0;
  const int64_t x_packs_total = int64_t(n_tokens) * cols / 8;
  const int64_t x_count = fold_norm ? 0 : x_packs_total;  // x packs this loop stages
  const int64_t packs = x_count + int64_t(experts) * cols / 8;
  uint4* destination = staged + (x_packs_total - x_count);
  const uint4* x_packs = reinterpret_cast<const uint4*>(x);
  const uint4* w_packs = reinterpret_cast<const uint4*>(weight);
  constexpr int kInFlight = 8;  // loads issued before any is stored: one round trip, not eight
  if (warp >= norm_warps) {
    const int stage_threads = kRouteThreads - norm_warps * 32;
    for (int64_t base = threadIdx.x - norm_warps * 32; base < packs;
         base += int64_t(stage_threads) * kInFlight) {
      uint4 v[kInFlight];
#pragma unroll
      for (int r = 0; r < kInFlight; ++r) {
        const int64_t i = base + int64_t(r) * stage_threads;
        if (i < packs) v[r] = i < x_count ? x_packs[i] : w_packs[i - x_count];
      }
#pragma unroll
      for (int r = 0; r < kInFlight; ++r) {
        const int64_t i = base + int64_t(r) * stage_threads;
        if (i < packs) destination[i] = v[r];
      }
    }
  } else {
    T* staged_x = reinterpret_cast<T*>(staged);
    for (int r = warp; r < n_tokens; r += norm_warps) {
      const int64_t row = int64_t(r) * cols;
      add_rmsnorm_row<T, W, 8, true>(x + row, norm.residual + row, norm.weight, norm.eps, cols,
                                     lane, norm.sum + row, norm.normed + row, staged_x + row);
    }
  }
  for (int64_t r = threadIdx.x; r < int64_t(experts) * capacity; r += kRouteThreads) {
    token[r] = -1;
    slot[r] = -1;
  }
  __syncthreads();
  // 2. logits[n, e] = x[n] . weight[e] in f32: a warp per (token, expert) pair.
  const T* xs = reinterpret_cast<const T*>(staged);
  const T* ws = xs + int64_t(n_tokens) * cols;
  // Four pairs per warp at a time: their shared-memory reads and shuffles interleave instead of
  // forming one dependent chain per pair (each sum keeps its own order).
  // A warp's pairs are kRouteWarps apart, so a few pairs (one token) still spread over every
  // warp.
  constexpr int kPairsAtOnce = 4;
  const int pairs = n_tokens * experts;
  for (int first = warp; first < pairs; first += kRouteWarps * kPairsAtOnce) {
    float acc[kPairsAtOnce];
#pragma unroll
    for (int p = 0; p < kPairsAtOnce; ++p) acc[p] = 0.0f;
    for (int c = lane * 8; c < cols; c += 32 * 8) {
#pragma unroll
      for (int p = 0; p < kPairsAtOnce; ++p) {
        const int pair = first + p * kRouteWarps;
        if (pair < pairs) {
          float xv[8], wv[8];
          load_floats<8>(xs + int64_t(pair / experts) * cols + c, xv);
          load_floats<8>(ws + int64_t(pair % experts) * cols + c, wv);
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[p] += xv[i] * wv[i];
        }
      }
    }
#pragma unroll
    for (int p = 0; p < kPairsAtOnce; ++p) {
      const float sum = warp_sum(acc[p]);
      if (lane == 0 && first + p * kRouteWarps < pairs) logits[first + p * kRouteWarps] = sum;
    }
  }
  __syncthreads();
  // 3. Top-k and gates: a warp per token, two experts per lane. Each expert's rank (how many
  // experts beat it: a larger logit, or an equal one at a lower index; NaN ranks as -inf) comes
  // from one pass over the row, so the k choices land in rank order at once instead of k rounds
  // of a warp-wide argmax.
  for (int n = warp; n < n_tokens; n += kRouteWarps) {
    const float* row = logits + n * experts;
    const int e0 = lane, e1 = lane + 32;
    float v0 = e0 < experts && !isnan(row[e0]) ? row[e0] : -INFINITY;
    float v1 = e1 < experts && !isnan(row[e1]) ? row[e1] : -INFINITY;
    float max_logit = 0.0f, denominator = 1.0f;
    if (!renormalize) {  // the gates are probabilities of the full softmax
      max_logit = warp_max(fmaxf(v0, v1));
      denominator = warp_sum((e0 < experts ? expf(v0 - max_logit) : 0.0f) +
                             (e1 < experts ? expf(v1 - max_logit) : 0.0f));
    }
    int rank0 = 0, rank1 = 0;
    for (int e = 0; e < experts; ++e) {
      const float v = isnan(row[e]) ? -INFINITY : row[e];
      rank0 += v > v0 || (v == v0 && e < e0);
      rank1 += v > v1 || (v == v1 && e < e1);
    }
    float* kept_logit = kept_logits + n * top_k;
    if (e0 < experts && rank0 < top_k) {
      choice[n * top_k + rank0] = e0;
      kept_logit[rank0] = v0;
    }
    if (e1 < experts && rank1 < top_k) {
      choice[n * top_k + rank1] = e1;
      kept_logit[rank1] = v1;
    }
    __syncwarp();
    for (int j = lane; j < top_k; j += 32) {
      const float top_logit = kept_logit[0];
      const float best = kept_logit[j];
      float value;
      if (renormalize) {  // softmax over the kept logits, summed in rank order
        float kept_sum = 0.0f;
        for (int j = 0; j < top_k; ++j) kept_sum += expf(kept_logit[j] - top_logit);
        value = expf(best - top_logit) / kept_sum;
      } else {
        value = expf(best - max_logit) / denominator;
      }
      expert_index[n * top_k + j] = choice[n * top_k + j];
      gate[n * top_k + j] = value;
    }
  }
  __syncthreads();
  // 4. The padded sort: counts, offsets (a warp's scan) and load per expert, then each slot's
  // rank among the earlier slots of its expert (slot order) places it or drops it.
  if (threadIdx.x < experts) {
    int chosen = 0;
    for (int s = 0; s < slots; ++s) chosen += choice[s] == int(threadIdx.x);
    counts[threadIdx.x] = chosen;
    load[threadIdx.x] = slots > 0 ? float(chosen) / float(slots) : 0.0f;
  }
  __syncthreads();
  if (warp == 0) {
    const int c0 = lane < experts ? min(counts[lane], capacity) : 0;
    const int c1 = lane + 32 < experts ? min(counts[lane + 32], capacity) : 0;
    int scan0 = c0, scan1 = c1;  // inclusive scans of each half
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int up0 = __shfl_up_sync(0xffffffffu, scan0, offset);
      const int up1 = __shfl_up_sync(0xffffffffu, scan1, offset);
      if (lane >= offset) {
        scan0 += up0;
        scan1 += up1;
      }
    }
    const int first_half = __shfl_sync(0xffffffffu, scan0, 31);
    if (lane < experts) offsets[lane] = scan0 - c0;
    if (lane + 32 < experts) offsets[lane + 32] = first_half + scan1 - c1;
    if (lane == 31) offsets[experts] = first_half + scan1;
  }
  for (int s = threadIdx.x; s < slots; s += kRouteThreads) {
    const int e = choice[s];
    int rank = 0;
    for (int earlier = 0; earlier < s; ++earlier) rank += choice[earlier] == e;
    if (rank < capacity) {
      token[e * capacity + rank] = s / top_k;
      slot[e * capacity + rank] = s;
    } else {
      expert_index[s] = -1;
      gate[s] = 0.0f;
    }
  }
}

bool allow_route_shared_memory(const void* kernel) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              kRouteMaxShared) == cudaSuccess;
}

// NNKIT_FUSED_NORM_ROUTE=0 runs add_rmsnorm_moe_route_padded as add_rmsnorm and
// moe_route_padded (to compare on one machine).
bool fused_norm_route_enabled() {
  static const bool enabled = [] {
    const char* flag = std::getenv("NNKIT_FUSED_NORM_ROUTE");
    return flag == nullptr || std::string(flag) != "0";
  }();
  return enabled;
}

}  // namespace

void CudaBackend::moe_route_padded(const Tensor& x, const Tensor& weight, int64_t top_k,
                                   bool renormalize, int64_t capacity, const Tensor& expert_index,
                                   const Tensor& gate, const Tensor& token, const Tensor& slot,
                                   const Tensor& offsets, const Tensor& load) {
  OpScope op_scope(profiler_.get(), "moe_route_padded");
  route_padded("moe_route_padded", x, nullptr, weight, top_k, renormalize, capacity, expert_index,
               gate, token, slot, offsets, load);
}

void CudaBackend::add_rmsnorm_moe_route_padded(
    const Tensor& x, const Tensor& residual, const Tensor& norm_weight, float eps,
    const Tensor& sum, const Tensor& normed, const Tensor& weight, int64_t top_k, bool renormalize,
    int64_t capacity, const Tensor& expert_index, const Tensor& gate, const Tensor& token,
    const Tensor& slot, const Tensor& offsets, const Tensor& load) {
  OpScope op_scope(profiler_.get(), "add_rmsnorm_moe_route_padded");
  const DType dtype = x.dtype();
  const int64_t cols = x.rank() == 2 ? x.dim(1) : -1;
  const auto like_x = [&](const Tensor& t) {
    return t.defined() && t.device() == device() && t.dtype() == dtype && t.shape() == x.shape() &&
           aligned16(t.raw());
  };
  // The folded norm takes 16-bit rows of at most rmsnorm_row.cuh's cached width; anything else
  // (and any malformed call: the two ops say what is wrong) runs the two ops.
  const bool fold = fused_norm_route_enabled() && (dtype == DType::kBF16 || dtype == DType::kF16) &&
                    x.rank() == 2 && x.dim(0) > 0 && cols % 8 == 0 &&
                    cols <= kCachedNormColumns<8> && like_x(x) && like_x(residual) && like_x(sum) &&
                    like_x(normed) && norm_weight.defined() && norm_weight.device() == device() &&
                    norm_weight.shape() == Shape{cols} &&
                    (norm_weight.dtype() == DType::kF32 || norm_weight.dtype() == dtype) &&
                    aligned16(norm_weight.raw());
  if (!fold) {
    backend_common::add_rmsnorm_moe_route_padded_by_ops(
        *this, x, residual, norm_weight, eps, sum, normed, weight, top_k, renormalize, capacity,
        expert_index, gate, token, slot, offsets, load);
    return;
  }
  const RouteNorm norm{residual, norm_weight, eps, sum, normed};
  route_padded("add_rmsnorm_moe_route_padded", x, &norm, weight, top_k, renormalize, capacity,
               expert_index, gate, token, slot, offsets, load);
}

void CudaBackend::route_padded(const char* op, const Tensor& x, const RouteNorm* norm,
                               const Tensor& weight, int64_t top_k, bool renormalize,
                               int64_t capacity, const Tensor& expert_index, const Tensor& gate,
                               const Tensor& token, const Tensor& slot, const Tensor& offsets,
                               const Tensor& load) {
  const backend_common::RowShape xs = kChecks.float_rows(op, "x", x, kFloatDTypes);
  const backend_common::RowShape ws = kChecks.rows(op, "weight", weight, x.dtype());
  if (ws.cols != xs.cols || top_k < 1 || top_k > ws.rows || capacity < 1) {
    kChecks.fail(op, "x is " + describe(x) + ", weight " + describe(weight) + ", top_k " +
                         std::to_string(top_k) + ", capacity " + std::to_string(capacity) +
                         "; expected (N, C), (E, C), 1 <= top_k <= E and capacity >= 1");
  }
  const int64_t n = xs.rows, experts = ws.rows, cols = xs.cols;
  kChecks.tensor(op, "expert_index", expert_index, DType::kI32, {n, top_k});
  kChecks.tensor(op, "gate", gate, DType::kF32, {n, top_k});
  kChecks.tensor(op, "token", token, DType::kI32, {experts * capacity});
  kChecks.tensor(op, "slot", slot, DType::kI32, {experts * capacity});
  kChecks.tensor(op, "offsets", offsets, DType::kI32, {experts + 1});
  kChecks.tensor(op, "load", load, DType::kF32, {experts});
  const size_t shared = size_t(n + experts) * size_t(cols) * dtype_size(x.dtype());
  const bool fits = n > 0 && x.dtype() != DType::kF32 && cols % 8 == 0 && aligned16(x.raw()) &&
                    aligned16(weight.raw()) && experts <= kRouteMaxExperts &&
                    n * top_k <= kRouteMaxSlots && n * experts <= kRouteMaxLogits &&
                    shared <= size_t(kRouteMaxShared) && capacity <= INT32_MAX / experts;
  if (!fits) {
    if (norm != nullptr) {
      backend_common::add_rmsnorm_moe_route_padded_by_ops(
          *this, x, norm->residual, norm->weight, norm->eps, norm->sum, norm->normed, weight, top_k,
          renormalize, capacity, expert_index, gate, token, slot, offsets, load);
    } else if (n == 0) {
      moe_sort_by_expert_padded(expert_index.view({0}), experts, top_k, capacity, gate.view({0}),
                                token, slot, offsets, load);
    } else {
      backend_common::moe_route_padded_by_ops(*this, x, weight, top_k, renormalize, capacity,
                                              expert_index, gate, token, slot, offsets, load);
    }
    return;
  }
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, float>) {
      // The norm weight is f32 or x's dtype (add_rmsnorm's rule); without a norm, T.
      with_norm_weight_type<T>(
          norm != nullptr ? norm->weight.dtype() : x.dtype(), [&](auto weight_tag) {
            using W = typename decltype(weight_tag)::type;
            RouteNormArgs<T, W> args;
            if (norm != nullptr) {
              args.residual = ptr<T>(norm->residual);
              args.weight = ptr<W>(norm->weight);
              args.eps = norm->eps;
              args.sum = ptr<T>(norm->sum);
              args.normed = ptr<T>(norm->normed);
            }
            auto kernel = moe_route_decode_kernel<T, W>;
            static const bool allowed =
                allow_route_shared_memory(reinterpret_cast<const void*>(kernel));
            if (!allowed && shared > size_t(48 << 10)) {
              kChecks.fail(op, "could not allow " + std::to_string(kRouteMaxShared) +
                                   " bytes of shared memory for the one-block router");
            }
            launch_dependent(kernel, 1, kRouteThreads, shared, stream_, ptr<T>(x), ptr<T>(weight),
                             static_cast<int>(n), static_cast<int>(cols), static_cast<int>(experts),
                             static_cast<int>(top_k), renormalize, static_cast<int>(capacity),
                             ptr<int32_t>(expert_index), ptr<float>(gate), ptr<int32_t>(token),
                             ptr<int32_t>(slot), ptr<int32_t>(offsets), ptr<float>(load), args);
            NNKIT_CUDA_CHECK_LAUNCH(moe_route_decode_kernel);
          });
    }
  });
}

void load_route_decode_kernels() {
  load_kernel_now(moe_route_decode_kernel<__nv_bfloat16, __nv_bfloat16>);
  load_kernel_now(moe_route_decode_kernel<__nv_bfloat16, float>);
}

}  // namespace nnkit::cuda
