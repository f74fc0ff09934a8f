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

// ---- the gathered SwiGLU fed by bulk copies (single-token steps, k split over two warps) ----
// grouped_mma_kernel holds its loads in registers, which caps a multiprocessor at ~96 KB in
// flight; streaming the gate and up rows at the H200's bandwidth needs ~128 KB
// (bench/grouped_bw.cu). Here a producer warp copies each item's 32 gate and 32 up rows into a
// ring of shared-memory stages, kBulkChunk k at a time, while eight consumer warps run the same
// tiles, k order and epilogue as grouped_mma_kernel<T, 2, true, ...> (warp w: columns
// 8 (w / 2).., k steps of parity w % 2, split 0 + split 1): the result is that kernel's, bit for
// bit.
constexpr int kBulkConsumerWarps = 8;
constexpr int kBulkThreads = (kBulkConsumerWarps + 1) * 32;
constexpr int kBulkColumns = 32;     // ffn columns per item (4 tiles of 8, 2 warps each)
constexpr int kBulkChunk = 384;      // k per stage: 12 steps of 32 (even: a step keeps its parity)
constexpr int kBulkRowPad = 32;      // elements: rows 832 B apart in bf16 (two rows a wavefront)
constexpr int kBulkRowStride = kBulkChunk + kBulkRowPad;
constexpr int kBulkStages = 3;
constexpr size_t kBulkStageBytes = size_t(2) * kBulkColumns * kBulkRowStride * 2;  // gate + up
constexpr size_t kBulkSharedBytes = kBulkStages * kBulkStageBytes;

