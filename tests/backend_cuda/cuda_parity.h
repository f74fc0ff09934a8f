// Purpose: shared pieces of the backend/cuda tests: a fixture holding the CPU backend and the CUDA
// backend (both created through the real plugin registry; the CUDA one at precision fp32, so the
// fp32 parity tests compare like with like) that skips every test when no CUDA device or plugin
// is usable, tensors with the same contents on both backends, the CUDA-against-CPU comparisons
// with the per-op tolerances used across the area, and the low-precision (bf16 / f16) helpers:
// host rounding, tensors whose CUDA side is 16-bit, tolerances for results rounded once.
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

// ---- low precision (bf16 / f16) -----------------------------------------------------------
// `value` rounded to nearest, ties to even, in `dtype` (bf16 or f16; f32 returns it), as f32.
float round_to(DType dtype, float value);
std::vector<float> round_to(DType dtype, std::vector<float> values);
// The unit roundoff u of `dtype`: one rounding to nearest changes a value by at most u of it,
// 2^-8 = 3.9e-3 for bf16 (8 significant bits), 2^-11 = 4.9e-4 for f16 (11), 0 for f32.
double unit_roundoff(DType dtype);
// For an output computed in f32 and rounded once to `dtype`, compared with the CPU's f32 result
// on the same rounded inputs: |rounded - cpu| <= u |cuda_f32| + |cuda_f32 - cpu|, so the f32
// reference tolerance plus 1.1 u relative (bf16 4.3e-3, f16 5.4e-4; the 0.1 u covers u times
// the f32 error) and, for f16, half the spacing of its subnormals (2^-25) absolute, where a
// rounding is bounded absolutely instead. f32 returns `f32` unchanged.
Tolerance rounded_once(Tolerance f32, DType dtype);

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
  // Another CUDA backend on device 0 at `precision` (bf16 | fp16 | fp32); throws like SetUp's.
  static std::shared_ptr<Backend> make_cuda_backend(const std::string& precision);

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

  // Low precision: `values` rounded to `dtype` as the CPU's f32 tensor, and as a `dtype` tensor on
  // CUDA converted there from the unrounded values (so every use also exercises convert).
  TensorPair same_rounded(const std::vector<float>& values, const Shape& shape, DType dtype);
  TensorPair same_rounded_random(const Shape& shape, uint64_t seed, DType dtype,
                                 float scale = 1.0f);
  // NaN-filled outputs: f32 on the CPU, `cuda_dtype` on CUDA.
  TensorPair poisoned(const Shape& shape, DType cuda_dtype);
  // A CUDA tensor of any float dtype as f32 values (widened on the device, exactly).
  std::vector<float> cuda_floats(const Tensor& t);
  // The CUDA tensor (any float dtype) against the CPU's f32 tensor under `tol`.
  void expect_rounded_matches_cpu(const TensorPair& p, Tolerance tol, const std::string& what);
  // The CUDA tensor is exactly the CPU's f32 result rounded to the CUDA dtype (ops that are one
  // IEEE operation in f32 followed by the one rounding on store).
  void expect_is_rounded_cpu(const TensorPair& p, const std::string& what);

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
