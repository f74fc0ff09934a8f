// Purpose: backend/cuda moe_swiglu_experts_padded: a decode step's whole SwiGLU expert block
// (gather, gate/up products and SwiGLU, down product, combine) in three launches for 16-bit
// weights, where the composition of ops takes four: the gate/up product with its SwiGLU
// (grouped_experts.cuh's tensor-core kernel) reads each expert's kept rows of x straight from the
// step's tokens through the padded layout's token index, so there is no gathered copy of x; the
// down product and the combine are moe_grouped_gemm_nt and moe_combine_rows. The result is the
// composition's, bit for bit (the same kernels, the same per-lane k order). Owned by
// backend/cuda.
//
// Measured and not kept (bench/RESULTS.md, session 12): a one-pass kernel (each block an equal
// share of 32-column ffn units, SwiGLU multiplied straight into an f32 down-product partial)
// read the down matrix in 64-128-byte pieces and was slower (449 vs 492 tokens/s at batch 1);
// a down product cut into two k parts for an even grid, its L2 prefetch under PDL and f32
// partials ran slower than moe_grouped_gemm_nt (17.6 vs 14.2 us a layer at batch 1).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "../common/composed_ops.h"
#include "bulk_copy.cuh"
#include "cuda_check.h"
#include "dependent_launch.cuh"
#include "grouped_experts.cuh"
#include "kernel_utils.cuh"

