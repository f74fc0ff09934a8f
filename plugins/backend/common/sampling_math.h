// Purpose: the arithmetic of the device sampling ops (Backend::top_p_filter_rows,
// min_p_filter_rows, sample_rows, ...) shared by backend/cpu (sampling.cpp) and backend/cuda
// (sampling.cu), so that both backends make the same decisions on the same logits, bit for bit: the
// ranking key, a softmax weight built from IEEE operations only (no libm, whose exp differs by an
// ulp between glibc and CUDA), the fixed reduction layout, and the decisions taken from the sums.
// Ownership: stateless inline functions, host and device (NNKIT_HOST_DEVICE). Compiled into each
// backend plugin, not part of the installed SDK.
//
// Why each piece is here:
// - Products and sums go through mul_rn/add_rn/fma_rn: nvcc would otherwise contract a * b + c
//   into one FMA where the host compiler does not (or the other way round); sampling.cpp is also
//   compiled with -ffp-contract=off.
// - Sums over a row use kLanes lanes: lane t adds the elements t, t + kLanes, t + 2 kLanes, ... in
//   order (one CUDA thread each); the CPU keeps kLanes accumulators and adds in the same order.
//   Lanes are then combined by a fixed tree (lane_tree) or sequentially, as each op documents.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "nnkit/philox.h"

namespace nnkit::sampling {

// Lanes of a row reduction: one CUDA thread block of this many threads per row.
inline constexpr int kLanes = 1024;
// The radix selection of top-k / top-p walks the 32-bit ranking key 4 bits at a time.
inline constexpr int kDigitBits = 4;
inline constexpr int kBins = 1 << kDigitBits;
inline constexpr int kPasses = 32 / kDigitBits;
// top-p keeps the smallest prefix whose mass reaches (p - kTopPTolerance) of the total, like the
// host decode/top_p: float logits make an exactly-p set sum to p - 1e-8.
inline constexpr double kTopPTolerance = 1e-6;

NNKIT_HOST_DEVICE inline double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
NNKIT_HOST_DEVICE inline double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
NNKIT_HOST_DEVICE inline double fma_rn(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(a, b, c);
#else
  return fma(a, b, c);
#endif
}

NNKIT_HOST_DEVICE inline uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return u;
#endif
}
NNKIT_HOST_DEVICE inline float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
#endif
}

NNKIT_HOST_DEVICE inline bool is_nan(float x) {
  return (float_bits(x) & 0x7FFFFFFFu) > 0x7F800000u;
}
NNKIT_HOST_DEVICE inline bool is_finite(float x) {
  return (float_bits(x) & 0x7F800000u) != 0x7F800000u;
}
inline constexpr uint32_t kPlusInfBits = 0x7F800000u;

