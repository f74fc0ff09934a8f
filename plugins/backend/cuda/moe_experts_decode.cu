// Purpose: backend/cuda moe_swiglu_experts_padded: a decode step's whole SwiGLU expert block
// (gather, gate/up products and SwiGLU, down product, combine) in three launches for 16-bit
// weights, where the composition of ops takes four. Owned by backend/cuda.
//
// 1. The gate/up product with its SwiGLU (grouped_experts.cuh's tensor-core kernel) reads each
//    expert's kept rows of x straight from the step's tokens through the padded layout's token
//    index: no gathered copy of x. The SwiGLU values are rounded to the dtype
//    (moe_grouped_swiglu_nt's value) and only the kept rows are written.
// 2. The down product cuts k (the ffn dimension) in two when its tiles are few: with one
//    8-column tile per block and k whole, batch 1's 4 x 96 tiles left a resident grid of 264
//    blocks doing one or two each (73% busy); with two k parts every block does two or three
//    (k_parts_for() decides on the device, from the chosen experts). The f32 sums go to a
//    partial buffer, unrounded. Its blocks, scheduled while the SwiGLU's last blocks run
//    (programmatic dependent launch), first bring their first item's weights into L2.
// 3. The combine: y[t] = sum over token t's padded rows n (ascending) of gate[slot[n]] * (the
//    k parts' sums added in order), rounded once.
// Fixed orders throughout: results repeat bit for bit. They differ from the composition only by
// the down product not being rounded to the dtype before the combine.
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