namespace nnkit::cuda {

namespace {

using backend_common::kFloatDTypes;

// k steps of loads in flight per warp in the gate/up product (two weight rows each): 6 measured
// 24.2 us a layer at batch 1 against 24.7 with the ops' 4.
constexpr int kGateStages = 6;

// The largest step (tokens) that takes the gathered SwiGLU. Measured on the H200
// (bench/RESULTS.md, session 12, the 6.9B model, same lease, same tokens): +3.5% tokens/s at
// batch 1 (494.6 vs 477.9) but -7.6% at batch 8 (1,778 vs 1,924), for a cause not found
// (Nsight's per-kernel times put the two paths level at batch 8); batches 2 to 7 were not
// measured and keep the composition. NNKIT_GATHERED_MAX_TOKENS=N moves the limit (to measure
// other batch sizes on one machine); NNKIT_FUSED_EXPERTS=0 always runs the composition.
int64_t gathered_max_tokens() {
  static const int64_t limit = [] {
    if (const char* flag = std::getenv("NNKIT_FUSED_EXPERTS"); flag && std::strcmp(flag, "0") == 0)
      return int64_t(0);
    const char* max_tokens = std::getenv("NNKIT_GATHERED_MAX_TOKENS");
    if (max_tokens == nullptr || *max_tokens == '\0') return int64_t(1);
    char* end = nullptr;
    const long long value = std::strtoll(max_tokens, &end, 10);
    return *end == '\0' && value >= 0 ? int64_t(value) : int64_t(1);
  }();
  return limit;
}

// ---- the expert products of single-token steps, fed by bulk copies --------------------------
// grouped_mma_kernel holds its loads in registers, which caps a multiprocessor at ~96 KB in
// flight; streaming weights at the H200's bandwidth needs ~128 KB (bench/grouped_bw.cu). Here a
// producer thread copies each item's weight rows (contiguous: one cp.async.bulk per matrix,
// no registers per byte in flight) into one of two shared-memory stages while eight consumer
// warps work on the other, running grouped_mma_kernel<T, kSplit, kSwiglu, ...>'s tiles, k order
// and epilogue (warp w: columns 8 (w / kSplit).., the k steps w % kSplit + kSplit i, then
// split 0 + 1 + ...): the result is that kernel's, bit for bit. kSwiglu: the gate/up product
// over hidden (split 2, x gathered through the token index); otherwise the down product over
// ffn (split 8, x the padded activations). Only the kept rows of y are written. (Copies of one
// 768-byte row segment each, in a ring of three or eight stages, measured slower than the
// register-fed kernel: RESULTS, session 13.)
constexpr int kBulkConsumerWarps = 8;
constexpr int kBulkThreads = (kBulkConsumerWarps + 1) * 32;

template <bool kSwiglu>
struct BulkShape {
  static constexpr int kSplit = kSwiglu ? 2 : 8;
  static constexpr int kColumns = kBulkConsumerWarps / kSplit * 8;  // columns of an item
  static constexpr int kMatrices = kSwiglu ? 2 : 1;
  static constexpr int kStages = 2;  // whole items: one copy per matrix (contiguous rows)
  static constexpr int kBatch = kSwiglu ? 6 : 4;  // k steps of a warp loaded before their mmas
  // An item's rows of every matrix, in bytes (k of T each).
  __host__ __device__ static size_t stage_bytes(int64_t k) { return size_t(kMatrices) * kColumns * size_t(k) * 2; }
};
constexpr size_t kBulkMaxShared = 200 << 10;  // dynamic shared memory for the stages, at most

template <typename T, bool kSwiglu, bool kTwoRowTiles>
__global__ void __launch_bounds__(kBulkThreads, 1)
    bulk_expert_product_kernel(const T* x, const int32_t* row_token, ExpertWeights weights,
                               ExpertWeights up, const int32_t* kept, int capacity, int64_t n,
                               int64_t k, T* y, int experts, int groups_per_expert) {
  using S = BulkShape<kSwiglu>;
  extern __shared__ __align__(128) unsigned char stage_bytes[];
  __shared__ uint64_t full[S::kStages], empty[S::kStages];
  __shared__ int counts[kMaxGroupedExperts], order[kMaxGroupedExperts], chosen_count;
  __shared__ float partial[kBulkConsumerWarps][kSwiglu ? 8 : 4][32];
  __shared__ int32_t token_s[kSwiglu ? kMaxGroupedExperts * kMaxGroupedRows : 1];
  if (threadIdx.x == 0) {
    for (int i = 0; i < S::kStages; ++i) {
      barrier_init(&full[i], 1);
      barrier_init(&empty[i], kBulkConsumerWarps);
    }
    barrier_init_fence();
  }
  wait_for_preceding_grid();
  allow_dependent_launch();
  if constexpr (kSwiglu) {
    for (int i = threadIdx.x; i < experts * capacity; i += kBulkThreads) token_s[i] = row_token[i];
  }
  const int chosen = order_experts_chosen_first(kept, experts, counts, order, &chosen_count);
  const int64_t items = int64_t(chosen) * groups_per_expert;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const size_t stage_size = S::stage_bytes(k);
  auto stage_matrix = [&](int stage, int matrix) {
    return reinterpret_cast<T*>(stage_bytes + stage * stage_size) + matrix * S::kColumns * k;
  };

  if (warp == kBulkConsumerWarps) {  // the producer: one copy per matrix and item
    if (lane != 0) return;
    int use = 0;
    for (int64_t item = blockIdx.x; item < items; item += gridDim.x, ++use) {
      const int e = order[item / groups_per_expert];
      const int64_t col_base = (item % groups_per_expert) * S::kColumns;
      const int rows = static_cast<int>(min(int64_t(S::kColumns), n - col_base));
      const unsigned bytes = static_cast<unsigned>(rows * k * 2);
      const int stage = use % S::kStages;
      if (use >= S::kStages) barrier_wait(&empty[stage], ((use / S::kStages) & 1) ^ 1);
      barrier_arrive_expect_bytes(&full[stage], unsigned(S::kMatrices) * bytes);
      bulk_copy_to_shared(stage_matrix(stage, 0),
                          static_cast<const T*>(weights.w[e]) + col_base * k, bytes, &full[stage]);
      if constexpr (kSwiglu) {
        bulk_copy_to_shared(stage_matrix(stage, 1), static_cast<const T*>(up.w[e]) + col_base * k,
                            bytes, &full[stage]);
      }
    }
    return;
  }

  // Consumers: grouped_mma_kernel<T, kSplit, kSwiglu, kTwoRowTiles>'s roles.
  const int split = warp % S::kSplit, tile = warp / S::kSplit;
  const int quad_row = lane >> 2, quad_col = lane & 3;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  const int steps = static_cast<int>(k / 32);
  int use = 0;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x, ++use) {
    const int e = order[item / groups_per_expert];
    const int rows = min(counts[e], capacity);
    const int64_t col0 = (item % groups_per_expert) * S::kColumns + tile * 8;
    const bool active = col0 < n;
    const bool has_lo = quad_row < rows, has_hi = kTwoRowTiles && quad_row + 8 < rows;
    int64_t row_lo = int64_t(e) * capacity + quad_row, row_hi = row_lo + 8;
    if constexpr (kSwiglu) {
      row_lo = has_lo ? token_s[row_lo] : 0;
      row_hi = has_hi ? token_s[row_hi] : 0;
    }
    const T* x_lo = x + row_lo * k + 8 * quad_col;
    const T* x_hi = x + row_hi * k + 8 * quad_col;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, acc_up[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int stage = use % S::kStages;
    barrier_wait(&full[stage], (use / S::kStages) & 1);
    if (active) {
      const int64_t row_offset = (tile * 8 + quad_row) * k + 8 * quad_col;
      const T* w_row = stage_matrix(stage, 0) + row_offset;
      const T* u_row = stage_matrix(stage, kSwiglu ? 1 : 0) + row_offset;
      for (int t0 = split; t0 < steps; t0 += S::kSplit * S::kBatch) {
        uint4 w[S::kBatch], u[S::kBatch], lo[S::kBatch], hi[S::kBatch];
#pragma unroll
        for (int i = 0; i < S::kBatch; ++i) {
          const int t = t0 + S::kSplit * i;
          const bool live = t < steps;
          w[i] = live ? *reinterpret_cast<const uint4*>(w_row + t * 32) : zero;
          u[i] = kSwiglu && live ? *reinterpret_cast<const uint4*>(u_row + t * 32) : zero;
          lo[i] = live && has_lo ? __ldg(reinterpret_cast<const uint4*>(x_lo + int64_t(t) * 32))
                                 : zero;
          hi[i] = live && has_hi ? __ldg(reinterpret_cast<const uint4*>(x_hi + int64_t(t) * 32))
                                 : zero;
        }
#pragma unroll
        for (int i = 0; i < S::kBatch; ++i) {
          // grouped_mma_kernel's steps past k add zeros: the same sums.
          const uint32_t a0[4] = {lo[i].x, hi[i].x, lo[i].y, hi[i].y};
          const uint32_t a1[4] = {lo[i].z, hi[i].z, lo[i].w, hi[i].w};
          mma_16x8x16<T>(acc, a0, w[i].x, w[i].y);
          mma_16x8x16<T>(acc, a1, w[i].z, w[i].w);
          if constexpr (kSwiglu) {
            mma_16x8x16<T>(acc_up, a0, u[i].x, u[i].y);
            mma_16x8x16<T>(acc_up, a1, u[i].z, u[i].w);
          }
        }
      }
    }
    __syncwarp();
    if (lane == 0) barrier_arrive(&empty[stage]);
    // split 0's sum, then 1, 2, ...: grouped_mma_kernel's fixed order.
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      partial[warp][j][lane] = acc[j];
      if constexpr (kSwiglu) partial[warp][4 + j][lane] = acc_up[j];
    }
    named_barrier_sync(1, kBulkConsumerWarps * 32);
    if (split == 0) {
      for (int s = 1; s < S::kSplit; ++s) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          acc[j] += partial[warp + s][j][lane];
          if constexpr (kSwiglu) acc_up[j] += partial[warp + s][4 + j][lane];
        }
      }
    }
    named_barrier_sync(1, kBulkConsumerWarps * 32);
    if (active && split == 0) {
      const int64_t col = col0 + 2 * quad_col;
      const int r_lo = quad_row, r_hi = quad_row + 8;
      float v[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        v[j] = kSwiglu ? acc[j] * (1.0f / (1.0f + expf(-acc[j]))) * acc_up[j] : acc[j];
      }
      T* ye = y + int64_t(e) * capacity * n;
      if (r_lo < capacity && has_lo) {
        *reinterpret_cast<uint32_t*>(ye + r_lo * n + col) = pack_pair<T>(v[0], v[1]);
      }
      if (r_hi < capacity && has_hi) {
        *reinterpret_cast<uint32_t*>(ye + r_hi * n + col) = pack_pair<T>(v[2], v[3]);
      }
    }
  }
}

