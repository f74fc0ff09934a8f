// Purpose: backend/cpu rotary position embedding (HF rotate-half layout), forward and inverse.
// Owned by backend/cpu.
// Angles are pos * base^(-2i/D), evaluated in double: in float, pos * freq at pos ~ 2^18 loses
// whole radians. Training re-uses the same positions every step, so cos/sin live in a per-backend
// table grown on demand; positions past kMaxCachedPositions are evaluated per row instead.
#include <omp.h>

#include <cmath>
#include <vector>

#include "checks.h"
#include "cpu_backend.h"

namespace nnkit::cpu {

namespace {

constexpr int64_t kMaxCachedPositions = 1 << 16;

// Rotates the H heads of one row by the angles whose cos/sin are given (half = D/2 of each).
inline void rotate_row(float* row, int64_t n_heads, int64_t head_dim, const float* cs,
                       const float* sn, float sign) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    float* x1 = row + h * head_dim;
    float* x2 = x1 + half;
#pragma omp simd
    for (int64_t i = 0; i < half; ++i) {
      const float c = cs[i], s = sign * sn[i];
      const float a = x1[i], b = x2[i];
      x1[i] = a * c - b * s;
      x2[i] = b * c + a * s;
    }
  }
}

}  // namespace

const CpuBackend::RopeTable* CpuBackend::rope_table(int64_t head_dim, float base,
                                                    int64_t max_position) {
  if (max_position >= kMaxCachedPositions) return nullptr;
  RopeTable* table = nullptr;
  for (RopeTable& t : rope_tables_) {
    if (t.head_dim == head_dim && t.base == base) table = &t;
  }
  if (table != nullptr && table->positions > max_position) return table;
  if (table == nullptr) {
    rope_tables_.push_back(RopeTable{head_dim, base, 0, {}, {}});
    table = &rope_tables_.back();
  }
  // Grow to a power of two (at least 256) so a slowly rising position costs few rebuilds.
  int64_t positions = 256;
  while (positions <= max_position) positions *= 2;
  const int64_t half = head_dim / 2;
  table->positions = positions;
  table->cos.resize(static_cast<size_t>(positions * half));
  table->sin.resize(static_cast<size_t>(positions * half));
  std::vector<double> freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    freq[size_t(i)] = std::pow(static_cast<double>(base), -2.0 * double(i) / double(head_dim));
  }
  float* pc = table->cos.data();
  float* ps = table->sin.data();
#pragma omp parallel for if (positions * half > kParallelGrain) schedule(static)
  for (int64_t p = 0; p < positions; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(p) * freq[size_t(i)];
      pc[p * half + i] = static_cast<float>(std::cos(angle));
      ps[p * half + i] = static_cast<float>(std::sin(angle));
    }
  }
  return table;
}

void CpuBackend::rope(const Tensor& x, const Tensor& positions, int64_t n_heads, int64_t head_dim,
                      float base, bool inverse) {
  expect_dtype("rope", "x", x, DType::kF32);
  if (n_heads <= 0 || head_dim <= 0 || head_dim % 2 != 0) {
    shape_fail("rope", "n_heads = " + std::to_string(n_heads) + ", head_dim = " +
                           std::to_string(head_dim) + "; need positive heads and an even head_dim");
  }
  if (x.rank() != 2 || x.dim(1) != n_heads * head_dim) {
    shape_fail("rope", "x is " + describe(x) + "; expected (N, " + std::to_string(n_heads) + " * " +
                           std::to_string(head_dim) + ")");
  }
  const int64_t rows = x.dim(0);
  expect_tensor("rope", "positions", positions, DType::kI32, {rows});
  float* px = ptr<float>(x);
  const int32_t* pp = ptr<int32_t>(positions);
  const int64_t width = n_heads * head_dim, half = head_dim / 2;
  const float sign = inverse ? -1.0f : 1.0f;

  int64_t max_position = 0;
  bool negative = false;
  for (int64_t n = 0; n < rows; ++n) {
    max_position = std::max<int64_t>(max_position, pp[n]);
    negative = negative || pp[n] < 0;
  }
  const RopeTable* table = negative ? nullptr : rope_table(head_dim, base, max_position);
  if (table != nullptr) {
    const float* tc = table->cos.data();
    const float* ts = table->sin.data();
#pragma omp parallel for if (rows * width > kParallelGrain) schedule(static)
    for (int64_t n = 0; n < rows; ++n) {
      rotate_row(px + n * width, n_heads, head_dim, tc + pp[n] * half, ts + pp[n] * half, sign);
    }
    return;
  }

  // Uncached positions: per-thread angle buffers, filled once per row and shared by its heads.
  std::vector<double> freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    freq[size_t(i)] = std::pow(static_cast<double>(base), -2.0 * double(i) / double(head_dim));
  }
#pragma omp parallel if (rows * width > kParallelGrain)
  {
    std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < rows; ++n) {
      for (int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(pp[n]) * freq[size_t(i)];
        cs[size_t(i)] = static_cast<float>(std::cos(angle));
        sn[size_t(i)] = static_cast<float>(std::sin(angle));
      }
      rotate_row(px + n * width, n_heads, head_dim, cs.data(), sn.data(), sign);
    }
  }
}

}  // namespace nnkit::cpu
