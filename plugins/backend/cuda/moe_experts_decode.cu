// Purpose: backend/cuda moe_swiglu_experts_padded: a decode step's whole SwiGLU expert block
// (gather, gate/up products and SwiGLU, down product, combine) in two launches for 16-bit
// weights, where the composition of ops takes four: the gate/up product with its SwiGLU
// (grouped_experts.cuh's tensor-core kernel) reads each expert's kept rows of x straight from the
// step's tokens through the padded layout's token index, so there is no gathered copy of x; the
// down product (the same kernel) combines each column group once its last expert's item is done
// (CombineArgs), so there is no combine launch. The result is the composition's, bit for bit
// (the same kernels, the same per-lane k order, the combine's fixed slot order). A single-token
// step (batch 1) takes single_token_experts.cuh's gate/up product instead (+2.5% at batch 1),
// which agrees with the composition to rounding. Owned by backend/cuda.
//
// Measured and not kept (bench/RESULTS.md, sessions 12-16): a one-pass kernel (each block an
// equal share of 32-column ffn units, SwiGLU multiplied straight into an f32 down-product partial)
// read the down matrix in 64-128-byte pieces and was slower (449 vs 492 tokens/s at batch 1);
// a down product cut into two k parts for an even grid, its L2 prefetch under PDL and f32
// partials ran slower than moe_grouped_gemm_nt (17.6 vs 14.2 us a layer at batch 1); the
// down product's L2 prefetch before its dependency wait (527.7 vs 549.2 tokens/s); x staged in
// shared memory so 8 k steps of weights stay in flight (554.1 vs 562.4 tokens/s with x in
// registers and 6 steps); a lane-private cp.async ring for both products (465.0 vs 552.7); x
// staged by cp.async for the down product with 8 k steps in flight (550.8 vs 584.4).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "../common/composed_ops.h"
#include "cuda_check.h"
#include "dependent_launch.cuh"
#include "grouped_experts.cuh"
#include "kernel_utils.cuh"
#include "single_token_experts.cuh"

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

template <typename T, bool kTwoRowTiles>
void launch_gathered_swiglu(const T* x, const int32_t* token, const ExpertWeights& gw,
                            const ExpertWeights& uw, const int32_t* kept, int experts, int capacity,
                            int64_t hidden, int64_t ffn, int sms, T* act, cudaStream_t stream) {
  constexpr int kStages = kGateStages;
  // k = hidden split over two warps (none when short), 8-column tiles of ffn: as
  // moe_grouped_swiglu_nt runs it.
  const bool short_rows = hidden / 32 < 16;
  auto kernel = short_rows ? grouped_mma_kernel<T, 1, true, kTwoRowTiles, kStages>
                           : grouped_mma_kernel<T, 2, true, kTwoRowTiles, kStages>;
  static const int per_sm_short =
      resident_blocks_per_sm(grouped_mma_kernel<T, 1, true, kTwoRowTiles, kStages>);
  static const int per_sm_long =
      resident_blocks_per_sm(grouped_mma_kernel<T, 2, true, kTwoRowTiles, kStages>);
  const int64_t columns = short_rows ? kMmaWarps * 8 : kMmaWarps / 2 * 8;
  const int groups = static_cast<int>((ffn + columns - 1) / columns);
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>(int64_t(short_rows ? per_sm_short : per_sm_long) * std::max(sms, 1),
                           int64_t(groups) * experts));
  launch_dependent(kernel, static_cast<unsigned>(blocks), kMmaThreads, 0, stream, x, token, gw, uw,
                   kept, capacity, ffn, hidden, act, experts, groups, CombineArgs{});
  NNKIT_CUDA_CHECK_LAUNCH(grouped_mma_kernel);
}

// NNKIT_GROUPED_MMA=0 (decode_ops.cu) sends the down product to the CUDA-core kernel, which has
// no combine of its own.
bool grouped_mma_available() {
  const char* flag = std::getenv("NNKIT_GROUPED_MMA");
  return flag == nullptr || std::strcmp(flag, "0") != 0;
}

