// Purpose: backend/cpu row gather / scatter-add (embeddings, MoE dispatch and combine) and the
// softmax cross-entropy loss. Owned by backend/cpu.
// Indices are validated before any work so a bad token id is an error, not a stray write.
// scatter_add_rows must add rows in order of n (determinism); it splits the *columns* across
// threads, so each destination element still receives its updates in order.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "checks.h"
#include "cpu_backend.h"
#include "fast_math.h"

namespace nnkit::cpu {

namespace {

// Which out-of-table values an index tensor may hold.
enum class Skip { kMinusOne, kAnyNegative };

// Every index is a row of a table with `rows` rows, or a skip value (-1 for gather/scatter; any
// negative target for the losses, so HF's -100 works).
void check_indices(const char* op, const Tensor& index, int64_t rows, Skip skip) {
  const int32_t* p = ptr<int32_t>(index);
  const int64_t n = index.numel();
  for (int64_t i = 0; i < n; ++i) {
    const bool skipped = skip == Skip::kMinusOne ? p[i] == -1 : p[i] < 0;
    if (!skipped && (p[i] < 0 || p[i] >= rows)) {
      shape_fail(op, "index[" + std::to_string(i) + "] = " + std::to_string(p[i]) +
                         " is outside [0, " + std::to_string(rows) + ")" +
                         (skip == Skip::kMinusOne ? " and is not -1 (skip)" : ""));
    }
  }
}

}  // namespace

void CpuBackend::gather_rows(const Tensor& src, const Tensor& index, const Tensor& dst) {
  const RowShape s = expect_rows("gather_rows", "src", src, DType::kF32);
  expect_dtype("gather_rows", "index", index, DType::kI32);
  if (index.rank() != 1) {
    shape_fail("gather_rows", "index is " + describe(index) + "; expected (N)");
  }
  expect_tensor("gather_rows", "dst", dst, DType::kF32, {index.dim(0), s.cols});
  check_indices("gather_rows", index, s.rows, Skip::kMinusOne);
  const float* ps = ptr<float>(src);
  const int32_t* pi = ptr<int32_t>(index);
  float* pd = ptr<float>(dst);
  const int64_t n = index.dim(0), cols = s.cols;
  const size_t bytes = static_cast<size_t>(cols) * sizeof(float);
#pragma omp parallel for if (n * cols > 4 * kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    if (pi[i] < 0) {
      std::memset(pd + i * cols, 0, bytes);
    } else {
      std::memcpy(pd + i * cols, ps + static_cast<int64_t>(pi[i]) * cols, bytes);
    }
  }
}

void CpuBackend::scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& weight,
                                  const Tensor& dst) {
  const RowShape s = expect_rows("scatter_add_rows", "src", src, DType::kF32);
  const RowShape d = expect_rows("scatter_add_rows", "dst", dst, DType::kF32);
  expect_tensor("scatter_add_rows", "index", index, DType::kI32, {s.rows});
  if (src.rank() != 2 || dst.rank() != 2 || d.cols != s.cols) {
    shape_fail("scatter_add_rows", "src is " + describe(src) + " and dst is " + describe(dst) +
                                       "; expected (N, C) and (R, C)");
  }
  if (weight.defined()) expect_tensor("scatter_add_rows", "weight", weight, DType::kF32, {s.rows});
  check_indices("scatter_add_rows", index, d.rows, Skip::kMinusOne);
  const float* ps = ptr<float>(src);
  const int32_t* pi = ptr<int32_t>(index);
  const float* pw = weight.defined() ? ptr<float>(weight) : nullptr;
  float* pd = ptr<float>(dst);
  const int64_t n = s.rows, cols = s.cols;
#pragma omp parallel if (n * cols > 4 * kParallelGrain)
  {
    // Columns split in 16-float (cache line) multiples so threads never share a line.
    const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t lines = (cols + 15) / 16;
    const int64_t c0 = std::min(cols, lines * tid / nth * 16);
    const int64_t c1 = std::min(cols, lines * (tid + 1) / nth * 16);
    for (int64_t i = 0; i < n; ++i) {
      if (pi[i] < 0) continue;
      const float w = pw != nullptr ? pw[i] : 1.0f;
      const float* sr = ps + i * cols;
      float* dr = pd + static_cast<int64_t>(pi[i]) * cols;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) dr[c] += w * sr[c];
    }
  }
}

