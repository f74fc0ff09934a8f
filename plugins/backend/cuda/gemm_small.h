// Purpose: backend/cuda's gemm for a b^T with few rows in a (decoding: one row per sequence),
// see gemm_small.cu. Owned by backend/cuda.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace nnkit::cuda {

inline constexpr int64_t kSmallGemmRows = 16;  // rows of a at or below which gemm_small runs

// c (m, n) = alpha * a (m, k) @ b^T + beta * c with b (n, k), row-major, m <= kSmallGemmRows.
// beta = 0 never reads c.
void small_gemm_nt(int64_t m, int64_t n, int64_t k, float alpha, const float* a, const float* b,
                   float beta, float* c, cudaStream_t stream);

}  // namespace nnkit::cuda
