// Purpose: backend/cpu fills and elementwise ops (fill, fill_normal, add, axpy, scale, scale_rows,
// row_dot, sum_squares). Owned by backend/cpu.
// These are memory-bound: each is one pass, vectorised, split across threads only when the tensor
// is large enough to pay for the parallel region.
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "checks.h"
#include "cpu_backend.h"
#include "nnkit/io/half.h"
#include "nnkit/random.h"

namespace nnkit::cpu {

namespace {

// Round-to-nearest-even float -> bf16 bits (zeros() reaches fill with any dtype).
uint16_t to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if (std::isnan(value)) return 0x7FC0;
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

template <typename T>
void fill_typed(T* p, int64_t n, T value) {
#pragma omp parallel for simd if (n > 4 * kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) p[i] = value;
}

}  // namespace

void CpuBackend::fill(const Tensor& t, float value) {
  if (!t.defined() || !t.device().is_host()) {
    shape_fail("fill", "t is " + describe(t) + "; expected a host tensor");
  }
  const int64_t n = t.numel();
  switch (t.dtype()) {
    case DType::kF32:
      fill_typed(ptr<float>(t), n, value);
      return;
    case DType::kI32:
      fill_typed(ptr<int32_t>(t), n, static_cast<int32_t>(value));
      return;
    case DType::kI64:
      fill_typed(ptr<int64_t>(t), n, static_cast<int64_t>(value));
      return;
    case DType::kU8:
      fill_typed(ptr<uint8_t>(t), n, static_cast<uint8_t>(value));
      return;
    case DType::kBF16:
      fill_typed(ptr<uint16_t>(t), n, to_bf16(value));
      return;
    case DType::kF16:
      if (value != 0.0f) shape_fail("fill", "f16 tensors can only be filled with 0 on the CPU");
      fill_typed(ptr<uint16_t>(t), n, uint16_t{0});
      return;
  }
}

void CpuBackend::fill_normal(const Tensor& t, float mean, float std, uint64_t seed) {
  expect_dtype("fill_normal", "t", t, DType::kF32);
  float* p = ptr<float>(t);
  const int64_t n = t.numel();
  const uint64_t key = random::normal_key(seed);
  const double m = mean, s = std;
#pragma omp parallel for if (n > kParallelGrain / 4) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    p[i] = static_cast<float>(m + s * random::standard_normal_at(key, static_cast<uint64_t>(i)));
  }
}

void CpuBackend::add(const Tensor& out, const Tensor& a, const Tensor& b) {
  expect_dtype("add", "out", out, DType::kF32);
  expect_dtype("add", "a", a, DType::kF32);
  expect_dtype("add", "b", b, DType::kF32);
  expect_same_shape("add", "a", a, "b", b);
  expect_same_shape("add", "a", a, "out", out);
  // No __restrict: out may alias a or b, and an elementwise pass is safe under that aliasing.
  float* o = ptr<float>(out);
  const float* x = ptr<float>(a);
  const float* y = ptr<float>(b);
  const int64_t n = out.numel();
#pragma omp parallel for simd if (n > 4 * kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) o[i] = x[i] + y[i];
}

void CpuBackend::axpy(const Tensor& y, float alpha, const Tensor& x) {
  expect_dtype("axpy", "y", y, DType::kF32);
  expect_dtype("axpy", "x", x, DType::kF32);
  expect_same_shape("axpy", "y", y, "x", x);
  float* py = ptr<float>(y);
  const float* px = ptr<float>(x);
  const int64_t n = y.numel();
#pragma omp parallel for simd if (n > 4 * kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) py[i] += alpha * px[i];
}

void CpuBackend::scale(const Tensor& t, float alpha) {
  expect_dtype("scale", "t", t, DType::kF32);
  float* p = ptr<float>(t);
  const int64_t n = t.numel();
#pragma omp parallel for simd if (n > 4 * kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) p[i] *= alpha;
}

void CpuBackend::scale_rows(const Tensor& x, const Tensor& w) {
  const RowShape s = expect_rows("scale_rows", "x", x, DType::kF32);
  expect_tensor("scale_rows", "w", w, DType::kF32, {s.rows});
  float* px = ptr<float>(x);
  const float* pw = ptr<float>(w);
  const int64_t rows = s.rows, cols = s.cols;
#pragma omp parallel for if (rows * cols > 4 * kParallelGrain) schedule(static)
  for (int64_t n = 0; n < rows; ++n) {
    float* row = px + n * cols;
    const float f = pw[n];
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) row[c] *= f;
  }
}

