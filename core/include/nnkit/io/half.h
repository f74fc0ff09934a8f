// Purpose: bf16 / f16 <-> f32 conversions for loading and saving weights. f32 -> half rounds to
// nearest, ties to even (what PyTorch and the hardware do), overflows to infinity, and keeps NaN a
// (quiet) NaN; half -> f32 is exact.
// Thread-safety: pure functions. Ownership: the bulk converters write n values to caller memory;
// src and dst must not overlap.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

#include "nnkit/export.h"

namespace nnkit {

inline float bf16_to_f32(uint16_t h) {
  return std::bit_cast<float>(uint32_t{h} << 16);
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);  // NaN
  x += 0x7FFFu + ((x >> 16) & 1u);  // round half to even on the dropped 16 bits
  return static_cast<uint16_t>(x >> 16);
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t mant = h & 0x3FFu;
  if (exp == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (mant << 13));  // inf / NaN
  if (exp != 0) return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
  // Zero or subnormal: mant * 2^-24, exact in f32.
  const float magnitude = static_cast<float>(mant) * (1.0f / 16777216.0f);
  return sign ? -magnitude : magnitude;
}

inline uint16_t f32_to_f16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  uint32_t a = x & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u | ((a >> 13) & 0x3FFu));  // NaN
  if (a >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // >= 65520 rounds to inf
  if (a < 0x38800000u) {
    // Below the smallest normal half (2^-14): adding 0.5f aligns the value to a 2^-24 grid, so
    // the FPU's round-to-nearest-even does the rounding; the low bits are then the half mantissa
    // (1024 = smallest normal, which is also the right encoding).
    const float sum = std::bit_cast<float>(a) + 0.5f;
    return static_cast<uint16_t>(sign | (std::bit_cast<uint32_t>(sum) - 0x3F000000u));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped bits half to even; a carry
  // out of the mantissa correctly bumps the exponent.
  a += 0xC8000FFFu + ((a >> 13) & 1u);
  return static_cast<uint16_t>(sign | (a >> 13));
}

// Bulk forms (src and dst must not overlap). Sources are read byte-wise safe: unaligned is fine.
NNKIT_API void bf16_to_f32(const void* src, float* dst, size_t n);
NNKIT_API void f16_to_f32(const void* src, float* dst, size_t n);
NNKIT_API void f32_to_bf16(const void* src, uint16_t* dst, size_t n);
NNKIT_API void f32_to_f16(const void* src, uint16_t* dst, size_t n);

}  // namespace nnkit
