// Purpose: backend/cpu gemm, a checked front for row-major cblas_sgemm. Owned by backend/cpu.
// Large products are split into one slab of c per thread, each a single-threaded OpenBLAS call
// (OpenBLAS, OpenMP build, runs single-threaded inside an active parallel region; attention
// calls it that way too).
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

// One single-threaded OpenBLAS call per thread on its own slab of c (rows when c is at least as
// tall as wide, columns otherwise). OpenBLAS's own threading of these small products (a few
// hundred rows or columns) splits every call into panels that the threads exchange through
// spin-then-yield flags; measured in training, that synchronisation and the cold start of each
// call cost about half of the gemm time. Slabs share nothing, so there is no waiting inside a
// call, and each c element is still computed by one fixed-order call: deterministic for a given
// thread count. OpenBLAS runs single-threaded when called inside an active parallel region.
void blocked_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                   const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                   int64_t ldc) {
  const auto call = [&](int64_t rows, int64_t cols, const float* pa, const float* pb, float* pc) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(rows), static_cast<int>(cols),
                static_cast<int>(k), alpha, pa, static_cast<int>(lda), pb, static_cast<int>(ldb),
                beta, pc, static_cast<int>(ldc));
  };
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  constexpr int64_t kAlign = 16;  // slab edges on micro-kernel multiples
  const bool split_rows = m >= n;
  const int64_t extent = split_rows ? m : n;
  const int64_t slabs = std::min<int64_t>(threads, std::max<int64_t>(1, extent / (2 * kAlign)));
  if (slabs <= 1 || m * n * k < (int64_t{1} << 18)) {
    call(m, n, a, b, c);
    return;
  }
#pragma omp parallel for schedule(static, 1) num_threads(static_cast <int>(slabs))
  for (int64_t s = 0; s < slabs; ++s) {
    const int64_t begin = (extent * s / slabs) / kAlign * kAlign;
    const int64_t end = s + 1 == slabs ? extent : (extent * (s + 1) / slabs) / kAlign * kAlign;
    if (end <= begin) continue;
    if (split_rows) {
      call(end - begin, n, trans_a ? a + begin : a + begin * lda, b, c + begin * ldc);
    } else {
      call(m, end - begin, a, trans_b ? b + begin * ldb : b + begin, c + begin);
    }
  }
}

}  // namespace

void CpuBackend::gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
                      float alpha, float beta) {
  const auto [m, n, k] = kChecks.gemm(a, trans_a, b, trans_b, c);
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
  blocked_sgemm(trans_a, trans_b, m, n, k, alpha, ptr<float>(a), a.dim(1), ptr<float>(b), b.dim(1),
                beta, pc, n);
}

}  // namespace nnkit::cpu