// Opt-in (NNKIT_GATHERED_BULK=1) until it measures faster than the register-fed kernel: the
// segment-copy form lost 19% at batch 1 (RESULTS, session 13).
bool gathered_bulk_enabled() {
  static const bool enabled = [] {
    const char* flag = std::getenv("NNKIT_GATHERED_BULK");
    return flag != nullptr && std::strcmp(flag, "1") == 0;
  }();
  return enabled;
}

// Whether this device runs a bulk-copy kernel: sm_90+ and the stages' shared memory granted.
template <typename T, bool kSwiglu, bool kTwoRowTiles>
bool bulk_kernel_ready() {
  static const bool ready = [] {
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        major < 9) {
      (void)cudaGetLastError();
      return false;
    }
    if (cudaFuncSetAttribute(bulk_expert_product_kernel<T, kSwiglu, kTwoRowTiles>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(kBulkMaxShared)) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    return true;
  }();
  return ready;
}

// One block a multiprocessor over the chosen experts' items; false if this device cannot.
template <typename T, bool kSwiglu, bool kTwoRowTiles>
bool launch_bulk_product(const T* x, const int32_t* token, const ExpertWeights& w,
                         const ExpertWeights& u, const int32_t* kept, int experts, int capacity,
                         int64_t n, int64_t k, int sms, T* y, cudaStream_t stream) {
  using S = BulkShape<kSwiglu>;
  const size_t shared = S::kStages * S::stage_bytes(k);
  if (k % 8 != 0 || k / 32 < S::kSplit || shared > kBulkMaxShared || !gathered_bulk_enabled() ||
      !bulk_kernel_ready<T, kSwiglu, kTwoRowTiles>()) {
    return false;
  }
  const int groups = static_cast<int>((n + S::kColumns - 1) / S::kColumns);
  const int64_t blocks =
      std::max<int64_t>(1, std::min<int64_t>(std::max(sms, 1), int64_t(groups) * experts));
  launch_dependent(bulk_expert_product_kernel<T, kSwiglu, kTwoRowTiles>,
                   static_cast<unsigned>(blocks), kBulkThreads, shared, stream, x, token,
                   w, u, kept, capacity, n, k, y, experts, groups);
  NNKIT_CUDA_CHECK_LAUNCH(bulk_expert_product_kernel);
  return true;
}