// NNKIT_FUSED_COMBINE=0: the combine as its own launch after the down product (to compare on
// one machine).
bool fused_combine_enabled() {
  static const bool enabled = [] {
    const char* flag = std::getenv("NNKIT_FUSED_COMBINE");
    return flag == nullptr || std::strcmp(flag, "0") != 0;
  }();
  return enabled;
}

// The down product with the combine folded in (grouped_experts.cuh's CombineArgs): k = ffn split
// over the warps as moe_grouped_gemm_nt splits it.
template <typename T, int kSplit, bool kTwoRowTiles>
void launch_down_combine_as(const T* act, const ExpertWeights& dw, const int32_t* kept, int experts,
                            int capacity, int64_t hidden, int64_t ffn, int sms, T* y_routed,
                            const CombineArgs& combine, cudaStream_t stream) {
  auto kernel = grouped_mma_kernel<T, kSplit, false, kTwoRowTiles, kMmaStages, true>;
  static const int per_sm = resident_blocks_per_sm(kernel);
  constexpr int64_t kColumnsPerBlock = kMmaWarps / kSplit * 8;
  const int groups = static_cast<int>((hidden + kColumnsPerBlock - 1) / kColumnsPerBlock);
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>(int64_t(per_sm) * std::max(sms, 1), int64_t(groups) * experts));
  launch_dependent(kernel, static_cast<unsigned>(blocks), kMmaThreads, 0, stream, act,
                   static_cast<const int32_t*>(nullptr), dw, dw, kept, capacity, hidden, ffn,
                   y_routed, experts, groups, combine);
  NNKIT_CUDA_CHECK_LAUNCH(grouped_mma_kernel);
}

template <typename T, bool kTwoRowTiles>
void launch_down_combine(const T* act, const ExpertWeights& dw, const int32_t* kept, int experts,
                         int capacity, int64_t hidden, int64_t ffn, int sms, T* y_routed,
                         const CombineArgs& combine, cudaStream_t stream) {
  const int64_t steps = ffn / 32;
  if (steps >= 64) {
    launch_down_combine_as<T, 8, kTwoRowTiles>(act, dw, kept, experts, capacity, hidden, ffn, sms,
                                               y_routed, combine, stream);
  } else if (steps >= 16) {
    launch_down_combine_as<T, 2, kTwoRowTiles>(act, dw, kept, experts, capacity, hidden, ffn, sms,
                                               y_routed, combine, stream);
  } else {
    launch_down_combine_as<T, 1, kTwoRowTiles>(act, dw, kept, experts, capacity, hidden, ffn, sms,
                                               y_routed, combine, stream);
  }
}

// Single-token steps take single_token_experts.cuh's gate/up product (one row per chosen
// expert, x loaded once for several weight rows); NNKIT_SINGLE_TOKEN_SWIGLU=0 sends it back to the
// tensor-core kernel (to compare on one machine).
bool single_token_swiglu_enabled() {
  static const bool enabled = [] {
    const char* flag = std::getenv("NNKIT_SINGLE_TOKEN_SWIGLU");
    return flag == nullptr || std::strcmp(flag, "0") != 0;
  }();
  return enabled;
}

// Rows a warp owns and k spans it loads before multiplying: two ffn rows of gate and of up with
// hidden 768's three spans are 12 loads of weights and 3 of x a lane. Three blocks a
// multiprocessor as the launch bound: left free, ptxas spends ~150 registers (one block) on
// widening the loads early; capped at 85 it keeps them packed (80, no spills).
// bench/grouped_bw.cu compares the choices (session 17: 21.4 us a call at batch 1 against 23.2
// for the tensor-core kernel; a plain read of the same bytes takes 20.1).
constexpr int kSingleSwigluRows = 2, kSingleSwigluBatch = 3, kSingleSwigluBlocks = 3;
static_assert(kSingleTokenThreads == kMmaThreads, "resident_blocks_per_sm sizes 256 threads");

