// Purpose: backend/cuda gemm: row-major products through cuBLAS sgemm. Owned by backend/cuda.
// cuBLAS is column-major; a row-major (m, n) matrix is the column-major (n, m) matrix with the
// same memory, so c = op(a) op(b) is computed as c^T = op(b)^T op(a)^T with a and b swapped and
// their transpose flags kept. Pedantic math (the default) keeps full fp32 products; the `tf32`
// option switches to TF32 tensor cores.
#include <cublas_v2.h>

#include "cuda_backend.h"
#include "cuda_check.h"

namespace nnkit::cuda {

void CudaBackend::gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,
                       const Tensor& c, float alpha, float beta) {
  OpScope op_scope(profiler_.get(), "gemm");
  kChecks.dtype("gemm", "a", a, DType::kF32);
  kChecks.dtype("gemm", "b", b, DType::kF32);
  kChecks.dtype("gemm", "c", c, DType::kF32);
  if (a.rank() != 2 || b.rank() != 2 || c.rank() != 2) {
    kChecks.fail("gemm", "a is " + describe(a) + ", b is " + describe(b) + ", c is " + describe(c) +
                             "; all must be 2-D");
  }
  const int64_t m = trans_a ? a.dim(1) : a.dim(0);
  const int64_t k = trans_a ? a.dim(0) : a.dim(1);
  const int64_t kb = trans_b ? b.dim(1) : b.dim(0);
  const int64_t n = trans_b ? b.dim(0) : b.dim(1);
  if (k != kb || c.dim(0) != m || c.dim(1) != n) {
    kChecks.fail("gemm", std::string("op(a) = ") + (trans_a ? "a^T" : "a") + " is (" +
                             std::to_string(m) + ", " + std::to_string(k) +
                             "), op(b) = " + (trans_b ? "b^T" : "b") + " is (" +
                             std::to_string(kb) + ", " + std::to_string(n) + "), c is " +
                             describe(c) + "; a is " + describe(a) + ", b is " + describe(b));
  }
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
  NNKIT_CUBLAS_CHECK(
      cublasSgemm(cublas_, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                  static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha,
                  ptr<float>(b), static_cast<int>(b.dim(1)), ptr<float>(a),
                  static_cast<int>(a.dim(1)), &beta, ptr<float>(c), static_cast<int>(n)));
}

}  // namespace nnkit::cuda