template <typename T, bool kTwoRowTiles>
void launch_gathered_swiglu(const T* x, const int32_t* token, const ExpertWeights& gw,
                            const ExpertWeights& uw, const int32_t* kept, int experts, int capacity,
                            int64_t hidden, int64_t ffn, int sms, T* act, cudaStream_t stream) {
  // k = hidden split over two warps (none when short), 8-column tiles of ffn: as
  // moe_grouped_swiglu_nt runs it.
  const bool short_rows = hidden / 32 < 16;
  // Long rows: the bulk-copy kernel (same tiles and k order), where the device runs it.
  if (!short_rows && launch_bulk_product<T, true, kTwoRowTiles>(x, token, gw, uw, kept, experts,
                                                                 capacity, ffn, hidden, sms, act,
                                                                 stream)) {
    return;
  }
  auto kernel = short_rows ? grouped_mma_kernel<T, 1, true, kTwoRowTiles, kGateStages>
                           : grouped_mma_kernel<T, 2, true, kTwoRowTiles, kGateStages>;
  static const int per_sm_short =
      resident_blocks_per_sm(grouped_mma_kernel<T, 1, true, kTwoRowTiles, kGateStages>);
  static const int per_sm_long =
      resident_blocks_per_sm(grouped_mma_kernel<T, 2, true, kTwoRowTiles, kGateStages>);
  const int64_t columns = short_rows ? kMmaWarps * 8 : kMmaWarps / 2 * 8;
  const int groups = static_cast<int>((ffn + columns - 1) / columns);
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>(int64_t(short_rows ? per_sm_short : per_sm_long) * std::max(sms, 1),
                           int64_t(groups) * experts));
  launch_dependent(kernel, static_cast<unsigned>(blocks), kMmaThreads, 0, stream, x, token, gw, uw,
                   kept, capacity, ffn, hidden, act, experts, groups);
  NNKIT_CUDA_CHECK_LAUNCH(grouped_mma_kernel);
}

}  // namespace

