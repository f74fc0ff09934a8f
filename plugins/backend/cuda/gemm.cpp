// Purpose: backend/cuda gemm: row-major products through cuBLAS sgemm. Owned by backend/cuda.
// cuBLAS is column-major; a row-major (m, n) matrix is the column-major (n, m) matrix with the
// same memory, so c = op(a) op(b) is computed as c^T = op(b)^T op(a)^T with a and b swapped and
// their transpose flags kept. Pedantic math (the default) keeps full fp32 products; the `tf32`
// option switches to TF32 tensor cores. x W^T products with at most kSmallGemmRows rows in x
// (every decode-step product) go to gemm_small.cu instead, one plain launch each: on an H200 that
// took tiny.yaml's batch-1 GPU decoding from 765 to 1,091 tokens/s (bench/RESULTS.md).
#include <cublas_v2.h>

#include "cuda_backend.h"
#include "cuda_check.h"
#include "gemm_small.h"

namespace nnkit::cuda {

void CudaBackend::gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,
                       const Tensor& c, float alpha, float beta) {
  OpScope op_scope(profiler_.get(), "gemm");
  const auto [m, n, k] = kChecks.gemm(a, trans_a, b, trans_b, c);
  if (m == 0 || n == 0) return;
  if (k == 0) {
    // BLAS rejects zero leading dimensions; the product is empty, only beta * c remains.
    if (beta == 0.0f) {
      fill(c, 0.0f);
    } else {
      scale(c, beta);
    }
    return;
  }
  if (!trans_a && trans_b && m <= kSmallGemmRows) {
    small_gemm_nt(m, n, k, alpha, ptr<float>(a), ptr<float>(b), beta, ptr<float>(c), stream_);
    return;
  }
  NNKIT_CUBLAS_CHECK(
      cublasSgemm(cublas_, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                  static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha,
                  ptr<float>(b), static_cast<int>(b.dim(1)), ptr<float>(a),
                  static_cast<int>(a.dim(1)), &beta, ptr<float>(c), static_cast<int>(n)));
}

}  // namespace nnkit::cuda