void CpuBackend::row_dot(const Tensor& a, const Tensor& b, const Tensor& out) {
  const RowShape s = expect_rows("row_dot", "a", a, DType::kF32);
  expect_dtype("row_dot", "b", b, DType::kF32);
  expect_same_shape("row_dot", "a", a, "b", b);
  expect_tensor("row_dot", "out", out, DType::kF32, {s.rows});
  const float* pa = ptr<float>(a);
  const float* pb = ptr<float>(b);
  float* po = ptr<float>(out);
  const int64_t rows = s.rows, cols = s.cols;
#pragma omp parallel for if (rows * cols > 4 * kParallelGrain) schedule(static)
  for (int64_t n = 0; n < rows; ++n) {
    const float* ra = pa + n * cols;
    const float* rb = pb + n * cols;
    double acc = 0.0;  // double: the rows feed gradients where cancellation is common
#pragma omp simd reduction(+ : acc)
    for (int64_t c = 0; c < cols; ++c) acc += static_cast<double>(ra[c]) * rb[c];
    po[n] = static_cast<float>(acc);
  }
}

void CpuBackend::sum_squares(const Tensor& x, const Tensor& out) {
  expect_dtype("sum_squares", "x", x, DType::kF32);
  expect_dtype("sum_squares", "out", out, DType::kF32);
  if (out.numel() != 1) shape_fail("sum_squares", "out is " + describe(out) + "; expected (1)");
  const float* px = ptr<float>(x);
  const int64_t n = x.numel();
  // Fixed chunks summed in order: the result does not depend on the thread count.
  constexpr int64_t kChunk = 1 << 15;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
#pragma omp parallel for if (chunks > 1) schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk;
    const int64_t end = begin + kChunk < n ? begin + kChunk : n;
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = begin; i < end; ++i) acc += static_cast<double>(px[i]) * px[i];
    partial[static_cast<size_t>(c)] = acc;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  float* po = ptr<float>(out);
  po[0] = static_cast<float>(static_cast<double>(po[0]) + total);
}

}  // namespace nnkit::cpu

namespace nnkit::cpu {

void CpuBackend::convert(const Tensor& dst, const Tensor& src) {
  // The CPU computes in f32; conversions exist so that weights and test data in bf16/f16 can be
  // widened (and f32 narrowed) with the same op the CUDA backend uses.
  for (const auto& [name, t] : {std::pair{"dst", &dst}, std::pair{"src", &src}}) {
    if (!t->defined() || !t->device().is_host() ||
        (t->dtype() != DType::kF32 && t->dtype() != DType::kBF16 && t->dtype() != DType::kF16)) {
      shape_fail("convert", std::string(name) + " is " + describe(*t) +
                                "; expected a host tensor of dtype f32, bf16 or f16");
    }
  }
  if (dst.numel() != src.numel()) {
    shape_fail("convert", "dst is " + describe(dst) + " and src is " + describe(src) +
                              "; expected the same number of elements");
  }
  const auto n = static_cast<size_t>(src.numel());
  if (n == 0) return;
  if (dst.dtype() == src.dtype()) {
    if (dst.raw() != src.raw()) std::memcpy(dst.raw(), src.raw(), dst.nbytes());
    return;
  }
  // Through f32: half -> f32 is exact, so one rounding happens at most.
  std::vector<float> wide;
  const float* from = nullptr;
  if (src.dtype() == DType::kF32) {
    from = static_cast<const float*>(src.raw());
  } else {
    wide.resize(dst.dtype() == DType::kF32 ? 0 : n);
    float* into = dst.dtype() == DType::kF32 ? static_cast<float*>(dst.raw()) : wide.data();
    if (src.dtype() == DType::kBF16)
      bf16_to_f32(src.raw(), into, n);
    else
      f16_to_f32(src.raw(), into, n);
    if (dst.dtype() == DType::kF32) return;
    from = wide.data();
  }
  if (dst.dtype() == DType::kBF16)
    f32_to_bf16(from, static_cast<uint16_t*>(dst.raw()), n);
  else
    f32_to_f16(from, static_cast<uint16_t*>(dst.raw()), n);
}

}  // namespace nnkit::cpu
