// Purpose: the column dot products of the small gemm (gemm_small.cu), shared with the fused
// norm-and-product kernel of a decode step (norm_gemm_decode.cu) so both sum in the same order
// and give the same bits. Owned by backend/cuda.
#pragma once

#include <cstdint>

#include "kernel_utils.cuh"

namespace nnkit::cuda {

// acc[i] = this lane's share of a[i, :] . bj for the kRows rows of a (row stride k): kWidth
// consecutive k values a lane step, unrolled so each lane keeps several weight loads in flight
// (these products are bound by memory latency x bytes in flight, not by arithmetic). A warp's
// lanes then sum their shares (warp_sum) in a fixed order.
template <typename T, int kRows, int kWidth>
__device__ __forceinline__ void small_gemm_column_shares(const T* a, const T* bj, int64_t k,
                                                         int lane, float (&acc)[kRows]) {
#pragma unroll
  for (int i = 0; i < kRows; ++i) acc[i] = 0.0f;
#pragma unroll 4
  for (int64_t p = int64_t(lane) * kWidth; p < k; p += 32 * kWidth) {
    float w[kWidth];
    load_floats<kWidth>(bj + p, w);
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      float x[kWidth];
      load_floats<kWidth>(a + i * k + p, x);
#pragma unroll
      for (int e = 0; e < kWidth; ++e) acc[i] += x[e] * w[e];
    }
  }
}

}  // namespace nnkit::cuda
