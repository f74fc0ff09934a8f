// Purpose: backend/cuda's bf16/fp16 matrix products through cuBLASLt with a cache of chosen
// algorithms. Owned by CudaBackend (one per backend); used by gemm.cpp.
// Why: an MoE layer runs each expert's products on that expert's rows, and the row count changes
// every step. cublasGemmEx re-runs cuBLAS's kernel heuristics for every new shape on the host,
// which left the GPU waiting most of the time (profile in bench/RESULTS.md). Here the algorithm
// is chosen once per (layouts, dtypes, beta != 0, row count rounded up to a power of two) and
// reused for every row count in that bucket; an algorithm the library refuses for an exact shape
// falls back to a fresh heuristic query for that shape.
// Thread-safety: none; the backend's thread drives it.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <tuple>

namespace nnkit::cuda {

class LtGemm {
 public:
  // `workspace` (bytes) stays owned by the caller and must outlive this object.
  LtGemm(void* workspace, size_t workspace_bytes);
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;
  ~LtGemm();

  // Column-major D = alpha * op(A) op(B) + beta * C with D == C (cuBLAS's view; gemm.cpp maps the
  // row-major product onto it). A: (m x k after op), B: (k x n after op), C: (m x n), ld given.
  // ab_type is CUDA_R_16BF or CUDA_R_16F; c_type that or CUDA_R_32F; compute and scale in fp32.
  void run(cublasOperation_t op_a, cublasOperation_t op_b, int64_t m, int64_t n, int64_t k,
           float alpha, const void* a, int64_t lda, const void* b, int64_t ldb, float beta, void* c,
           int64_t ldc, cudaDataType_t ab_type, cudaDataType_t c_type, cudaStream_t stream);

 private:
  using Key = std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, bool>;
  // The algorithm for `key` found with a heuristic query at (m, n, k); false if none exists.
  bool choose(const Key& key, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a_layout,
              cublasLtMatrixLayout_t b_layout, cublasLtMatrixLayout_t c_layout,
              cublasLtMatmulAlgo_t* algo);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_;
  size_t workspace_bytes_;
  cublasLtMatmulPreference_t preference_ = nullptr;
  std::map<Key, cublasLtMatmulAlgo_t> algos_;
};

}  // namespace nnkit::cuda
