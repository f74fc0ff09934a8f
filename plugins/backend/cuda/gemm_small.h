// Purpose: backend/cuda's gemm for products with few rows in op(a) (decoding: one row per
// sequence), see gemm_small.cu. Owned by backend/cuda.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace nnkit::cuda {

inline constexpr int64_t kSmallGemmRows = 16;  // rows of op(a) at or below which gemm_small runs

// c (m, n) = alpha * a (m, k) @ op(b) + beta * c, row-major, m <= kSmallGemmRows; op(b) = b^T
// (b is (n, k)) when trans_b, else b (k, n). beta = 0 never reads c.
void small_gemm(bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                const float* b, float beta, float* c, cudaStream_t stream);

}  // namespace nnkit::cuda