template <typename T, bool kTwoRowTiles>
__global__ void __launch_bounds__(kBulkThreads, 1)
    gathered_swiglu_bulk_kernel(const T* x, const int32_t* row_token, ExpertWeights gate_w,
                                ExpertWeights up_w, const int32_t* kept, int capacity, int64_t n,
                                int64_t k, T* y, int experts, int groups_per_expert) {
  extern __shared__ __align__(128) unsigned char stage_bytes[];
  __shared__ uint64_t full[kBulkStages], empty[kBulkStages];
  __shared__ int counts[kMaxGroupedExperts], order[kMaxGroupedExperts], chosen_count;
  __shared__ float partial[kBulkConsumerWarps][8][32];
  __shared__ int32_t token_s[kMaxGroupedExperts * kMaxGroupedRows];
  if (threadIdx.x == 0) {
    for (int i = 0; i < kBulkStages; ++i) {
      barrier_init(&full[i], 1);
      barrier_init(&empty[i], kBulkConsumerWarps);
    }
    barrier_init_fence();
  }
  wait_for_preceding_grid();
  allow_dependent_launch();
  for (int i = threadIdx.x; i < experts * capacity; i += kBulkThreads) token_s[i] = row_token[i];
  const int chosen = order_experts_chosen_first(kept, experts, counts, order, &chosen_count);
  const int64_t items = int64_t(chosen) * groups_per_expert;
  const int chunks = static_cast<int>((k + kBulkChunk - 1) / kBulkChunk);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  auto gate_stage = [&](int stage) {
    return reinterpret_cast<T*>(stage_bytes + stage * kBulkStageBytes);
  };
  auto up_stage = [&](int stage) { return gate_stage(stage) + kBulkColumns * kBulkRowStride; };

  if (warp == kBulkConsumerWarps) {  // the producer
    int use = 0;
    for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
      const int e = order[item / groups_per_expert];
      const int64_t col_base = (item % groups_per_expert) * kBulkColumns;
      const int rows = static_cast<int>(min(int64_t(kBulkColumns), n - col_base));
      const T* g = static_cast<const T*>(gate_w.w[e]) + col_base * k;
      const T* u = static_cast<const T*>(up_w.w[e]) + col_base * k;
      for (int c = 0; c < chunks; ++c, ++use) {
        const int stage = use % kBulkStages;
        if (use >= kBulkStages) barrier_wait(&empty[stage], ((use / kBulkStages) & 1) ^ 1);
        const int64_t k0 = int64_t(c) * kBulkChunk;
        const unsigned row_bytes = static_cast<unsigned>(min(int64_t(kBulkChunk), k - k0) * 2);
        if (lane == 0) barrier_arrive_expect_bytes(&full[stage], 2u * rows * row_bytes);
        __syncwarp();
        for (int r = lane; r < rows; r += 32) {
          bulk_copy_to_shared(gate_stage(stage) + r * kBulkRowStride, g + r * k + k0, row_bytes,
                              &full[stage]);
          bulk_copy_to_shared(up_stage(stage) + r * kBulkRowStride, u + r * k + k0, row_bytes,
                              &full[stage]);
        }
      }
    }
    return;
  }

  // Consumers: grouped_mma_kernel<T, 2, true, kTwoRowTiles>'s roles.
  const int split = warp % 2, tile = warp / 2;
  const int quad_row = lane >> 2, quad_col = lane & 3;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  int use = 0;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int e = order[item / groups_per_expert];
    const int rows = min(counts[e], capacity);
    const int64_t col0 = (item % groups_per_expert) * kBulkColumns + tile * 8;
    const bool active = col0 < n;
    const bool has_lo = quad_row < rows, has_hi = kTwoRowTiles && quad_row + 8 < rows;
    const int64_t row_lo = has_lo ? token_s[e * capacity + quad_row] : 0;
    const int64_t row_hi = has_hi ? token_s[e * capacity + quad_row + 8] : 0;
    const T* x_lo = x + row_lo * k + 8 * quad_col;
    const T* x_hi = x + row_hi * k + 8 * quad_col;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, acc_up[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int c = 0; c < chunks; ++c, ++use) {
      const int stage = use % kBulkStages;
      barrier_wait(&full[stage], (use / kBulkStages) & 1);
      const int64_t k0 = int64_t(c) * kBulkChunk;
      const int steps = static_cast<int>(min(int64_t(kBulkChunk), k - k0) / 32);
      if (active) {
        const T* g_row = gate_stage(stage) + (tile * 8 + quad_row) * kBulkRowStride + 8 * quad_col;
        const T* u_row = up_stage(stage) + (tile * 8 + quad_row) * kBulkRowStride + 8 * quad_col;
        constexpr int kWarpSteps = kBulkChunk / 64;
        uint4 w[kWarpSteps], u[kWarpSteps], lo[kWarpSteps], hi[kWarpSteps];
#pragma unroll
        for (int i = 0; i < kWarpSteps; ++i) {
          const int t = split + 2 * i;
          const bool live = t < steps;
          w[i] = live ? *reinterpret_cast<const uint4*>(g_row + t * 32) : zero;
          u[i] = live ? *reinterpret_cast<const uint4*>(u_row + t * 32) : zero;
          lo[i] = live && has_lo
                      ? __ldg(reinterpret_cast<const uint4*>(x_lo + k0 + int64_t(t) * 32))
                      : zero;
          hi[i] = live && has_hi
                      ? __ldg(reinterpret_cast<const uint4*>(x_hi + k0 + int64_t(t) * 32))
                      : zero;
        }
#pragma unroll
        for (int i = 0; i < kWarpSteps; ++i) {
          if (split + 2 * i >= steps) break;  // grouped_mma_kernel runs no step past k
          const uint32_t a0[4] = {lo[i].x, hi[i].x, lo[i].y, hi[i].y};
          const uint32_t a1[4] = {lo[i].z, hi[i].z, lo[i].w, hi[i].w};
          mma_16x8x16<T>(acc, a0, w[i].x, w[i].y);
          mma_16x8x16<T>(acc, a1, w[i].z, w[i].w);
          mma_16x8x16<T>(acc_up, a0, u[i].x, u[i].y);
          mma_16x8x16<T>(acc_up, a1, u[i].z, u[i].w);
        }
      }
      __syncwarp();
      if (lane == 0) barrier_arrive(&empty[stage]);
    }
    // split 0's sum, then split 1's: grouped_mma_kernel's fixed order.
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      partial[warp][j][lane] = acc[j];
      partial[warp][4 + j][lane] = acc_up[j];
    }
    named_barrier_sync(1, kBulkConsumerWarps * 32);
    if (split == 0) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        acc[j] += partial[warp + 1][j][lane];
        acc_up[j] += partial[warp + 1][4 + j][lane];
      }
    }
    named_barrier_sync(1, kBulkConsumerWarps * 32);
    if (active && split == 0) {
      const int64_t col = col0 + 2 * quad_col;
      const int r_lo = quad_row, r_hi = quad_row + 8;
      float v[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = acc[j] * (1.0f / (1.0f + expf(-acc[j]))) * acc_up[j];
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

// NNKIT_GATHERED_BULK=0 runs the register-fed kernel instead (to compare on one machine).
bool gathered_bulk_enabled() {
  static const bool enabled = [] {
    const char* flag = std::getenv("NNKIT_GATHERED_BULK");
    return flag == nullptr || std::strcmp(flag, "0") != 0;
  }();
  return enabled;
}

// Whether this device runs the bulk-copy kernel: sm_90+ and the stages' shared memory granted.
template <typename T, bool kTwoRowTiles>
bool bulk_kernel_ready() {
  static const bool ready = [] {
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        major < 9) {
      (void)cudaGetLastError();
      return false;
    }
    if (cudaFuncSetAttribute(gathered_swiglu_bulk_kernel<T, kTwoRowTiles>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(kBulkSharedBytes)) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    return true;
  }();
  return ready;
}

template <typename T, bool kTwoRowTiles>
void launch_gathered_swiglu(const T* x, const int32_t* token, const ExpertWeights& gw,
                            const ExpertWeights& uw, const int32_t* kept, int experts, int capacity,
                            int64_t hidden, int64_t ffn, int sms, T* act, cudaStream_t stream) {
  // k = hidden split over two warps (none when short), 8-column tiles of ffn: as
  // moe_grouped_swiglu_nt runs it.
  const bool short_rows = hidden / 32 < 16;
  // Rows of 16-byte multiples (bulk copies), k split over two warps: the bulk-copy kernel, one
  // block per multiprocessor.
  if (!short_rows && hidden % 8 == 0 && gathered_bulk_enabled() &&
      bulk_kernel_ready<T, kTwoRowTiles>()) {
    const int groups = static_cast<int>((ffn + kBulkColumns - 1) / kBulkColumns);
    const int64_t blocks =
        std::max<int64_t>(1, std::min<int64_t>(std::max(sms, 1), int64_t(groups) * experts));
    launch_dependent(gathered_swiglu_bulk_kernel<T, kTwoRowTiles>, static_cast<unsigned>(blocks),
                     kBulkThreads, kBulkSharedBytes, stream, x, token, gw, uw, kept, capacity, ffn,
                     hidden, act, experts, groups);
    NNKIT_CUDA_CHECK_LAUNCH(gathered_swiglu_bulk_kernel);
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
  Tensor y_routed = empty({padded, s.hidden}, x.dtype());
  moe_grouped_gemm_nt(activated, down_w, kept_offsets, capacity, y_routed);
  moe_combine_rows(y_routed, token, slot, gate, y);
}

}  // namespace nnkit::cuda
