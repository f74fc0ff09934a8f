// Purpose: tests of the `decode/*` sampler plugins, created through the real registry: each filter
// on hand-made logits, option validation (both the core's declared ranges and the plugins' own
// checks), and a chi-square test of top_k + temperature sampling.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "nnkit/error.h"
#include "nnkit/generator.h"
#include "nnkit/sampler.h"
#include "support/test_support.h"

namespace nnkit {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

std::shared_ptr<Sampler> make_sampler(const std::string& name,
                                      const std::map<std::string, std::string>& values = {}) {
  return test::create<Sampler>("decode", name, values);
}

std::vector<float> applied(const Sampler& sampler, std::vector<float> logits,
                           const std::vector<int32_t>& history = {}) {
  sampler.apply(logits, history);
  return logits;
}

std::vector<int32_t> surviving_ids(const std::vector<float>& logits) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (logits[i] != kNegInf) ids.push_back(static_cast<int32_t>(i));
  }
  return ids;
}

// Logits whose softmax is exactly `probs` in exact arithmetic.
std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> logits;
  for (double p : probs) logits.push_back(static_cast<float>(std::log(p)));
  return logits;
}

// Runs `create` and returns the ConfigError's message (fails the test when nothing is thrown).
template <typename Create>
std::string config_error_of(Create create) {
  try {
    create();
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected nnkit::ConfigError";
  return "";
}

// Options for a plugin with one value set directly, bypassing make_options' range check, so the
// plugin's own validation is what answers.
Options options_with(const std::string& name, const std::string& key, double value) {
  Options options = test::make_options("decode", name);
  Options::Value v;
  v.type = OptionType::kFloat;
  v.float_value = value;
  v.location = SourceLocation{"sampler.yaml", 3, 12};
  options.set(key, v);
  return options;
}

TEST(Greedy, SelectsArgmaxAndLeavesLogits) {
  auto greedy = make_sampler("greedy");
  EXPECT_TRUE(greedy->selects_argmax());
  const std::vector<float> logits{0.5f, -1.0f, 3.0f, 2.0f};
  EXPECT_EQ(applied(*greedy, logits, {2, 2}), logits);
  EXPECT_EQ(greedy->id(), "decode/greedy");
}

TEST(Samplers, OnlyGreedySelectsArgmax) {
  for (const char* name : {"temperature", "top_k", "top_p", "min_p", "repetition_penalty"}) {
    EXPECT_FALSE(make_sampler(name)->selects_argmax()) << name;
  }
}

TEST(Temperature, DividesLogits) {
  auto temperature = make_sampler("temperature", {{"value", "0.5"}});
  const std::vector<float> out = applied(*temperature, {1.0f, -2.0f, 0.0f, kNegInf});
  EXPECT_FLOAT_EQ(out[0], 2.0f);
  EXPECT_FLOAT_EQ(out[1], -4.0f);
  EXPECT_FLOAT_EQ(out[2], 0.0f);
  EXPECT_EQ(out[3], kNegInf);

  const std::vector<float> logits{0.3f, 1.7f};
  EXPECT_EQ(applied(*make_sampler("temperature"), logits), logits);  // default 1.0
}

// Tokens a draw from `row` (after `chain`) can return, over uniforms spread across [0, 1).
std::vector<int32_t> drawable_ids(const std::vector<float>& logits,
                                  const std::vector<std::shared_ptr<Sampler>>& chain) {
  std::vector<int32_t> ids;
  for (const double u : {0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999999}) {
    std::vector<float> row = logits;
    const int32_t id = pick_token(row, chain, {}, u);
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

bool has_nan(const std::vector<float>& row) {
  return std::any_of(row.begin(), row.end(), [](float x) { return std::isnan(x); });
}

TEST(Temperature, TinyValueIsGreedyWithoutOverflow) {
  // 1e-30 pushes logit / T past the float range; 1e-40 makes 1/T itself inf in float (and
  // 0 * inf NaN), so both once sampled garbage.
  const std::vector<float> logits{0.0f, -1.0f, 3.0f, kNegInf, 2.9f, 1e30f};
  for (const char* value : {"1e-30", "1e-40", "1e-300"}) {
    auto temperature = make_sampler("temperature", {{"value", value}});
    const std::vector<float> out = applied(*temperature, logits);
    EXPECT_FALSE(has_nan(out)) << value;
    EXPECT_EQ(out[3], kNegInf) << value;
    EXPECT_EQ(drawable_ids(logits, {temperature}), std::vector<int32_t>{5}) << value;
    const std::vector<float> modest{0.0f, -1.0f, 3.0f, kNegInf, 2.9f};
    EXPECT_EQ(drawable_ids(modest, {temperature}), std::vector<int32_t>{2}) << value;
  }
}

TEST(Temperature, TinyValueKeepsTiedBestTokens) {
  auto temperature = make_sampler("temperature", {{"value", "1e-35"}});
  EXPECT_EQ(drawable_ids({5.0f, 1.0f, 5.0f, -3.0f}, {temperature}), (std::vector<int32_t>{0, 2}));
}

TEST(Temperature, HugeValueIsUniformOverWhatFiltersKept) {
  // 1/1e300 is 0 in float, and -inf * 0 is NaN: a filtered token came back as NaN.
  auto top_k = make_sampler("top_k", {{"k", "3"}});
  const std::vector<float> logits{1.0f, 2.5f, 0.3f, 2.0f, -1.0f, 1.8f};
  for (const char* value : {"1e30", "1e300"}) {
    auto temperature = make_sampler("temperature", {{"value", value}});
    std::vector<float> row = logits;
    top_k->apply(row, {});
    temperature->apply(row, {});
    EXPECT_FALSE(has_nan(row)) << value;
    EXPECT_EQ(surviving_ids(row), (std::vector<int32_t>{1, 3, 5})) << value;
    EXPECT_EQ(drawable_ids(logits, {top_k, temperature}), (std::vector<int32_t>{1, 3, 5})) << value;
  }
}

TEST(PickToken, NanNeverWinsTheArgmax) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(drawable_ids({nan, 1.0f, 1000.0f}, {}), std::vector<int32_t>{2});
  EXPECT_EQ(drawable_ids({nan, kNegInf, 7.0f}, {make_sampler("greedy")}), std::vector<int32_t>{2});
}

TEST(TopK, KeepsExactlyTheKLargest) {
  auto top_k = make_sampler("top_k", {{"k", "3"}});
  const std::vector<float> logits{0.1f, 2.0f, -1.0f, 1.5f, 0.7f, 3.0f};
  const std::vector<float> out = applied(*top_k, logits);
  EXPECT_EQ(surviving_ids(out), (std::vector<int32_t>{1, 3, 5}));
  for (int32_t id : {1, 3, 5})
    EXPECT_EQ(out[static_cast<size_t>(id)], logits[static_cast<size_t>(id)]);
}

TEST(TopK, NeverKeepsATokenOutsideTheKLargest) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t k = 1 + trial % 9;
    auto top_k = make_sampler("top_k", {{"k", std::to_string(k)}});
    // Coarse values make ties common, including at the boundary.
    std::vector<float> logits(40);
    std::uniform_int_distribution<int> level(-5, 5);
    for (float& x : logits) x = static_cast<float>(level(rng));
    const std::vector<float> out = applied(*top_k, logits);
    const std::vector<int32_t> kept = surviving_ids(out);
    ASSERT_EQ(static_cast<int64_t>(kept.size()), k);
    std::vector<float> sorted = logits;
    std::sort(sorted.begin(), sorted.end(), std::greater<>());
    const float kth_largest = sorted[static_cast<size_t>(k - 1)];
    for (int32_t id : kept) EXPECT_GE(logits[static_cast<size_t>(id)], kth_largest);
    // Everything strictly above the boundary value must have survived.
    for (size_t i = 0; i < logits.size(); ++i) {
      if (logits[i] > kth_largest) {
        EXPECT_NE(out[i], kNegInf) << "id " << i;
      }
    }
  }
}