void CudaBackend::moe_swiglu_experts_padded(const Tensor& x, const Tensor& token,
                                            const Tensor& slot, const Tensor& gate,
                                            const std::vector<Tensor>& gate_w,
                                            const std::vector<Tensor>& up_w,
                                            const std::vector<Tensor>& down_w,
                                            const Tensor& kept_offsets, int64_t capacity,
                                            const Tensor& y) {
  OpScope op_scope(profiler_.get(), "moe_swiglu_experts_padded");
  const backend_common::ExpertsShape s = backend_common::check_swiglu_experts_padded(
      kChecks, kFloatDTypes, x, token, slot, gate, gate_w, up_w, down_w, kept_offsets, capacity, y);
  const int64_t tokens = x.dim(0);
  if (tokens == 0) return;
  // The gathered SwiGLU takes single-token steps of 16-bit tensors of 16-byte-aligned rows, hidden
  // a multiple of 32, ffn of 8, and at most one m16 tile of rows per expert; anything else composes
  // ops.
  bool fits = x.dtype() != DType::kF32 && tokens <= gathered_max_tokens() && s.hidden % 32 == 0 &&
              s.ffn % 8 == 0 && s.ffn > 0 && capacity <= kMaxGroupedRows &&
              s.experts <= kMaxGroupedExperts && aligned16(x.raw());
  ExpertWeights gw{}, uw{};
  for (int64_t e = 0; e < s.experts && fits; ++e) {
    const auto i = static_cast<size_t>(e);
    gw.w[e] = gate_w[i].raw();
    uw.w[e] = up_w[i].raw();
    fits = aligned16(gw.w[e]) && aligned16(uw.w[e]);
  }
  if (!fits) {
    backend_common::moe_swiglu_experts_padded_by_ops(*this, x, token, slot, gate, gate_w, up_w,
                                                     down_w, kept_offsets, capacity, y);
    return;
  }
  const int64_t padded = s.experts * capacity;
  Tensor activated = empty({padded, s.ffn}, x.dtype());  // kept rows only
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, float>) {
      auto launch = [&](auto two_rows) {
        launch_gathered_swiglu<T, decltype(two_rows)::value>(
            ptr<T>(x), ptr<int32_t>(token), gw, uw, ptr<int32_t>(kept_offsets),
            static_cast<int>(s.experts), static_cast<int>(capacity), s.hidden, s.ffn, limits_.sms,
            ptr<T>(activated), stream_);
      };
      capacity > 8 ? launch(std::true_type{}) : launch(std::false_type{});
    }
  });
  // The down product reads only the kept rows of `activated`; the combine only rows with a token.
  // Bulk-copy fed where the device runs it (moe_grouped_gemm_nt's tiles and k order for long rows:
  // bit for bit), else moe_grouped_gemm_nt.
  Tensor y_routed = empty({padded, s.hidden}, x.dtype());
  bool down_done = false;
  ExpertWeights dw{};
  bool down_fits = s.ffn / 32 >= 64;  // moe_grouped_gemm_nt splits such k over eight warps
  for (int64_t e = 0; e < s.experts && down_fits; ++e) {
    dw.w[e] = down_w[static_cast<size_t>(e)].raw();
    down_fits = aligned16(dw.w[e]);
  }
  if (down_fits) {
    dispatch_float(x.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      if constexpr (!std::is_same_v<T, float>) {
        auto launch = [&](auto two_rows) {
          return launch_bulk_product<T, false, decltype(two_rows)::value>(
              ptr<T>(activated), nullptr, dw, dw, ptr<int32_t>(kept_offsets),
              static_cast<int>(s.experts), static_cast<int>(capacity), s.hidden, s.ffn,
              limits_.sms, ptr<T>(y_routed), stream_);
        };
        down_done = capacity > 8 ? launch(std::true_type{}) : launch(std::false_type{});
      }
    });
  }
  if (!down_done) moe_grouped_gemm_nt(activated, down_w, kept_offsets, capacity, y_routed);
  moe_combine_rows(y_routed, token, slot, gate, y);
}

}  // namespace nnkit::cuda
