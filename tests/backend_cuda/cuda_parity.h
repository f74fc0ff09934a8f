// Purpose: shared pieces of the backend/cuda tests: a fixture holding the CPU backend and the CUDA
// backend (both created through the real plugin registry) that skips every test when no CUDA
// device or plugin is usable, tensors with the same contents on both backends, and the
// CUDA-against-CPU comparisons with the per-op tolerances used across the area.
// Ownership: owned by the backend/cuda tests; nothing here touches backend internals.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "nnkit/backend.h"
#include "support/test_support.h"

namespace nnkit::test {

// |cuda - cpu| <= atol + rtol * |cpu| elementwise.
struct Tolerance {
  double rtol = 0.0;
  double atol = 0.0;
};

// Per-op tolerances. Both backends round in fp32, so each bound covers both sides' rounding.
// Single IEEE operations (add, scale, scale_rows, fill, gather, topk values) must be exact.
inline constexpr Tolerance kExact{0.0, 0.0};
// axpy: one multiply-add, fused (FMA) on one side and maybe not on the other.
inline constexpr Tolerance kMultiplyAdd{1e-6, 1e-7};
// Row reductions over <= ~300 terms in a different order (row_dot, rmsnorm, scatter-add).
inline constexpr Tolerance kReduction{1e-5, 2e-5};
// Sums of squares (all terms positive, no cancellation): relative only.
inline constexpr Tolerance kPositiveSum{1e-5, 0.0};
// Elementwise ops through exp (swiglu): each side's exp is within ~2 ulp, plus a few roundings.
inline constexpr Tolerance kElementwiseExp{2e-6, 1e-7};
// Row-normalised exp ops (softmax, cross-entropy) add a sum over up to 1000 columns.
inline constexpr Tolerance kRowExp{4e-6, 1e-8};
// Matrix products with K up to ~300 (values of size ~1, results of size ~5).
inline constexpr Tolerance kGemm{1e-4, 1e-4};
// rope: angles in double on the CPU; positions up to 70000.
inline constexpr Tolerance kRope{2e-5, 4e-6};
// Attention forward (out, lse) and backward (dq, dk, dv, which sum over queries and heads).
inline constexpr Tolerance kAttentionForward{2e-5, 4e-6};
inline constexpr Tolerance kAttentionBackward{1e-4, 1e-5};

// One tensor on each backend, holding the same values.
struct TensorPair {
  Tensor cpu;
  Tensor cuda;
};

class CudaParityTest : public ::testing::Test {
 protected:
  // Creates both backends; skips the test with "no CUDA device: <reason>" when the CUDA backend
  // cannot be created (no device, no driver, plugin missing or not loadable).
  void SetUp() override;
  // Surfaces faults and asynchronous errors a test left pending on the CUDA stream.
  void TearDown() override;

  Backend& cpu() { return *cpu_; }
  Backend& cuda() { return *cuda_; }

  // Uniform(-scale, scale) values from `seed` on both backends; `host` receives them.
  TensorPair same_random(const Shape& shape, uint64_t seed, float scale = 1.0f,
                         std::vector<float>* host = nullptr);
  TensorPair same_values(const std::vector<float>& values, const Shape& shape);
  TensorPair same_ints(const std::vector<int32_t>& values, const Shape& shape);
  // f32 outputs filled with NaN on both backends: an element an op fails to write cannot match.
  TensorPair poisoned(const Shape& shape);

  std::vector<float> cpu_values(const TensorPair& p) { return to_vector(cpu(), p.cpu); }
  std::vector<float> cuda_values(const TensorPair& p) { return to_vector(cuda(), p.cuda); }
  // The CUDA tensor's values against the CPU tensor's under `tol`.
  void expect_matches_cpu(const TensorPair& p, Tolerance tol, const std::string& what);
  // i32 tensors: equal element for element.
  void expect_ints_match_cpu(const TensorPair& p, const std::string& what);

  std::shared_ptr<Backend> cpu_;
  std::shared_ptr<Backend> cuda_;
};

// Elementwise comparison under `tol`. An infinity on the CPU side must be matched exactly and a
// NaN on either side never matches. Reports the number of mismatches, the worst one and the first.
void expect_close_to_cpu(const std::vector<float>& cuda, const std::vector<float>& cpu,
                         Tolerance tol, const std::string& what);

// The bit patterns of `values` (so -0 vs 0 and NaN payloads count as differences).
std::vector<uint32_t> float_bits(const std::vector<float>& values);

// Distance in units in the last place between two finite floats (0 when bit-identical).
int64_t ulp_distance(float a, float b);

}  // namespace nnkit::test