void CpuBackend::moe_combine_rows(const Tensor& src, const Tensor& token, const Tensor& slot,
                                  const Tensor& gate, const Tensor& dst) {
  const char* op = "moe_combine_rows";
  const RowShape s = expect_rows(op, "src", src, DType::kF32);
  expect_tensor(op, "slot", slot, DType::kI32, {s.rows});
  if (gate.rank() != 1 || gate.dtype() != DType::kF32) {
    shape_fail(op, "gate is " + describe(gate) + "; expected (S) f32, the router's flat gates");
  }
  check_indices(op, slot, gate.numel(), Skip::kMinusOne);
  // The composition it is defined as (the sums run in the same order).
  Tensor weights = empty({s.rows});
  const int32_t* ps = ptr<int32_t>(slot);
  const float* pg = ptr<float>(gate);
  for (int64_t n = 0; n < s.rows; ++n) ptr<float>(weights)[n] = ps[n] >= 0 ? pg[ps[n]] : 0.0f;
  fill(dst, 0.0f);
  scatter_add_rows(src, token, weights, dst);
}

void CpuBackend::cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                       const Tensor& losses) {
  const RowShape s = expect_rows("cross_entropy_forward", "logits", logits, DType::kF32);
  expect_tensor("cross_entropy_forward", "targets", targets, DType::kI32, {s.rows});
  expect_tensor("cross_entropy_forward", "losses", losses, DType::kF32, {s.rows});
  check_indices("cross_entropy_forward", targets, s.cols, Skip::kAnyNegative);
  const float* px = ptr<float>(logits);
  const int32_t* pt = ptr<int32_t>(targets);
  float* pl = ptr<float>(losses);
  const int64_t rows = s.rows, cols = s.cols;
#pragma omp parallel for if (rows * cols > kParallelGrain) schedule(static)
  for (int64_t n = 0; n < rows; ++n) {
    if (pt[n] < 0) {
      pl[n] = 0.0f;
      continue;
    }
    const float* xr = px + n * cols;
    float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t c = 0; c < cols; ++c) mx = std::max(mx, xr[c]);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < cols; ++c) sum += fast_exp(xr[c] - mx);
    // -log softmax[t] = log sum exp(x - max) - (x_t - max).
    pl[n] = std::log(sum) - (xr[pt[n]] - mx);
  }
}

void CpuBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets, float scale,
                                        const Tensor& dlogits) {
  const RowShape s = expect_rows("cross_entropy_backward", "logits", logits, DType::kF32);
  expect_tensor("cross_entropy_backward", "targets", targets, DType::kI32, {s.rows});
  expect_dtype("cross_entropy_backward", "dlogits", dlogits, DType::kF32);
  expect_same_shape("cross_entropy_backward", "logits", logits, "dlogits", dlogits);
  check_indices("cross_entropy_backward", targets, s.cols, Skip::kAnyNegative);
  const float* px = ptr<float>(logits);
  const int32_t* pt = ptr<int32_t>(targets);
  float* pd = ptr<float>(dlogits);
  const int64_t rows = s.rows, cols = s.cols;
#pragma omp parallel for if (rows * cols > kParallelGrain) schedule(static)
  for (int64_t n = 0; n < rows; ++n) {
    const float* xr = px + n * cols;
    float* dr = pd + n * cols;  // may alias xr (in-place backward): max and sum come first
    if (pt[n] < 0) {
      std::fill(dr, dr + cols, 0.0f);
      continue;
    }
    float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t c = 0; c < cols; ++c) mx = std::max(mx, xr[c]);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < cols; ++c) sum += fast_exp(xr[c] - mx);
    const float k = scale / sum;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) dr[c] = k * fast_exp(xr[c] - mx);
    dr[pt[n]] -= scale;
  }
}

}  // namespace nnkit::cpu
