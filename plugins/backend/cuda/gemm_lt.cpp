// Purpose: see gemm_lt.h.
#include "gemm_lt.h"

#include <string>

#include "cuda_check.h"
#include "nnkit/error.h"

namespace nnkit::cuda {

namespace {

// RAII for the per-call descriptors (created and destroyed on the host only: microseconds).
struct LtDescriptors {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  ~LtDescriptors() {
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
    if (desc != nullptr) cublasLtMatmulDescDestroy(desc);
  }
};

int64_t power_of_two_at_least(int64_t value) {
  int64_t p = 1;
  while (p < value) p *= 2;
  return p;
}

}  // namespace

LtGemm::LtGemm(void* workspace, size_t workspace_bytes)
    : workspace_(workspace), workspace_bytes_(workspace_bytes) {
  NNKIT_CUBLAS_CHECK(cublasLtCreate(&handle_));
  NNKIT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference_));
  NNKIT_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(preference_, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                           &workspace_bytes_, sizeof(workspace_bytes_)));
}

LtGemm::~LtGemm() {
  if (preference_ != nullptr) cublasLtMatmulPreferenceDestroy(preference_);
  if (handle_ != nullptr) cublasLtDestroy(handle_);
}

bool LtGemm::choose(const Key& key, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a_layout,
                    cublasLtMatrixLayout_t b_layout, cublasLtMatrixLayout_t c_layout,
                    cublasLtMatmulAlgo_t* algo) {
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      handle_, desc, a_layout, b_layout, c_layout, c_layout, preference_, 1, &result, &found);
  if (status != CUBLAS_STATUS_SUCCESS || found == 0) return false;
  *algo = result.algo;
  algos_[key] = result.algo;
  return true;
}

void LtGemm::run(cublasOperation_t op_a, cublasOperation_t op_b, int64_t m, int64_t n, int64_t k,
                 float alpha, const void* a, int64_t lda, const void* b, int64_t ldb, float beta,
                 void* c, int64_t ldc, cudaDataType_t ab_type, cudaDataType_t c_type,
                 cudaStream_t stream) {
  LtDescriptors d;
  NNKIT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  NNKIT_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  NNKIT_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  // Stored shapes: op(A) is m x k, so A is stored m x k (N) or k x m (T); likewise B.
  const bool ta = op_a != CUBLAS_OP_N, tb = op_b != CUBLAS_OP_N;
  NNKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.a, ab_type, ta ? k : m, ta ? m : k, lda));
  NNKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.b, ab_type, tb ? n : k, tb ? k : n, ldb));
  NNKIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.c, c_type, m, n, ldc));

  // The varying dimension here is n (gemm.cpp passes the row-major row count as cuBLAS's n).
  const Key key{static_cast<int>(op_a),
                static_cast<int>(op_b),
                m,
                power_of_two_at_least(n),
                k,
                lda,
                ldb,
                static_cast<int>(ab_type),
                static_cast<int>(c_type),
                beta != 0.0f};
  cublasLtMatmulAlgo_t algo;
  auto it = algos_.find(key);
  bool have = it != algos_.end();
  if (have) {
    algo = it->second;
  } else {
    have = choose(key, d.desc, d.a, d.b, d.c, &algo);
  }
  if (have) {
    const cublasStatus_t status =
        cublasLtMatmul(handle_, d.desc, &alpha, a, d.a, b, d.b, &beta, c, d.c, c, d.c, &algo,
                       workspace_, workspace_bytes_, stream);
    if (status == CUBLAS_STATUS_SUCCESS) return;
    if (status != CUBLAS_STATUS_NOT_SUPPORTED && status != CUBLAS_STATUS_INVALID_VALUE) {
      NNKIT_CUBLAS_CHECK(status);
    }
  }
  // The bucket's algorithm does not take this exact shape: ask for one that does (not cached,
  // so the bucket keeps the algorithm that fits most of its shapes).
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  NNKIT_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, d.desc, d.a, d.b, d.c, d.c,
                                                    preference_, 1, &result, &found));
  if (found == 0) {
    throw Error("backend/cuda", "cuBLASLt has no algorithm for a " + std::to_string(m) + " x " +
                                    std::to_string(n) + " x " + std::to_string(k) + " product");
  }
  NNKIT_CUBLAS_CHECK(cublasLtMatmul(handle_, d.desc, &alpha, a, d.a, b, d.b, &beta, c, d.c, c, d.c,
                                    &result.algo, workspace_, workspace_bytes_, stream));
}

}  // namespace nnkit::cuda
