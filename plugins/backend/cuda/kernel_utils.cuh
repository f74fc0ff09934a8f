// Purpose: small device helpers shared by backend/cuda's kernel files: grid sizing, warp and block
// reductions with a fixed combination order (so results repeat bit for bit), and the
// out-of-range index report. Owned by backend/cuda.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_backend.h"

namespace nnkit::cuda {

inline constexpr int kThreads = 256;  // default block size of the elementwise and row kernels

// Blocks for a grid-stride loop over n elements (capped: each thread then handles several).
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `shared` holds 32 values. The tree is fixed, so the result is deterministic.
template <typename T>
__device__ T block_sum(T v, T* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  T total = lane < warps ? shared[lane] : T(0);
  return warp_sum(total);
}

__device__ inline float block_max(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  float total = lane < warps ? shared[lane] : -INFINITY;
  return warp_max(total);
}

// Records the first out-of-range index a kernel meets (see DeviceFault); later ones are dropped.
__device__ inline void report_fault(DeviceFault* fault, FaultOp op, int64_t index, int64_t limit,
                                    int64_t row) {
  if (atomicCAS(&fault->op, 0, static_cast<int32_t>(op) + 1) == 0) {
    fault->index = index;
    fault->limit = limit;
    fault->row = row;
  }
}

}  // namespace nnkit::cuda
