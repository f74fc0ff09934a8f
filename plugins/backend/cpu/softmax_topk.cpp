// Purpose: backend/cpu row softmax (forward, backward), row logsumexp and row top-k. Owned by
// backend/cpu.
// Softmax subtracts the row max before exponentiating so large logits do not overflow.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "checks.h"
#include "cpu_backend.h"
#include "fast_math.h"

namespace nnkit::cpu {

void CpuBackend::softmax_rows(const Tensor& x, const Tensor& y) {
  const RowShape s = expect_rows("softmax_rows", "x", x, DType::kF32);
  expect_dtype("softmax_rows", "y", y, DType::kF32);
  expect_same_shape("softmax_rows", "x", x, "y", y);
  const float* px = ptr<float>(x);
  float* py = ptr<float>(y);
  const int64_t rows = s.rows, cols = s.cols;
#pragma omp parallel for if (rows * cols > kParallelGrain) schedule(static)
  for (int64_t n = 0; n < rows; ++n) {
    const float* xr = px + n * cols;
    float* yr = py + n * cols;  // may alias xr: each element is read before it is written
    float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t c = 0; c < cols; ++c) mx = std::max(mx, xr[c]);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < cols; ++c) {
      const float e = fast_exp(xr[c] - mx);
      yr[c] = e;
      sum += e;
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) yr[c] *= inv;
  }
}

// Max subtracted, the sum of exponentials in double: the router z-loss squares this value, so
// it is kept as exact as the f32 inputs allow.
void CpuBackend::logsumexp_rows(const Tensor& x, const Tensor& out) {
  const RowShape s = expect_rows("logsumexp_rows", "x", x, DType::kF32);
  expect_tensor("logsumexp_rows", "out", out, DType::kF32, {s.rows});
  const float* px = ptr<float>(x);
  float* po = ptr<float>(out);
  const int64_t rows = s.rows, cols = s.cols;
#pragma omp parallel for if (rows * cols > kParallelGrain) schedule(static)
  for (int64_t n = 0; n < rows; ++n) {
    const float* xr = px + n * cols;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t c = 0; c < cols; ++c) mx = std::max(mx, xr[c]);
    if (!std::isfinite(mx)) {
      po[n] = mx;  // all -inf (log 0), or a +inf/NaN entry that the sum would carry anyway
      continue;
    }
    double sum = 0.0;
    for (int64_t c = 0; c < cols; ++c) sum += std::exp(static_cast<double>(xr[c] - mx));
    po[n] = static_cast<float>(static_cast<double>(mx) + std::log(sum));
  }
}

void CpuBackend::softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  const RowShape s = expect_rows("softmax_backward", "y", y, DType::kF32);
  expect_dtype("softmax_backward", "dy", dy, DType::kF32);
  expect_dtype("softmax_backward", "dx", dx, DType::kF32);
  expect_same_shape("softmax_backward", "y", y, "dy", dy);
  expect_same_shape("softmax_backward", "y", y, "dx", dx);
  const float* py = ptr<float>(y);
  const float* pdy = ptr<float>(dy);
  float* pdx = ptr<float>(dx);
  const int64_t rows = s.rows, cols = s.cols;
#pragma omp parallel for if (rows * cols > kParallelGrain) schedule(static)
  for (int64_t n = 0; n < rows; ++n) {
    const float* yr = py + n * cols;
    const float* dyr = pdy + n * cols;
    float* dxr = pdx + n * cols;  // may alias dyr: the dot is finished before any write
    double dot = 0.0;
#pragma omp simd reduction(+ : dot)
    for (int64_t c = 0; c < cols; ++c) dot += static_cast<double>(yr[c]) * dyr[c];
    const float d = static_cast<float>(dot);
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) dxr[c] = yr[c] * (dyr[c] - d);
  }
}

namespace {

// Whether (va, ia) ranks before (vb, ib): larger value first, then lower index.
inline bool ranks_before(float va, int32_t ia, float vb, int32_t ib) {
  return va > vb || (va == vb && ia < ib);
}

}  // namespace