// The ranking of the host samplers (decode/support/logit_row.h) as an unsigned key: a larger key
// ranks first; equal keys are tied (then the lower index ranks first). -0 and +0 share a key (they
// compare equal), every NaN gets 0, below -inf (NaN ranks last).
NNKIT_HOST_DEVICE inline uint32_t rank_key(float x) {
  uint32_t u = float_bits(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0u;  // NaN
  if (u == 0x80000000u) u = 0u;                    // -0 -> +0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
// The float of a key (key 0 gives NaN). Inverse of rank_key on everything but -0 and NaN payloads.
NNKIT_HOST_DEVICE inline float key_float(uint32_t key) {
  if (key == 0u) return bits_float(0x7FC00000u);
  return bits_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

// exp(x) for x <= 0 in IEEE double operations only: x = n ln2 + r (Cody-Waite, |r| <= ln2 / 2),
// a degree-13 Taylor polynomial of exp(r) (truncation < 5e-18), times 2^n. Within 2 ulp of exp.
// Below -708 (where 2^n would leave the normal range) it returns 0: such a token's probability is
// under 1e-307 of the most likely one's.
NNKIT_HOST_DEVICE inline double exp_nonpositive(double x) {
  if (!(x > -708.0)) return 0.0;  // NaN included
  if (x > 0.0) x = 0.0;           // callers pass x - max <= 0; guards against misuse only
  const double kInvLn2 = 1.4426950408889634074;
  const double kRound = 6755399441055744.0;          // 1.5 * 2^52: adding it rounds to an integer
  const double kLn2Hi = 6.93147180369123816490e-01;  // 32 significant bits: n * kLn2Hi is exact
  const double kLn2Lo = 1.90821492927058770002e-10;
  const double n = add_rn(add_rn(mul_rn(x, kInvLn2), kRound), -kRound);
  double r = fma_rn(-n, kLn2Hi, x);
  r = fma_rn(-n, kLn2Lo, r);
  // 1/k! for k = 0..13, evaluated by Estrin's scheme (pairs, then powers r^2, r^4, r^8): a
  // dependency chain of 5 FMAs instead of Horner's 13 (the draw's last walk is one GPU thread).
  const double c[14] = {1.0,
                        1.0,
                        0.5,
                        1.0 / 6.0,
                        1.0 / 24.0,
                        1.0 / 120.0,
                        1.0 / 720.0,
                        1.0 / 5040.0,
                        1.0 / 40320.0,
                        1.0 / 362880.0,
                        1.0 / 3628800.0,
                        1.0 / 39916800.0,
                        1.0 / 479001600.0,
                        1.0 / 6227020800.0};
  const double r2 = mul_rn(r, r), r4 = mul_rn(r2, r2), r8 = mul_rn(r4, r4);
  const double p01 = fma_rn(c[1], r, c[0]), p23 = fma_rn(c[3], r, c[2]);
  const double p45 = fma_rn(c[5], r, c[4]), p67 = fma_rn(c[7], r, c[6]);
  const double p89 = fma_rn(c[9], r, c[8]), p1011 = fma_rn(c[11], r, c[10]);
  const double p1213 = fma_rn(c[13], r, c[12]);
  const double q0 = fma_rn(p23, r2, p01), q1 = fma_rn(p67, r2, p45);
  const double q2 = fma_rn(p1011, r2, p89);
  const double h0 = fma_rn(q1, r4, q0), h1 = fma_rn(p1213, r4, q2);
  const double p = fma_rn(h1, r8, h0);
  // 2^n for n in [-1022, 0], built from its exponent bits (exact).
  const int64_t e = static_cast<int64_t>(n) + 1023;
  const uint64_t scale_bits = static_cast<uint64_t>(e) << 52;
  double scale;
#if defined(__CUDA_ARCH__)
  scale = __longlong_as_double(static_cast<long long>(scale_bits));
#else
  memcpy(&scale, &scale_bits, sizeof scale);
#endif
  return mul_rn(p, scale);
}

// A token's softmax weight relative to the row's largest logit `max_logit` (the max over the
// non-NaN entries): exp(x - max) for finite x; 0 for -inf and NaN; with an infinite max, the
// +inf tokens share the mass (weight 1) and every other token gets 0 (as the host helpers do).
NNKIT_HOST_DEVICE inline double row_weight(float x, float max_logit) {
  if (float_bits(max_logit) == kPlusInfBits) return float_bits(x) == kPlusInfBits ? 1.0 : 0.0;
  if (!is_finite(x)) return 0.0;
  return exp_nonpositive(add_rn(static_cast<double>(x), -static_cast<double>(max_logit)));
}

// lanes[b * kLanes + t] for b < bins: each bin's kLanes values summed by a fixed pairwise tree
// (stride kLanes/2, then /4, ... each step lanes[t] += lanes[t + stride]); the total ends in
// lanes[b * kLanes]. The host version of what sampling.cu does in shared memory. Lanes from
// `used` on hold +0 (rows narrower than kLanes) and are skipped: adding +0 to a weight (>= 0) is
// exact, so the result is the full tree's.
inline void lane_tree(double* lanes, int bins, int used = kLanes) {
  for (int stride = kLanes / 2; stride >= 1; stride /= 2) {
    const int top =
        used - stride < stride ? used - stride : stride;  // pairs with t + stride < used
    for (int b = 0; b < bins; ++b) {
      double* l = lanes + static_cast<int64_t>(b) * kLanes;
      for (int t = 0; t < top; ++t) l[t] = add_rn(l[t], l[t + stride]);
    }
    if (used > stride) used = stride;
  }
}

// One digit of the radix selection. Walks the bins from the highest (ranked first) down and
// returns the first non-empty bin where `above` (the weight ranked before it) plus its weight
// reaches `target`, adding the weight of the bins passed to `above`. When rounding leaves every
// bin short, the lowest non-empty bin is returned (the whole parent group is kept). Counts decide
// "non-empty"; for top-k weight = count.
NNKIT_HOST_DEVICE inline int choose_bin(const double* weight, const int32_t* count, double target,
                                        double& above) {
  int lowest = -1;
  double above_lowest = above;
  for (int b = kBins - 1; b >= 0; --b) {
    if (count[b] == 0) continue;
    const double through = add_rn(above, weight[b]);
    if (through >= target) return b;
    lowest = b;
    above_lowest = above;
    above = through;
  }
  above = above_lowest;
  return lowest;
}

// How many of the `tied` tokens of one key (each of weight w) are needed after `above`: the
// smallest j >= 1 with above + j w >= target, at most `tied`.
NNKIT_HOST_DEVICE inline int64_t ties_needed(double above, double w, double target, int64_t tied) {
  if (!(w > 0.0)) return tied;
  const double guess = (target - above) / w;
  int64_t j = 1;
  if (guess > static_cast<double>(tied)) {
    j = tied;
  } else if (guess > 1.0) {
    j = static_cast<int64_t>(ceil(guess));
  }
  while (j > 1 && add_rn(above, mul_rn(static_cast<double>(j - 1), w)) >= target) --j;
  while (j < tied && add_rn(above, mul_rn(static_cast<double>(j), w)) < target) ++j;
  return j;
}

// The draw of sample_rows from per-lane sums. Group g holds lanes [32 g, 32 g + 32); its sum is
// the lanes' sum in order; the total is the groups' sum in order; u * total is located group by
// group, lane by lane, then element by element (index t, t + kLanes, ...) in lane t, each level
// continuing the running sum of the one before. Returns the lane, or -1 when rounding at the top
// end found none (the caller then takes the argmax); `cum` is the running sum before that lane.
inline constexpr int kLaneGroup = 32;
inline constexpr int kGroups = kLanes / kLaneGroup;

NNKIT_HOST_DEVICE inline int locate_lane(const double* group_sum, const double* lane_sum,
                                         double target, double& cum) {
  cum = 0.0;
  for (int g = 0; g < kGroups; ++g) {
    const double next = add_rn(cum, group_sum[g]);
    if (group_sum[g] > 0.0 && target < next) {
      for (int t = g * kLaneGroup; t < (g + 1) * kLaneGroup; ++t) {
        const double lane_next = add_rn(cum, lane_sum[t]);
        if (lane_sum[t] > 0.0 && target < lane_next) return t;
        cum = lane_next;
      }
      return -1;
    }
    cum = next;
  }
  return -1;
}

}  // namespace nnkit::sampling