namespace nnkit::cuda {

namespace {

using backend_common::kFloatDTypes;

constexpr int kMaxCapacity = 16;   // one m16 tile of rows per expert
constexpr int kMaxTokenRows = 32;  // padded rows of one token (its top-k slots) the combine takes
constexpr int kCombineThreads = 128;  // two output columns each
constexpr int kCombineColumns = 2 * kCombineThreads;
// Loads in flight per warp (bytes in flight are what these products' speed is): the gate/up
// product's 6 k steps of two weight rows (6 KB per warp) and the down product's 8 of one (4 KB;
// as an op it keeps 4, 2 KB per warp, and measured 2.7 TB/s).
struct DeepStages {
  static constexpr int kGate = 6, kDown = 8;
};
struct ShallowStages {
  static constexpr int kGate = 4, kDown = 4;
};

// Grid (tokens, hidden / kCombineColumns). Every output row is written (0 for a token without
// rows). partial: (kMaxParts, padded_rows, hidden) f32, of which the down product wrote the
// first k_parts_for(chosen, down_groups, down_grid, kMaxParts).
template <typename T, int kMaxParts>
__global__ void __launch_bounds__(kCombineThreads)
    experts_combine_kernel(const float* partial, const int32_t* token, const int32_t* slot,
                           const float* gate, const int32_t* kept, int experts, int capacity,
                           int down_groups, int down_grid, int64_t hidden, T* y) {
  __shared__ int row_n[kMaxTokenRows];
  __shared__ float row_gate[kMaxTokenRows];
  __shared__ int row_count, parts;
  wait_for_preceding_grid();
  allow_dependent_launch();
  const int t = blockIdx.x, lane = threadIdx.x & 31;
  const int padded_rows = experts * capacity;
  if (threadIdx.x < 32) {
    // Token t's padded rows in ascending order (a ballot over 32 rows at a time).
    int found = 0;
    for (int base = 0; base < padded_rows; base += 32) {
      const int n = base + lane;
      const bool mine = n < padded_rows && token[n] == t;
      const unsigned mask = __ballot_sync(0xffffffffu, mine);
      const int index = found + __popc(mask & ((1u << lane) - 1u));
      if (mine && index < kMaxTokenRows) {
        row_n[index] = n;
        row_gate[index] = gate[slot[n]];
      }
      found += __popc(mask);
    }
    int chosen = 0;
    for (int base = 0; base < experts; base += 32) {
      const int e = base + lane;
      chosen += __popc(__ballot_sync(0xffffffffu, e < experts && kept[e + 1] > kept[e]));
    }
    if (lane == 0) {
      row_count = min(found, kMaxTokenRows);
      parts = k_parts_for(chosen, down_groups, down_grid, kMaxParts);
    }
  }
  __syncthreads();
  const int64_t col = int64_t(blockIdx.y) * kCombineColumns + 2 * threadIdx.x;
  if (col >= hidden) return;
  const int64_t part_stride = int64_t(padded_rows) * hidden;
  float2 sum = make_float2(0.0f, 0.0f);
  constexpr int kBatch = 4;  // rows whose loads go out together
  for (int i0 = 0; i0 < row_count; i0 += kBatch) {
    float2 v[kBatch][kMaxParts];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
#pragma unroll
      for (int p = 0; p < kMaxParts; ++p) {
        v[b][p] = i0 + b < row_count && p < parts
                      ? __ldcg(reinterpret_cast<const float2*>(
                            partial + p * part_stride + int64_t(row_n[i0 + b]) * hidden + col))
                      : make_float2(0.0f, 0.0f);
      }
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      if (i0 + b >= row_count) break;
      float2 s = v[b][0];
#pragma unroll
      for (int p = 1; p < kMaxParts; ++p) {
        if (p < parts) s.x += v[b][p].x, s.y += v[b][p].y;
      }
      const float g = row_gate[i0 + b];
      sum.x += g * s.x;
      sum.y += g * s.y;
    }
  }
  *reinterpret_cast<uint32_t*>(y + int64_t(t) * hidden + col) = pack_pair<T>(sum.x, sum.y);
}

// Switches to compare variants on one machine: NNKIT_FUSED_EXPERTS=0 runs the four-op
// composition instead, NNKIT_DOWN_PREFETCH=0 skips the down product's L2 prefetch of its first
// tile, NNKIT_EXPERT_STAGES=4 keeps 4 k steps of loads in flight in both products,
// NNKIT_DOWN_PARTS=1 never cuts the down product's k.
bool env_switch_on(const char* name) {
  const char* flag = std::getenv(name);
  return flag == nullptr || std::strcmp(flag, "0") != 0;
}

template <typename Kernel>
int64_t resident_grid(Kernel kernel, int sms, int64_t items) {
  static const int per_sm = resident_blocks_per_sm(kernel);
  return std::max<int64_t>(1, std::min<int64_t>(int64_t(per_sm) * std::max(sms, 1), items));
}

template <typename T, typename Stages, bool kTwoRowTiles, int kDownSplit, int kParts>
void launch_expert_block(const T* x, const int32_t* token, const int32_t* slot, const float* gate,
                         const ExpertWeights& gw, const ExpertWeights& uw, const ExpertWeights& dw,
                         const int32_t* kept, int experts, int capacity, int64_t hidden,
                         int64_t ffn, int64_t tokens, int sms, bool prefetch, T* act,
                         float* partial, T* y, cudaStream_t stream) {
  // gate/up: k = hidden split over two warps (or none when short), 8-column tiles of ffn.
  const bool short_rows = hidden / 32 < 16;
  auto swiglu = short_rows ? grouped_mma_kernel<T, 1, true, kTwoRowTiles, false, Stages::kGate>
                           : grouped_mma_kernel<T, 2, true, kTwoRowTiles, false, Stages::kGate>;
  const int64_t swiglu_cols = short_rows ? kMmaWarps * 8 : kMmaWarps / 2 * 8;
  const int swiglu_groups = static_cast<int>((ffn + swiglu_cols - 1) / swiglu_cols);
  launch_dependent(
      swiglu, static_cast<unsigned>(resident_grid(swiglu, sms, int64_t(swiglu_groups) * experts)),
      kMmaThreads, 0, stream, x, token, gw, uw, kept, capacity, ffn, hidden, act,
      static_cast<float*>(nullptr), 1, experts, swiglu_groups, false);
  NNKIT_CUDA_CHECK_LAUNCH(grouped_mma_kernel);
  auto down = grouped_mma_kernel<T, kDownSplit, false, kTwoRowTiles, true, Stages::kDown>;
  const int64_t down_cols = kMmaWarps / kDownSplit * 8;
  const int down_groups = static_cast<int>((hidden + down_cols - 1) / down_cols);
  const auto down_grid =
      static_cast<int>(resident_grid(down, sms, int64_t(down_groups) * experts * kParts));
  launch_dependent(down, static_cast<unsigned>(down_grid), kMmaThreads, 0, stream,
                   static_cast<const T*>(act), static_cast<const int32_t*>(nullptr), dw, dw, kept,
                   capacity, hidden, ffn, static_cast<T*>(nullptr), partial, kParts, experts,
                   down_groups, prefetch);
  NNKIT_CUDA_CHECK_LAUNCH(grouped_mma_kernel);
  const dim3 grid(static_cast<unsigned>(tokens),
                  static_cast<unsigned>((hidden + kCombineColumns - 1) / kCombineColumns));
  launch_dependent(experts_combine_kernel<T, kParts>, grid, kCombineThreads, 0, stream,
                   static_cast<const float*>(partial), token, slot, gate, kept, experts, capacity,
                   down_groups, down_grid, hidden, y);
  NNKIT_CUDA_CHECK_LAUNCH(experts_combine_kernel);
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
  // The three-launch path takes 16-bit tensors of 16-byte-aligned rows, hidden and ffn
  // multiples of 32 and at most one m16 tile of rows per expert; anything else composes ops.
  bool fits = x.dtype() != DType::kF32 && env_switch_on("NNKIT_FUSED_EXPERTS") &&
              s.hidden % 32 == 0 && s.ffn % 32 == 0 && s.ffn > 0 && capacity <= kMaxCapacity &&
              s.experts <= kMaxGroupedExperts && gate.numel() <= tokens * kMaxTokenRows &&
              aligned16(x.raw()) && aligned16(y.raw());
  ExpertWeights gw{}, uw{}, dw{};
  for (int64_t e = 0; e < s.experts && fits; ++e) {
    const auto i = static_cast<size_t>(e);
    gw.w[e] = gate_w[i].raw();
    uw.w[e] = up_w[i].raw();
    dw.w[e] = down_w[i].raw();
    fits = aligned16(gw.w[e]) && aligned16(uw.w[e]) && aligned16(dw.w[e]);
  }
  if (!fits) {
    backend_common::moe_swiglu_experts_padded_by_ops(*this, x, token, slot, gate, gate_w, up_w,
                                                     down_w, kept_offsets, capacity, y);
    return;
  }
  const int64_t padded = s.experts * capacity;
  // Two k parts for the down product when each keeps enough k steps per warp (at most: the
  // kernels pick on the device; NNKIT_DOWN_PARTS=1 never splits).
  const int64_t down_steps = s.ffn / 32;
  static const bool split_allowed = [] {
    const char* flag = std::getenv("NNKIT_DOWN_PARTS");
    return flag == nullptr || std::strcmp(flag, "1") != 0;
  }();
  const int parts = down_steps >= 32 && split_allowed ? 2 : 1;
  Tensor act = empty({padded, s.ffn}, x.dtype());
  Tensor partial = empty({parts * padded * s.hidden});  // f32; the kept rows are written
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, float>) {
      static const bool prefetch = env_switch_on("NNKIT_DOWN_PREFETCH");
      static const bool deep = [] {
        const char* flag = std::getenv("NNKIT_EXPERT_STAGES");
        return flag == nullptr || std::strcmp(flag, "4") != 0;
      }();
      auto run = [&](auto two_rows, auto split, auto k_parts) {
        auto launch = [&](auto stages) {
          launch_expert_block<T, decltype(stages), decltype(two_rows)::value,
                              decltype(split)::value, decltype(k_parts)::value>(
              ptr<T>(x), ptr<int32_t>(token), ptr<int32_t>(slot), ptr<float>(gate), gw, uw, dw,
              ptr<int32_t>(kept_offsets), static_cast<int>(s.experts), static_cast<int>(capacity),
              s.hidden, s.ffn, tokens, limits_.sms, prefetch, ptr<T>(act), ptr<float>(partial),
              ptr<T>(y), stream_);
        };
        deep ? launch(DeepStages{}) : launch(ShallowStages{});
      };
      using One = std::integral_constant<int, 1>;
      using Two = std::integral_constant<int, 2>;
      using Eight = std::integral_constant<int, 8>;
      // The down product's k split over the block's warps as decode_ops.cu picks it for a
      // product of down_steps / parts steps (8 warps for long parts, 2 for short).
      const bool long_parts = down_steps / parts >= 64;
      const bool two_rows = capacity > 8;
      auto by_split = [&](auto k_parts) {
        if (two_rows) {
          long_parts ? run(std::true_type{}, Eight{}, k_parts)
                     : run(std::true_type{}, Two{}, k_parts);
        } else {
          long_parts ? run(std::false_type{}, Eight{}, k_parts)
                     : run(std::false_type{}, Two{}, k_parts);
        }
      };
      parts == 2 ? by_split(Two{}) : by_split(One{});
    }
  });
}

}  // namespace nnkit::cuda