template <typename T>
void launch_single_token_swiglu(const T* x, const ExpertWeights& gw, const ExpertWeights& uw,
                                const int32_t* kept, int experts, int capacity, int max_chosen,
                                int64_t hidden, int64_t ffn, int sms, T* act, cudaStream_t stream) {
  auto kernel =
      single_token_swiglu_kernel<T, kSingleSwigluRows, kSingleSwigluBatch, kSingleSwigluBlocks>;
  static const int per_sm = resident_blocks_per_sm(kernel);
  // Warp items for `max_chosen` experts (the chosen ones are counted on the device), capped at
  // what stays resident.
  const int64_t warps = int64_t(max_chosen) * (ffn / kSingleSwigluRows);
  const unsigned blocks = static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>(int64_t(per_sm) * std::max(sms, 1),
                                             (warps + kSingleTokenWarps - 1) / kSingleTokenWarps)));
  launch_dependent(kernel, blocks, kSingleTokenThreads, 0, stream, x, gw, uw, kept, experts,
                   capacity, ffn, hidden, act);
  NNKIT_CUDA_CHECK_LAUNCH(single_token_swiglu_kernel);
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
  // One token: each chosen expert has its one row, and at most top_k experts are chosen.
  const bool single_token = tokens == 1;
  const int max_chosen =
      static_cast<int>(std::min<int64_t>(s.experts, std::max<int64_t>(gate.numel(), 1)));
  Tensor activated = empty({padded, s.ffn}, x.dtype());  // kept rows only
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, float>) {
      if (single_token && single_token_swiglu_enabled()) {
        launch_single_token_swiglu<T>(ptr<T>(x), gw, uw, ptr<int32_t>(kept_offsets),
                                      static_cast<int>(s.experts), static_cast<int>(capacity),
                                      max_chosen, s.hidden, s.ffn, limits_.sms, ptr<T>(activated),
                                      stream_);
        return;
      }
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
  // The combine folds into the down product when it takes the tensor-core path (k a multiple of
  // 32, 8-column groups that fit the arrival counters).
  ExpertWeights dw{};
  bool fold = fused_combine_enabled() && s.ffn % 32 == 0 && s.hidden % 8 == 0 &&
              aligned16(activated.raw()) && aligned16(y_routed.raw()) && aligned16(y.raw()) &&
              s.hidden / 8 <= kDecodeArrivalCounters && grouped_mma_available();
  for (int64_t e = 0; e < s.experts && fold; ++e) {
    dw.w[e] = down_w[static_cast<size_t>(e)].raw();
    fold = aligned16(dw.w[e]) && down_w[static_cast<size_t>(e)].dtype() == x.dtype() &&
           down_w[static_cast<size_t>(e)].shape() == Shape{s.hidden, s.ffn};
  }
  if (!fold) {
    moe_grouped_gemm_nt(activated, down_w, kept_offsets, capacity, y_routed);
    moe_combine_rows(y_routed, token, slot, gate, y);
    return;
  }
  CombineArgs combine;
  combine.token = ptr<int32_t>(token);
  combine.slot = ptr<int32_t>(slot);
  combine.gate = ptr<float>(gate);
  combine.out = y.raw();
  combine.arrivals = decode_arrivals_ + kDecodeArrivalCounters;  // the second half: the combine's
  combine.tokens = static_cast<int>(tokens);
  combine.padded_rows = static_cast<int>(padded);
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, float>) {
      auto launch = [&](auto two_rows) {
        launch_down_combine<T, decltype(two_rows)::value>(
            ptr<T>(activated), dw, ptr<int32_t>(kept_offsets), static_cast<int>(s.experts),
            static_cast<int>(capacity), s.hidden, s.ffn, limits_.sms, ptr<T>(y_routed), combine,
            stream_);
      };
      capacity > 8 ? launch(std::true_type{}) : launch(std::false_type{});
    }
  });
}

void load_experts_decode_kernels() {
  load_kernel_now(single_token_swiglu_kernel<__nv_bfloat16, kSingleSwigluRows, kSingleSwigluBatch,
                                             kSingleSwigluBlocks>);
  load_kernel_now(grouped_mma_kernel<__nv_bfloat16, 8, false, false, kMmaStages, true>);
}

}  // namespace nnkit::cuda
