// Purpose: the distribution nnkit::pick_token draws from. For fixed logits over 8 tokens and the
// chain top_k(4) + temperature(0.7), 10^5 draws (uniforms from a seeded std::mt19937_64) must pass
// a chi-square test against softmax(top-4 logits / 0.7) at the 99.9% critical value, and never
// pick a token outside the top 4. A very small temperature (1e-3) must draw the greedy token.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "nnkit/generator.h"
#include "nnkit/sampler.h"
#include "support/test_support.h"

namespace nnkit::test {
namespace {

using Chain = std::vector<std::shared_ptr<Sampler>>;

// Token 5 is the best, then 1, 6, 2; 0, 3, 4, 7 fall outside the top 4.
const std::vector<float> kLogits = {-0.4f, 1.1f, 0.7f, -1.5f, 0.2f, 1.6f, 0.9f, -0.2f};

std::vector<int64_t> draw_counts(const Chain& chain, int draws, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<int64_t> counts(kLogits.size(), 0);
  for (int i = 0; i < draws; ++i) {
    std::vector<float> row = kLogits;  // the chain rewrites the row in place
    const int32_t token = pick_token(row, chain, {}, uniform(rng));
    EXPECT_GE(token, 0);
    EXPECT_LT(token, int32_t(kLogits.size()));
    ++counts[size_t(token)];
  }
  return counts;
}

TEST(PickToken, TopKTemperatureDrawsPassChiSquare) {
  const Chain chain = {create<Sampler>("decode", "top_k", {{"k", "4"}}),
                       create<Sampler>("decode", "temperature", {{"value", "0.7"}})};
  constexpr int kDraws = 100000;
  const std::vector<int64_t> counts = draw_counts(chain, kDraws, 20240607);

  const std::vector<size_t> top4 = {5, 1, 6, 2};
  double total = 0.0;
  std::vector<double> weight(kLogits.size(), 0.0);
  for (size_t id : top4) total += weight[id] = std::exp(double(kLogits[id]) / 0.7);
  double chi_square = 0.0;
  for (size_t id = 0; id < kLogits.size(); ++id) {
    if (weight[id] == 0.0) {
      EXPECT_EQ(counts[id], 0) << "token " << id << " is outside the top 4";
      continue;
    }
    const double expected = kDraws * weight[id] / total;
    chi_square += (double(counts[id]) - expected) * (double(counts[id]) - expected) / expected;
  }
  // 3 degrees of freedom (4 categories); P(chi2_3 > 16.266) = 0.001.
  EXPECT_LT(chi_square, 16.266);
}

TEST(PickToken, TinyTemperatureDrawsTheGreedyToken) {
  const Chain cold = {create<Sampler>("decode", "temperature", {{"value", "0.001"}})};
  const std::vector<int64_t> counts = draw_counts(cold, 10000, 7);
  EXPECT_EQ(counts[5], 10000);

  const Chain greedy = {create<Sampler>("decode", "greedy")};
  for (double u : {0.0, 0.5, 0.999999}) {
    std::vector<float> row = kLogits;
    EXPECT_EQ(pick_token(row, greedy, {}, u), 5);
  }
}

}  // namespace
}  // namespace nnkit::test
