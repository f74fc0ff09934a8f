// Purpose: backend/cuda's gemm for a b^T with few rows in a (decoding: one row per sequence),
// see gemm_small.cu. Owned by backend/cuda.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "nnkit/tensor.h"

namespace nnkit::cuda {

inline constexpr int64_t kSmallGemmRows = 16;  // rows of a at or below which gemm_small runs

// c (m, n) = alpha * a (m, k) @ b^T + beta * c with b (n, k), row-major, m <= kSmallGemmRows.
// a and b share `ab_dtype` (f32, bf16 or f16); c has `c_dtype`, f32 or ab_dtype (checked by the
// caller). Products and sums are f32; c is rounded once. beta = 0 never reads c.
void small_gemm_nt(int64_t m, int64_t n, int64_t k, float alpha, DType ab_dtype, const void* a,
                   const void* b, float beta, DType c_dtype, void* c, cudaStream_t stream);

}  // namespace nnkit::cuda
