// Purpose: an exp() the compiler can vectorise. glibc's expf is a scalar call, and softmax,
// attention, SwiGLU and cross-entropy spend most of their time in it; this version is branch-free
// (Cody-Waite range reduction + degree-6 polynomial, relative error ~2e-7 over the float range)
// so `#pragma omp simd` loops around it become AVX2 code. That needs -fno-trapping-math (set for
// this plugin in CMakeLists.txt): with trapping comparisons GCC will not if-convert the clamps.
// Ownership: stateless inline functions for backend/cpu's translation units.
#pragma once

#include <bit>
#include <cstdint>

namespace nnkit::cpu {

inline float fast_exp(float x) {
  // Below -87.3 the result underflows to a denormal; flushing to 0 matches what softmax needs and
  // keeps the exponent arithmetic in range. exp(-inf) = 0 falls out of the same clamp.
  const float keep = x < -87.3f ? 0.0f : 1.0f;
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.3f ? 88.3f : x;  // keeps 2^n finite (n <= 127)
  // n = round(x / ln 2) by the 1.5 * 2^23 trick (no SSE4.1 round needed, exact for |n| < 2^22).
  const float shifter = 12582912.0f;
  const float t = x * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  // r = x - n ln2 in two pieces so r keeps full precision.
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.428606765330187045e-06f;
  // exp(r) on |r| <= ln2 / 2: Taylor coefficients to degree 6.
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // 2^n through the exponent bits.
  const float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return p * scale * keep;
}

// silu(x) = x * sigmoid(x).
inline float sigmoid(float x) {
  return 1.0f / (1.0f + fast_exp(-x));
}

}  // namespace nnkit::cpu
