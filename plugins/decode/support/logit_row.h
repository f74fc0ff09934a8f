// Purpose: helpers over one host row of logits shared by the samplers: the ranking order
// (higher logit first, lower id on ties) and softmax probabilities computed in double.
// Ownership: free functions over caller-owned spans; no state, safe from any thread.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <vector>

namespace nnkit::decode {

// What a filter writes into an excluded entry: it gets probability 0 after softmax.
inline constexpr float kFiltered = -std::numeric_limits<float>::infinity();

// True when token `a` ranks before token `b`. NaN ranks last so that sorting stays a strict weak
// ordering even on a corrupt row (std::sort on NaN comparisons is undefined behaviour).
inline bool ranks_before(std::span<const float> logits, int32_t a, int32_t b) {
  const float la = logits[static_cast<size_t>(a)];
  const float lb = logits[static_cast<size_t>(b)];
  const bool a_nan = std::isnan(la);
  const bool b_nan = std::isnan(lb);
  if (a_nan != b_nan) return b_nan;
  if (!a_nan && la != lb) return la > lb;
  return a < b;
}

// Token ids in ranking order; only the first `count` positions are sorted (the rest follow in
// unspecified order), which is all top-k needs.
inline std::vector<int32_t> ranked_ids(std::span<const float> logits, size_t count) {
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  count = std::min(count, ids.size());
  const auto before = [logits](int32_t a, int32_t b) { return ranks_before(logits, a, b); };
  std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(count), ids.end(),
                    before);
  return ids;
}

// exp(logit - max logit): each token's probability relative to the most likely one, in [0, 1].
// Filtered (-inf) and NaN entries get 0; a row with nothing finite gets all zeros.
inline std::vector<double> relative_probabilities(std::span<const float> logits) {
  float max_logit = -std::numeric_limits<float>::infinity();
  for (float x : logits) {
    if (x > max_logit) max_logit = x;  // NaN compares false and is skipped
  }
  std::vector<double> weights(logits.size(), 0.0);
  if (max_logit == -std::numeric_limits<float>::infinity()) return weights;
  const bool infinite_max = std::isinf(max_logit);  // +inf: those tokens share all the mass
  for (size_t i = 0; i < logits.size(); ++i) {
    const float x = logits[i];
    if (std::isnan(x)) continue;
    weights[i] = infinite_max ? (x == max_logit ? 1.0 : 0.0)
                              : std::exp(static_cast<double>(x) - static_cast<double>(max_logit));
  }
  return weights;
}

// softmax(logits) in double, summing to 1 (all zeros when nothing is finite).
inline std::vector<double> probabilities(std::span<const float> logits) {
  std::vector<double> probs = relative_probabilities(logits);
  const double total = std::accumulate(probs.begin(), probs.end(), 0.0);
  if (total > 0.0) {
    for (double& p : probs) p /= total;
  }
  return probs;
}

}  // namespace nnkit::decode