TEST(TopK, TiesAtTheBoundaryKeepLowerIds) {
  auto top_k = make_sampler("top_k", {{"k", "2"}});
  EXPECT_EQ(surviving_ids(applied(*top_k, {1.0f, 2.0f, 2.0f, 2.0f, 0.0f})),
            (std::vector<int32_t>{1, 2}));
}

TEST(TopK, KAtLeastVocabularyKeepsEverything) {
  auto top_k = make_sampler("top_k", {{"k", "50"}});
  const std::vector<float> logits{0.1f, 0.2f, 0.3f};
  EXPECT_EQ(applied(*top_k, logits), logits);
}

// Probabilities 1/2, 1/4, 1/8, 1/16, 1/16 spread over ids out of rank order.
const std::vector<double> kHalvingProbs{0.0625, 0.25, 0.0625, 0.5, 0.125};

TEST(TopP, KeepsTheSmallestSetReachingP) {
  const std::vector<float> logits = logits_of(kHalvingProbs);
  const auto kept_with = [&](const std::string& p) {
    return surviving_ids(applied(*make_sampler("top_p", {{"p", p}}), logits));
  };
  EXPECT_EQ(kept_with("0.3"), (std::vector<int32_t>{3}));
  EXPECT_EQ(kept_with("0.6"), (std::vector<int32_t>{1, 3}));
  EXPECT_EQ(kept_with("0.8"), (std::vector<int32_t>{1, 3, 4}));
  EXPECT_EQ(kept_with("1.0"), (std::vector<int32_t>{0, 1, 2, 3, 4}));
}

