// Purpose: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011),
// the counter-based generator behind Backend::sample_rows. A draw depends only on (seed, row,
// step), never on threads, launch shape or device, so a seed reproduces the same tokens on every
// run and the CPU and CUDA backends draw the same numbers.
// Ownership: stateless free functions; callable from any thread and, through NNKIT_HOST_DEVICE,
// from CUDA kernels (no std:: containers, no exceptions).
//
// The exact formula (uint32 arithmetic wraps modulo 2^32):
//   round(c, k): (hi0, lo0) = 0xD2511F53 * c0 (64-bit product split), (hi1, lo1) = 0xCD9E8D57 * c2
//                c' = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
//   philox(c, k): 10 rounds; before every round but the first, k0 += 0x9E3779B9, k1 += 0xBB67AE85
//   the sampling uniform of (seed, row, step):
//     k = (low 32 bits of seed, high 32 bits of seed)
//     c = (row, low 32 bits of step, high 32 bits of step, 0)     (step as a two's-complement u64)
//     (x0, x1, _, _) = philox(c, k);  u = (((x0 << 32) | x1) >> 11) * 2^-53, a double in [0, 1)
#pragma once

#include <stdint.h>

#include "nnkit/random.h"  // NNKIT_HOST_DEVICE

namespace nnkit::random {

struct Philox4x32 {
  uint32_t v[4];
};

NNKIT_HOST_DEVICE inline Philox4x32 philox4x32_10(Philox4x32 c, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c.v[0];
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c.v[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c = Philox4x32{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
  }
  return c;
}

// The uniform in [0, 1) that sample_rows draws for `row` at `step` under `seed` (formula above).
NNKIT_HOST_DEVICE inline double sampling_uniform(uint64_t seed, int64_t row, int64_t step) {
  const uint64_t s = static_cast<uint64_t>(step);
  const Philox4x32 out =
      philox4x32_10(Philox4x32{{static_cast<uint32_t>(row), static_cast<uint32_t>(s),
                                static_cast<uint32_t>(s >> 32), 0u}},
                    static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const uint64_t bits = (static_cast<uint64_t>(out.v[0]) << 32) | out.v[1];
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);  // 2^-53
}

}  // namespace nnkit::random
