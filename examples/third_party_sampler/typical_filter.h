// Purpose: the locally typical filter (Meister et al., "Locally Typical Sampling", 2022) over one
// row of logits, independent of nnkit so that it can be checked on its own (typical_check.cpp).
// With p = softmax(logits) and H = -sum_i p_i log p_i (the entropy), every token gets the score
// |-log p_i - H|; tokens are ranked by that score (smallest first, lower id on ties) and the
// smallest prefix whose probability mass reaches `mass` is kept (at least one token). The rest are
// set to -inf. This is what Hugging Face's TypicalLogitsWarper does (with min_tokens_to_keep = 1).
// Entries that are already -inf (filtered by an earlier sampler) or NaN have probability 0 and
// stay filtered; a row with no finite entry is left as it is.
// Ownership: a free function over a caller-owned span; no state, safe from any thread.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <vector>

namespace typical {

inline constexpr float kFiltered = -std::numeric_limits<float>::infinity();

// Probabilities come from float logits: a set holding exactly `mass` in exact arithmetic may sum
// to mass - 1e-8 here, and without this slack would pull in one more token depending on rounding.
inline constexpr double kMassTolerance = 1e-6;

// Filters `logits` in place; returns how many tokens keep a finite logit.
inline size_t filter(std::span<float> logits, double mass) {
  const size_t n = logits.size();
  float max_logit = -std::numeric_limits<float>::infinity();
  for (float x : logits) {
    if (x > max_logit) max_logit = x;  // NaN compares false and is skipped
  }
  if (max_logit == -std::numeric_limits<float>::infinity()) return 0;  // nothing finite
  if (std::isinf(max_logit)) {
    // +inf entries hold all the mass (and share it equally): they are the typical set.
    size_t kept = 0;
    for (float& x : logits) {
      if (x == max_logit)
        ++kept;
      else
        x = kFiltered;
    }
    return kept;
  }

  // log-softmax in double.
  double total = 0.0;
  for (float x : logits) {
    if (!std::isnan(x)) total += std::exp(static_cast<double>(x) - max_logit);
  }
  const double log_total = std::log(total);
  std::vector<double> log_p(n, -std::numeric_limits<double>::infinity());
  std::vector<double> p(n, 0.0);
  double entropy = 0.0;
  std::vector<int32_t> candidates;  // tokens with p > 0
  candidates.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const float x = logits[i];
    if (std::isnan(x) || x == kFiltered) continue;
    log_p[i] = (static_cast<double>(x) - max_logit) - log_total;
    p[i] = std::exp(log_p[i]);
    if (p[i] > 0.0) {
      entropy -= p[i] * log_p[i];
      candidates.push_back(static_cast<int32_t>(i));
    }
  }

  std::vector<int32_t> kept_ids;
  if (mass >= 1.0) {
    kept_ids = candidates;  // every token with p > 0 is needed to reach mass 1
  } else {
    // Rank by distance of the surprisal -log p from the entropy (the expected surprisal).
    std::vector<double> score(n, 0.0);
    for (int32_t id : candidates) score[id] = std::abs(-log_p[id] - entropy);
    std::sort(candidates.begin(), candidates.end(), [&](int32_t a, int32_t b) {
      return score[a] != score[b] ? score[a] < score[b] : a < b;
    });
    double cumulative = 0.0;
    for (int32_t id : candidates) {
      kept_ids.push_back(id);
      cumulative += p[id];
      if (cumulative >= mass - kMassTolerance) break;
    }
  }

  std::vector<bool> keep(n, false);
  for (int32_t id : kept_ids) keep[static_cast<size_t>(id)] = true;
  for (size_t i = 0; i < n; ++i) {
    if (!keep[i]) logits[i] = kFiltered;
  }
  return kept_ids.size();
}

}  // namespace typical
