// Purpose: backend/cpu gemm, a checked front for row-major cblas_sgemm. Owned by backend/cpu.
// OpenBLAS (OpenMP build) threads large products itself and runs single-threaded when called from
// inside our parallel regions (attention uses it that way).
// Products with few rows in op(a) (decoding: one row per sequence) skip OpenBLAS: its sgemm packs
// the whole of b on every call, which for a handful of rows costs more than the product itself.
// Those run as direct dot products / row updates here (fixed order: deterministic).
#include <cblas.h>
#include <omp.h>

#include <algorithm>

#include "checks.h"
#include "cpu_backend.h"

namespace nnkit::cpu {

namespace {

constexpr int64_t kSmallRows = 16;  // op(a) rows at or below which the direct path runs

inline void store(float* out, float s, float alpha, float beta) {
  *out = beta == 0.0f ? alpha * s : alpha * s + beta * *out;
}

// c (m, n) = alpha * a (m, k) @ b^T + beta * c, with b (n, k) row-major: dot products of rows.
// Four rows of b at a time give four independent accumulator chains (one chain is FMA-latency
// bound); the rows are split across threads when the product is large enough to pay for waking
// the team (each c element is still one fixed-order dot product: deterministic).
void small_gemm_nt(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                   const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const int64_t quads = n / 4;
#pragma omp parallel for schedule(static) if (m * n * k > (int64_t{1} << 16))
  for (int64_t q = 0; q < quads; ++q) {
    const int64_t j = 4 * q;
    const float* b0 = b + j * ldb;
    const float* b1 = b0 + ldb;
    const float* b2 = b1 + ldb;
    const float* b3 = b2 + ldb;
    for (int64_t i = 0; i < m; ++i) {
      const float* ai = a + i * lda;
      float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int64_t p = 0; p < k; ++p) {
        const float x = ai[p];
        s0 += x * b0[p];
        s1 += x * b1[p];
        s2 += x * b2[p];
        s3 += x * b3[p];
      }
      float* ci = c + i * ldc + j;
      store(ci, s0, alpha, beta);
      store(ci + 1, s1, alpha, beta);
      store(ci + 2, s2, alpha, beta);
      store(ci + 3, s3, alpha, beta);
    }
  }
  for (int64_t j = 4 * quads; j < n; ++j) {
    const float* bj = b + j * ldb;
    for (int64_t i = 0; i < m; ++i) {
      const float* ai = a + i * lda;
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t p = 0; p < k; ++p) s += ai[p] * bj[p];
      store(c + i * ldc + j, s, alpha, beta);
    }
  }
}

// c (m, n) = alpha * a (m, k) @ b + beta * c, with b (k, n) row-major: row updates.
void small_gemm_nn(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                   const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    if (beta == 0.0f) {
      std::fill(ci, ci + n, 0.0f);
    } else if (beta != 1.0f) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) ci[j] *= beta;
    }
    const float* ai = a + i * lda;
    for (int64_t p = 0; p < k; ++p) {
      const float w = alpha * ai[p];
      const float* bp = b + p * ldb;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) ci[j] += w * bp[j];
    }
  }
}

}  // namespace

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
  if (!trans_a && m <= kSmallRows) {
    if (trans_b) {
      small_gemm_nt(m, n, k, alpha, ptr<float>(a), a.dim(1), ptr<float>(b), b.dim(1), beta, pc, n);
    } else {
      small_gemm_nn(m, n, k, alpha, ptr<float>(a), a.dim(1), ptr<float>(b), b.dim(1), beta, pc, n);
    }
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, ptr<float>(a), static_cast<int>(a.dim(1)), ptr<float>(b),
              static_cast<int>(b.dim(1)), beta, pc, static_cast<int>(n));
}

}  // namespace nnkit::cpu
