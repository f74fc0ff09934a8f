// Purpose: backend/cuda gemm kernel for c = a b^T with at most 16 rows in a, the shape of every
// decode-step product (one row per sequence against a weight stored (out, in)). Owned by
// backend/cuda.
// Such products are memory-bound reads of b; what costs is per-call overhead, which cuBLAS makes
// several times larger than one plain launch. One warp per output column j: lanes stride along
// k (coalesced reads of row j of b), all m rows of a accumulated at once, then a warp tree
// reduction per row; fixed summation order (deterministic). Products with b untransposed occur
// only in backward passes (large k, few columns of parallelism here) and stay with cuBLAS.
#include "cuda_check.h"
#include "gemm_small.h"
#include "kernel_utils.cuh"

namespace nnkit::cuda {

namespace {

constexpr int kMaxRows = static_cast<int>(kSmallGemmRows);

__device__ __forceinline__ void store(float* out, float sum, float alpha, float beta) {
  *out = beta == 0.0f ? alpha * sum : alpha * sum + beta * *out;
}

template <int kRows>
__global__ void small_gemm_nt_kernel(int64_t n, int64_t k, float alpha, const float* a,
                                     const float* b, float beta, float* c) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (j >= n) return;
  const float* bj = b + j * k;
  float acc[kRows];
#pragma unroll
  for (int i = 0; i < kRows; ++i) acc[i] = 0.0f;
  for (int64_t p = lane; p < k; p += 32) {
    const float w = bj[p];
#pragma unroll
    for (int i = 0; i < kRows; ++i) acc[i] += a[i * k + p] * w;
  }
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const float sum = warp_sum(acc[i]);
    if (lane == 0) store(c + i * n + j, sum, alpha, beta);
  }
}

// Rows are a template parameter (register arrays need a constant size); small_gemm_nt splits m into
// chunks of exactly 16, 8, 4, 2 and 1 rows.
template <int kRows>
void launch_rows(int64_t n, int64_t k, float alpha, const float* a, const float* b, float beta,
                 float* c, cudaStream_t stream) {
  constexpr int kWarps = kThreads / 32;
  const unsigned blocks = static_cast<unsigned>((n + kWarps - 1) / kWarps);
  small_gemm_nt_kernel<kRows><<<blocks, kThreads, 0, stream>>>(n, k, alpha, a, b, beta, c);
  NNKIT_CUDA_CHECK_LAUNCH(small_gemm_nt_kernel);
}

}  // namespace

void small_gemm_nt(int64_t m, int64_t n, int64_t k, float alpha, const float* a, const float* b,
                   float beta, float* c, cudaStream_t stream) {
  // m as a sum of bucket sizes (16, 8, 4, 2, 1), each chunk of rows its own launch.
  int64_t row = 0;
  for (int bucket = kMaxRows; bucket >= 1; bucket /= 2) {
    while (m - row >= bucket) {
      const float* a_rows = a + row * k;
      float* c_rows = c + row * n;
      switch (bucket) {
        case 16:
          launch_rows<16>(n, k, alpha, a_rows, b, beta, c_rows, stream);
          break;
        case 8:
          launch_rows<8>(n, k, alpha, a_rows, b, beta, c_rows, stream);
          break;
        case 4:
          launch_rows<4>(n, k, alpha, a_rows, b, beta, c_rows, stream);
          break;
        case 2:
          launch_rows<2>(n, k, alpha, a_rows, b, beta, c_rows, stream);
          break;
        default:
          launch_rows<1>(n, k, alpha, a_rows, b, beta, c_rows, stream);
          break;
      }
      row += bucket;
    }
  }
}

}  // namespace nnkit::cuda
