// Purpose: the counter-based normal generator behind Backend::fill_normal. Element i of a fill
// with `seed` depends only on (seed, i), never on thread count, block size or device, so the CPU
// backend and a CUDA backend produce the same initial weights for the same seed.
// Ownership: stateless free functions; safe to call from any thread (and, through
// NNKIT_HOST_DEVICE, from CUDA kernels). No std:: containers or exceptions, so nvcc can compile it
// for the device.
//
// The exact formula (all arithmetic on uint64_t wraps modulo 2^64):
//   mix(x)   = splitmix64 finaliser of x + 0x9E3779B97F4A7C15:
//                z = x + 0x9E3779B97F4A7C15
//                z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
//                z = (z ^ (z >> 27)) * 0x94D049BB133111EB
//                mix(x) = z ^ (z >> 31)
//   key      = mix(seed)
//   w0, w1   = mix(key + 2 i), mix(key + 2 i + 1)
//   u0, u1   = ((w >> 11) + 0.5) * 2^-53          (doubles strictly inside (0, 1))
//   z        = sqrt(-2 ln u0) * cos(2 pi u1)       (Box-Muller, cosine branch; computed in double)
//   value    = (float)(mean + std * z)            (mean and std widened to double first)
// Hashing the seed once (key) keeps nearby seeds from producing shifted copies of one sequence.
// Devices may differ in the last bit of double log/cos, which rounding to float hides.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define NNKIT_HOST_DEVICE __host__ __device__
#else
#define NNKIT_HOST_DEVICE
#endif

namespace nnkit::random {

// splitmix64's output function: a bijective 64-bit mixer with good avalanche.
NNKIT_HOST_DEVICE inline uint64_t mix64(uint64_t x) {
  uint64_t z = x + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The per-fill key; callers may hoist it out of their element loop.
NNKIT_HOST_DEVICE inline uint64_t normal_key(uint64_t seed) {
  return mix64(seed);
}

// A double in (0, 1) from the top 53 bits of `w`; never 0, so log() below is finite.
NNKIT_HOST_DEVICE inline double unit_open(uint64_t w) {
  return (static_cast<double>(w >> 11) + 0.5) * (1.0 / 9007199254740992.0);  // 2^-53
}

// Standard normal for element `index` of the fill keyed by `key` (see the formula above).
NNKIT_HOST_DEVICE inline double standard_normal_at(uint64_t key, uint64_t index) {
  const double u0 = unit_open(mix64(key + 2 * index));
  const double u1 = unit_open(mix64(key + 2 * index + 1));
  const double two_pi = 6.283185307179586476925286766559;
  return sqrt(-2.0 * log(u0)) * cos(two_pi * u1);
}

// The value fill_normal(t, mean, std, seed) stores at element `index`.
NNKIT_HOST_DEVICE inline float normal_at(uint64_t seed, uint64_t index, float mean, float std) {
  return static_cast<float>(static_cast<double>(mean) +
                            static_cast<double>(std) * standard_normal_at(normal_key(seed), index));
}

}  // namespace nnkit::random