void CpuBackend::topk_rows(const Tensor& x, int64_t k, const Tensor& values,
                           const Tensor& indices) {
  const RowShape s = expect_rows("topk_rows", "x", x, DType::kF32);
  if (k < 0 || k > s.cols) {
    shape_fail("topk_rows", "k = " + std::to_string(k) + " is outside [0, " +
                                std::to_string(s.cols) + "] for x " + describe(x));
  }
  expect_tensor("topk_rows", "values", values, DType::kF32, {s.rows, k});
  expect_tensor("topk_rows", "indices", indices, DType::kI32, {s.rows, k});
  const float* px = ptr<float>(x);
  float* pv = ptr<float>(values);
  int32_t* pi = ptr<int32_t>(indices);
  const int64_t rows = s.rows, cols = s.cols;
  // Small k (MoE routing: k = 1..8): insertion into a sorted list of k, O(C k) per row and no
  // memory. Large k (sampling): partial_sort of a per-thread index buffer.
  constexpr int64_t kInsertionMax = 32;
#pragma omp parallel if (rows * cols > kParallelGrain)
  {
    std::vector<int32_t> order;
    if (k > kInsertionMax) order.resize(static_cast<size_t>(cols));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < rows; ++n) {
      const float* xr = px + n * cols;
      float* vr = pv + n * k;
      int32_t* ir = pi + n * k;
      if (k == 0) continue;
      if (k <= kInsertionMax) {
        int64_t filled = 0;
        for (int64_t c = 0; c < cols; ++c) {
          const float v = xr[c];
          const int32_t idx = static_cast<int32_t>(c);
          // Scanning in index order, an equal value never displaces an earlier one.
          if (filled == k && !ranks_before(v, idx, vr[k - 1], ir[k - 1])) continue;
          int64_t pos = filled < k ? filled++ : k - 1;
          while (pos > 0 && ranks_before(v, idx, vr[pos - 1], ir[pos - 1])) {
            vr[pos] = vr[pos - 1];
            ir[pos] = ir[pos - 1];
            --pos;
          }
          vr[pos] = v;
          ir[pos] = idx;
        }
      } else {
        for (int64_t c = 0; c < cols; ++c) order[static_cast<size_t>(c)] = static_cast<int32_t>(c);
        std::partial_sort(order.begin(), order.begin() + k, order.end(),
                          [xr](int32_t a, int32_t b) { return ranks_before(xr[a], a, xr[b], b); });
        for (int64_t j = 0; j < k; ++j) {
          ir[j] = order[static_cast<size_t>(j)];
          vr[j] = xr[ir[j]];
        }
      }
    }
  }
}

}  // namespace nnkit::cpu

namespace nnkit::cpu {

void CpuBackend::scatter_add_columns(const Tensor& src, const Tensor& index, const Tensor& dst) {
  const char* op = "scatter_add_columns";
  const RowShape s = expect_rows(op, "src", src, DType::kF32);
  const RowShape i = expect_rows(op, "index", index, DType::kI32);
  const RowShape d = expect_rows(op, "dst", dst, DType::kF32);
  if (i.rows != s.rows || i.cols != s.cols || d.rows != s.rows) {
    shape_fail(op, "src is " + describe(src) + ", index " + describe(index) + ", dst " +
                       describe(dst) + "; expected src and index (N, k) and dst (N, C)");
  }
  const float* ps = ptr<float>(src);
  const int32_t* pi = ptr<int32_t>(index);
  float* pd = ptr<float>(dst);
  for (int64_t n = 0; n < s.rows; ++n) {
    for (int64_t j = 0; j < s.cols; ++j) {
      const int32_t column = pi[n * s.cols + j];
      if (column < 0) continue;
      if (column >= d.cols) {
        shape_fail(op, "index " + std::to_string(column) + " at (" + std::to_string(n) + ", " +
                           std::to_string(j) + ") is outside [0, " + std::to_string(d.cols) +
                           ") columns of dst");
      }
      pd[n * d.cols + column] += ps[n * s.cols + j];
    }
  }
}

}  // namespace nnkit::cpu
