// Purpose: what backend/cuda's grouped expert kernels of decoding share (decode_ops.cu's grouped
// products, moe_experts_decode.cu's whole expert block): the table of expert weight pointers
// passed by value, the weight load that bypasses L1, and the ordering of the chosen experts.
// Owned by backend/cuda.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace nnkit::cuda {

namespace {

constexpr int kMaxGroupedExperts = 64;

// One pointer per expert, passed by value as a kernel argument.
struct ExpertWeights {
  const void* w[kMaxGroupedExperts];
};

__device__ __forceinline__ uint4 load_weights_once(const void* p) {
  // Each weight byte is read once per step: keep it out of L1 (x rows are what L1 should hold).
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// The chosen experts (those with kept rows) first, in expert order, then the idle ones: one warp
// ballots 32 experts at a time (a serial walk would put a chain of shared-memory steps in front
// of every block). Returns the chosen count; counts[] holds every expert's kept rows.
__device__ __forceinline__ int order_experts_chosen_first(const int32_t* kept, int experts,
                                                          int* counts, int* order,
                                                          int* chosen_count) {
  if (threadIdx.x < experts) counts[threadIdx.x] = kept[threadIdx.x + 1] - kept[threadIdx.x];
  __syncthreads();
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int chosen_before = 0, total_chosen = 0;
    for (int base = 0; base < experts; base += 32) {
      const int e = base + lane;
      total_chosen += __popc(__ballot_sync(0xffffffffu, e < experts && counts[e] > 0));
    }
    for (int base = 0; base < experts; base += 32) {
      const int e = base + lane;
      const bool chosen = e < experts && counts[e] > 0;
      const unsigned chosen_mask = __ballot_sync(0xffffffffu, chosen);
      const unsigned idle_mask = __ballot_sync(0xffffffffu, e < experts && !chosen);
      const unsigned below = (1u << lane) - 1u;
      if (chosen) {
        order[chosen_before + __popc(chosen_mask & below)] = e;
      } else if (e < experts) {
        order[total_chosen + (base - chosen_before) + __popc(idle_mask & below)] = e;
      }
      chosen_before += __popc(chosen_mask);
    }
    if (lane == 0) *chosen_count = total_chosen;
  }
  __syncthreads();
  return *chosen_count;
}

}  // namespace

}  // namespace nnkit::cuda
