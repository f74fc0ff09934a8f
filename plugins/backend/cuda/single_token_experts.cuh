// Purpose: the gate/up product with its SwiGLU of a single-token decode step (batch 1), where each
// chosen expert has exactly one row. Shared by moe_experts_decode.cu (the expert block) and
// bench/grouped_bw.cu. Owned by backend/cuda.
//
// Why not grouped_experts.cuh's tensor-core kernel: at one row an m16n8k16 step wastes 15 of its
// 16 A rows, and its fragment layout makes every lane hold 16 bytes of x beside each 16 bytes of
// weights, so half the registers that could keep weight loads in flight hold x. These products
// are bound by bytes in flight per multiprocessor (bench/RESULTS.md, session 13: a plain read
// needs ~128 KB a multiprocessor to reach 3.75 TB/s), so here a lane loads 16 bytes of x once
// and multiplies it into kRows weight rows: a warp reads kRows rows 512 contiguous bytes at a
// time, every load of its share issued before the first is used, and sums in f32 on the CUDA
// cores (the arithmetic is ~1 FLOP a weight byte).
//
// Sums: a lane adds its 8-element slices in k order, the warp's lanes add in a fixed butterfly
// (warp_sum): deterministic, but another order than the tensor-core kernel's, so the results
// agree with it to rounding, not bit for bit.
//
// The down product in the same form (a block owning 4 output columns of one expert, its warps
// sharing k, the combine folded in by arrival counters) measured slower than the tensor-core
// kernel in bench/grouped_bw.cu (17.3 vs 13.9 us at batch 1: each block's barrier, fence and
// arrival between items leave its multiprocessor with nothing in flight) and level in decoding
// (589.3 vs 590.0 tokens/s): not kept (bench/RESULTS.md, session 17).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dependent_launch.cuh"
#include "grouped_experts.cuh"
#include "kernel_utils.cuh"

namespace nnkit::cuda {

namespace {

constexpr int kSingleTokenWarps = 8;
constexpr int kSingleTokenThreads = kSingleTokenWarps * 32;
constexpr int kSliceWidth = 8;               // 16-bit elements in one lane's 16-byte load
constexpr int kWarpSpan = 32 * kSliceWidth;  // k elements one warp load covers

// The experts with a kept row, one bit each, the same in every lane (experts <= 64).
__device__ __forceinline__ uint64_t chosen_expert_mask(const int32_t* kept, int experts, int lane) {
  uint64_t mask = 0;
  for (int base = 0; base < experts; base += 32) {
    const int e = base + lane;
    const bool chosen = e < experts && kept[e + 1] > kept[e];
    mask |= uint64_t(__ballot_sync(0xffffffffu, chosen)) << base;
  }
  return mask;
}

// The expert of the n-th set bit (ascending expert order).
__device__ __forceinline__ int nth_chosen_expert(uint64_t mask, int n) {
  for (int i = 0; i < n; ++i) mask &= mask - 1;
  return __ffsll(static_cast<long long>(mask)) - 1;
}

// acc + w . x over one 8-element slice, in element order.
template <typename T>
__device__ __forceinline__ float add_slice_dot(float acc, const uint4& w, const uint4& x) {
  const T* a = reinterpret_cast<const T*>(&w);
  const T* b = reinterpret_cast<const T*>(&x);
#pragma unroll
  for (int i = 0; i < kSliceWidth; ++i) acc += to_float(a[i]) * to_float(b[i]);
  return acc;
}

// act[e * capacity, f] = silu(gate_e[f, :] . x) * (up_e[f, :] . x) for every chosen expert e,
// x the step's one token (k = hidden). A warp owns kRows consecutive ffn rows of one expert and
// loads kBatch warp spans of both matrices before it multiplies; warps walk (expert, row group)
// items, consecutive warps on consecutive rows. kMinBlocks: the launch bound's blocks a
// multiprocessor (a register cap).
template <typename T, int kRows, int kBatch, int kMinBlocks = 1>
__global__ void __launch_bounds__(kSingleTokenThreads, kMinBlocks)
    single_token_swiglu_kernel(const T* x, ExpertWeights gate, ExpertWeights up,
                               const int32_t* kept, int experts, int capacity, int64_t ffn,
                               int64_t k, T* act) {
  wait_for_preceding_grid();
  allow_dependent_launch();
  const int lane = threadIdx.x & 31;
  const uint64_t mask = chosen_expert_mask(kept, experts, lane);
  const int64_t per_expert = ffn / kRows;
  const int64_t items = int64_t(__popcll(mask)) * per_expert;
  const int64_t steps = (k + kWarpSpan - 1) / kWarpSpan;
  const uint4 zero = make_uint4(0, 0, 0, 0);
#pragma unroll 1
  for (int64_t item = int64_t(blockIdx.x) * kSingleTokenWarps + threadIdx.x / 32; item < items;
       item += int64_t(gridDim.x) * kSingleTokenWarps) {
    const int e = nth_chosen_expert(mask, static_cast<int>(item / per_expert));
    const int64_t f0 = (item % per_expert) * kRows;
    const T* g = static_cast<const T*>(gate.w[e]) + f0 * k;
    const T* u = static_cast<const T*>(up.w[e]) + f0 * k;
    float acc_g[kRows], acc_u[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc_g[r] = acc_u[r] = 0.0f;
#pragma unroll 1
    for (int64_t s0 = 0; s0 < steps; s0 += kBatch) {
      uint4 wg[kBatch][kRows], wu[kBatch][kRows], xv[kBatch];
      // Whole spans load unconditionally, so every load of the batch issues before the first
      // multiply (per-load predicates keep ptxas from hoisting them).
      if ((s0 + kBatch) * kWarpSpan <= k) {
#pragma unroll
        for (int i = 0; i < kBatch; ++i) {
          const int64_t off = (s0 + i) * kWarpSpan + lane * kSliceWidth;
          xv[i] = __ldg(reinterpret_cast<const uint4*>(x + off));
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            wg[i][r] = load_weights_once(g + r * k + off);
            wu[i][r] = load_weights_once(u + r * k + off);
          }
        }
      } else {
#pragma unroll
        for (int i = 0; i < kBatch; ++i) {
          const int64_t off = (s0 + i) * kWarpSpan + lane * kSliceWidth;
          const bool live = off < k;
          xv[i] = live ? __ldg(reinterpret_cast<const uint4*>(x + off)) : zero;
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            wg[i][r] = live ? load_weights_once(g + r * k + off) : zero;
            wu[i][r] = live ? load_weights_once(u + r * k + off) : zero;
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          acc_g[r] = add_slice_dot<T>(acc_g[r], wg[i][r], xv[i]);
          acc_u[r] = add_slice_dot<T>(acc_u[r], wu[i][r], xv[i]);
        }
      }
    }
    float v[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float gate_sum = warp_sum(acc_g[r]), up_sum = warp_sum(acc_u[r]);
      v[r] = gate_sum * (1.0f / (1.0f + expf(-gate_sum))) * up_sum;  // swiglu_forward's formula
    }
    if (lane == 0) store_floats<kRows>(act + int64_t(e) * capacity * ffn + f0, v);
  }
}

}  // namespace

}  // namespace nnkit::cuda