TEST(TopP, MassExactlyAtPStopsThere) {
  const std::vector<float> logits = logits_of(kHalvingProbs);
  const auto kept_with = [&](const std::string& p) {
    return surviving_ids(applied(*make_sampler("top_p", {{"p", p}}), logits));
  };
  // 0.5 + 0.25 = 0.75 reaches p = 0.75 exactly: no third token, whatever the float rounding.
  EXPECT_EQ(kept_with("0.75"), (std::vector<int32_t>{1, 3}));
  EXPECT_EQ(kept_with("0.5"), (std::vector<int32_t>{3}));
  EXPECT_EQ(kept_with("0.875"), (std::vector<int32_t>{1, 3, 4}));
}

TEST(TopP, AlwaysKeepsOneToken) {
  auto top_p = make_sampler("top_p", {{"p", "0.01"}});
  EXPECT_EQ(surviving_ids(applied(*top_p, {0.0f, 0.0f, 0.0f, 0.0f})), (std::vector<int32_t>{0}));
}

TEST(TopP, IgnoresTokensAlreadyFiltered) {
  auto top_p = make_sampler("top_p", {{"p", "0.75"}});
  std::vector<float> logits = logits_of({0.5, 0.25, 0.25});
  logits.push_back(kNegInf);
  EXPECT_EQ(surviving_ids(applied(*top_p, logits)), (std::vector<int32_t>{0, 1}));
}

TEST(MinP, DropsTokensBelowAFractionOfTheBest) {
  const std::vector<float> logits = logits_of(kHalvingProbs);
  const auto kept_with = [&](const std::string& p) {
    return surviving_ids(applied(*make_sampler("min_p", {{"p", p}}), logits));
  };
  EXPECT_EQ(kept_with("0.2"), (std::vector<int32_t>{1, 3, 4}));  // threshold 0.1
  EXPECT_EQ(kept_with("0.3"), (std::vector<int32_t>{1, 3}));     // threshold 0.15
  EXPECT_EQ(kept_with("0.9"), (std::vector<int32_t>{3}));
  EXPECT_EQ(kept_with("0.0"), (std::vector<int32_t>{0, 1, 2, 3, 4}));
  // Kept logits are untouched.
  const std::vector<float> out = applied(*make_sampler("min_p", {{"p", "0.2"}}), logits);
  EXPECT_EQ(out[3], logits[3]);
}

TEST(MinP, IndependentOfAShiftOfAllLogits) {
  std::vector<float> shifted = logits_of(kHalvingProbs);
  for (float& x : shifted) x += 40.0f;
  auto min_p = make_sampler("min_p", {{"p", "0.2"}});
  EXPECT_EQ(surviving_ids(applied(*min_p, shifted)), (std::vector<int32_t>{1, 3, 4}));
}

TEST(RepetitionPenalty, DividesPositiveMultipliesNegativeOnlyInHistory) {
  auto penalty = make_sampler("repetition_penalty", {{"penalty", "2.0"}});
  const std::vector<float> logits{2.0f, -2.0f, 1.0f, -1.0f, 3.0f, 0.0f};
  // Id 0 twice (penalised once), ids outside the row (7, -1) ignored, 5 is zero.
  const std::vector<float> out = applied(*penalty, logits, {0, 1, 0, 7, -1, 5});
  EXPECT_FLOAT_EQ(out[0], 1.0f);
  EXPECT_FLOAT_EQ(out[1], -4.0f);
  EXPECT_FLOAT_EQ(out[2], 1.0f);   // not in history
  EXPECT_FLOAT_EQ(out[3], -1.0f);  // not in history
  EXPECT_FLOAT_EQ(out[4], 3.0f);   // not in history
  EXPECT_FLOAT_EQ(out[5], 0.0f);
}

TEST(RepetitionPenalty, EmptyHistoryChangesNothing) {
  const std::vector<float> logits{1.0f, -1.0f};
  EXPECT_EQ(applied(*make_sampler("repetition_penalty"), logits, {}), logits);
}

TEST(SamplerOptions, OutOfDeclaredRangeIsAConfigError) {
  EXPECT_THROW(make_sampler("top_p", {{"p", "1.5"}}), ConfigError);
  EXPECT_THROW(make_sampler("top_k", {{"k", "0"}}), ConfigError);
  EXPECT_THROW(make_sampler("temperature", {{"value", "-1"}}), ConfigError);
  EXPECT_THROW(make_sampler("min_p", {{"p", "-0.1"}}), ConfigError);
  EXPECT_THROW(make_sampler("repetition_penalty", {{"penalty", "-1"}}), ConfigError);
}

