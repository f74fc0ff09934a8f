// Purpose: backend/cpu gemm, a checked front for row-major cblas_sgemm. Owned by backend/cpu.
// OpenBLAS (OpenMP build) threads large products itself and runs single-threaded when called from
// inside our parallel regions (attention uses it that way).
#include <cblas.h>

#include "checks.h"
#include "cpu_backend.h"

namespace nnkit::cpu {

void CpuBackend::gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
                      float alpha, float beta) {
  expect_dtype("gemm", "a", a, DType::kF32);
  expect_dtype("gemm", "b", b, DType::kF32);
  expect_dtype("gemm", "c", c, DType::kF32);
  if (a.rank() != 2 || b.rank() != 2 || c.rank() != 2) {
    shape_fail("gemm", "a is " + describe(a) + ", b is " + describe(b) + ", c is " + describe(c) +
                           "; all must be 2-D");
  }
  const int64_t m = trans_a ? a.dim(1) : a.dim(0);
  const int64_t k = trans_a ? a.dim(0) : a.dim(1);
  const int64_t kb = trans_b ? b.dim(1) : b.dim(0);
  const int64_t n = trans_b ? b.dim(0) : b.dim(1);
  if (k != kb || c.dim(0) != m || c.dim(1) != n) {
    shape_fail("gemm", std::string("op(a) = ") + (trans_a ? "a^T" : "a") + " is (" +
                           std::to_string(m) + ", " + std::to_string(k) +
                           "), op(b) = " + (trans_b ? "b^T" : "b") + " is (" + std::to_string(kb) +
                           ", " + std::to_string(n) + "), c is " + describe(c) + "; a is " +
                           describe(a) + ", b is " + describe(b));
  }
  if (m == 0 || n == 0) return;
  float* pc = ptr<float>(c);
  if (k == 0) {
    // BLAS rejects zero leading dimensions; the product is empty, only beta * c remains.
    const int64_t total = m * n;
    for (int64_t i = 0; i < total; ++i) pc[i] = beta == 0.0f ? 0.0f : beta * pc[i];
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, ptr<float>(a), static_cast<int>(a.dim(1)), ptr<float>(b),
              static_cast<int>(b.dim(1)), beta, pc, static_cast<int>(n));
}

}  // namespace nnkit::cpu