TEST(SamplerOptions, TemperatureZeroPointsToGreedy) {
  // 0 is inside the declared range [0, inf): the plugin's own check answers.
  const std::string message = config_error_of([] {
    make_sampler("temperature", {{"value", "0"}});
  });
  EXPECT_NE(message.find("decode/temperature"), std::string::npos) << message;
  EXPECT_NE(message.find("decode/greedy"), std::string::npos) << message;
}

TEST(SamplerOptions, PluginChecksHoldWithoutTheCoreRangeCheck) {
  const auto create_with = [](const std::string& name, const std::string& key, double value) {
    return config_error_of([&] {
      Options options = options_with(name, key, value);
      test::registry().create<Sampler>("decode", name, CreateArgs{options, {}, nullptr});
    });
  };
  std::string message = create_with("temperature", "value", -1.0);
  EXPECT_NE(message.find("decode/greedy"), std::string::npos) << message;
  EXPECT_NE(message.find("sampler.yaml:3:12"), std::string::npos) << message;

  message = create_with("top_p", "p", 1.5);
  EXPECT_NE(message.find("(0, 1]"), std::string::npos) << message;
  message = create_with("top_p", "p", 0.0);
  EXPECT_NE(message.find("(0, 1]"), std::string::npos) << message;
  message = create_with("min_p", "p", 2.0);
  EXPECT_NE(message.find("[0, 1]"), std::string::npos) << message;
  message = create_with("repetition_penalty", "penalty", 0.0);
  EXPECT_NE(message.find("> 0"), std::string::npos) << message;
}

TEST(SamplerOptions, TopKZeroFromThePluginItself) {
  Options options = test::make_options("decode", "top_k");
  Options::Value zero;
  zero.type = OptionType::kInt;
  zero.int_value = 0;
  options.set("k", zero);
  EXPECT_THROW(
      test::registry().create<Sampler>("decode", "top_k", CreateArgs{options, {}, nullptr}),
      ConfigError);
}

// The generator's job, written out here independently: softmax of the filtered row, then an
// inverse-CDF draw with a uniform in [0, 1).
int32_t draw(const std::vector<float>& logits, std::mt19937_64& rng) {
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  std::vector<double> cdf(logits.size());
  double total = 0.0;
  int32_t last_possible = 0;  // where u == total after rounding lands
  for (size_t i = 0; i < logits.size(); ++i) {
    const double weight = std::exp(static_cast<double>(logits[i]) - max_logit);
    if (weight > 0.0) last_possible = static_cast<int32_t>(i);
    total += weight;
    cdf[i] = total;
  }
  const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng) * total;
  for (size_t i = 0; i < cdf.size(); ++i) {
    if (u < cdf[i]) return static_cast<int32_t>(i);
  }
  return last_possible;
}

TEST(SamplingChain, TopKThenTemperatureMatchesTheExpectedDistribution) {
  auto top_k = make_sampler("top_k", {{"k", "3"}});
  auto temperature = make_sampler("temperature", {{"value", "0.7"}});
  const std::vector<float> logits{1.0f, 2.5f, 0.3f, 2.0f, -1.0f, 1.8f, 0.5f, 1.2f};
  const std::vector<int32_t> top3{1, 3, 5};

  // Expected: softmax over the three largest logits divided by 0.7, nothing elsewhere.
  std::vector<double> expected(logits.size(), 0.0);
  double norm = 0.0;
  for (int32_t id : top3) norm += std::exp(logits[static_cast<size_t>(id)] / 0.7);
  for (int32_t id : top3) {
    expected[static_cast<size_t>(id)] = std::exp(logits[static_cast<size_t>(id)] / 0.7) / norm;
  }

  constexpr int kDraws = 100000;
  std::mt19937_64 rng(20240611);
  std::vector<int64_t> counts(logits.size(), 0);
  const std::vector<int32_t> history{};
  for (int n = 0; n < kDraws; ++n) {
    std::vector<float> row = logits;
    top_k->apply(row, history);
    temperature->apply(row, history);
    ++counts[static_cast<size_t>(draw(row, rng))];
  }

  for (size_t i = 0; i < logits.size(); ++i) {
    if (expected[i] == 0.0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " is outside the top 3";
    }
  }
  double chi_square = 0.0;
  for (int32_t id : top3) {
    const double want = expected[static_cast<size_t>(id)] * kDraws;
    const double diff = static_cast<double>(counts[static_cast<size_t>(id)]) - want;
    chi_square += diff * diff / want;
  }
  // 3 categories -> 2 degrees of freedom; the 99.9% quantile of chi-square(2) is 13.816.
  EXPECT_LT(chi_square, 13.816) << "counts " << counts[1] << " " << counts[3] << " " << counts[5];
}

}  // namespace
}  // namespace nnkit
