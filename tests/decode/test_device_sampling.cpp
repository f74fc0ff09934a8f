// Purpose: tests of on-device sampling (issue 10) on the CPU backend: the Philox generator against
// its published answers, the shared exp against libm, each Backend sampling op against hand
// references and against the host samplers' apply() (same kept sets, same values), sample_rows'
// statistics (chi-square over 10^5 draws at fixed seeds, independence of rows and steps, argmax
// ties, reproducibility), the history helpers, and sample_on_device's chain rules (argmax, a
// declined chain). backend/cuda's parity with these ops is tests/backend_cuda/test_sampling_parity.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "../../plugins/backend/common/sampling_math.h"
#include "nnkit/device_sampling.h"
#include "nnkit/error.h"
#include "nnkit/generator.h"
#include "nnkit/philox.h"
#include "nnkit/sampler.h"
#include "support/test_support.h"

namespace nnkit {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

class DeviceSampling : public ::testing::Test {
 protected:
  void SetUp() override { backend_ = test::cpu_backend(); }
  Backend& be() { return *backend_; }

  Tensor rows(const std::vector<float>& values, int64_t b) {
    return test::tensor_from(be(), values, {b, static_cast<int64_t>(values.size()) / b});
  }
  std::vector<float> values(const Tensor& t) { return test::to_vector(be(), t); }
  std::vector<int32_t> ints(const Tensor& t) { return test::to_vector_i32(be(), t); }

  // ids of sample_rows on `logits` (B, V) at one step.
  std::vector<int32_t> draw(const Tensor& logits, uint64_t seed, int64_t step,
                            bool argmax = false) {
    Tensor ids = be().empty({logits.shape()[0]}, DType::kI32);
    be().sample_rows(logits, seed, step, Tensor(), argmax, ids);
    return ints(ids);
  }

  std::shared_ptr<Backend> backend_;
};

std::shared_ptr<Sampler> make_sampler(const std::string& name,
                                      const std::map<std::string, std::string>& values = {}) {
  return test::create<Sampler>("decode", name, values);
}

std::vector<int32_t> kept(const std::vector<float>& row) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < row.size(); ++i) {
    if (row[i] != kNegInf) ids.push_back(static_cast<int32_t>(i));
  }
  return ids;
}

std::vector<float> row_of(const std::vector<float>& all, int64_t b, int64_t v) {
  return std::vector<float>(all.begin() + b * v, all.begin() + (b + 1) * v);
}

// Pearson's statistic of `counts` against `probs` (expected = probs * total).
double chi_square(const std::vector<int64_t>& counts, const std::vector<double>& probs) {
  const double total =
      static_cast<double>(std::accumulate(counts.begin(), counts.end(), int64_t{0}));
  double stat = 0.0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double expected = probs[i] * total;
    stat += (static_cast<double>(counts[i]) - expected) *
            (static_cast<double>(counts[i]) - expected) / expected;
  }
  return stat;
}

std::vector<double> softmax(const std::vector<float>& logits) {
  double mx = -INFINITY;
  for (float x : logits) mx = std::max(mx, static_cast<double>(x));
  std::vector<double> p;
  double total = 0.0;
  for (float x : logits) {
    p.push_back(std::exp(static_cast<double>(x) - mx));
    total += p.back();
  }
  for (double& v : p) v /= total;
  return p;
}

// ---- the shared arithmetic ------------------------------------------------------------------

TEST(DeviceSamplingMath, PhiloxMatchesThePublishedAnswers) {
  using random::Philox4x32;
  // Random123's known-answer vectors for philox4x32-10 (counter, key) -> output.
  struct Case {
    Philox4x32 ctr;
    uint32_t k0, k1;
    Philox4x32 out;
  };
  const Case cases[] = {
      {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
      {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}},
       0xffffffffu,
       0xffffffffu,
       {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
      {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
       0xa4093822u,
       0x299f31d0u,
       {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}},
  };
  for (const Case& c : cases) {
    const Philox4x32 got = random::philox4x32_10(c.ctr, c.k0, c.k1);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(got.v[i], c.out.v[i]) << "word " << i;
  }
  const double u = random::sampling_uniform(7, 3, 11);
  EXPECT_GE(u, 0.0);
  EXPECT_LT(u, 1.0);
  EXPECT_NE(u, random::sampling_uniform(7, 3, 12));
  EXPECT_NE(u, random::sampling_uniform(7, 4, 11));
  EXPECT_NE(u, random::sampling_uniform(8, 3, 11));
}

TEST(DeviceSamplingMath, ExpIsWithinTwoUlpOfLibm) {
  for (double x = -707.9; x <= 0.0; x += 0.0137) {
    const double want = std::exp(x);
    const double got = sampling::exp_nonpositive(x);
    EXPECT_LE(std::fabs(got - want), 2.0 * std::ldexp(1.0, std::ilogb(want) - 52)) << "x = " << x;
  }
  EXPECT_EQ(sampling::exp_nonpositive(0.0), 1.0);
  EXPECT_EQ(sampling::exp_nonpositive(-709.0), 0.0);
  EXPECT_EQ(sampling::exp_nonpositive(-INFINITY), 0.0);
}

TEST(DeviceSamplingMath, RankKeyOrdersLikeTheHostSamplers) {
  const std::vector<float> ascending = {kNegInf, -3e38f, -1.0f, -1e-40f, 0.0f,
                                        1e-40f,  1.0f,   3e38f, INFINITY};
  for (size_t i = 1; i < ascending.size(); ++i) {
    EXPECT_LT(sampling::rank_key(ascending[i - 1]), sampling::rank_key(ascending[i])) << i;
    EXPECT_EQ(sampling::key_float(sampling::rank_key(ascending[i])), ascending[i]);
  }
  EXPECT_EQ(sampling::rank_key(-0.0f), sampling::rank_key(0.0f));
  EXPECT_EQ(sampling::rank_key(kNaN), 0u);
  EXPECT_LT(sampling::rank_key(-kNaN), sampling::rank_key(kNegInf));
}

// ---- filters against hand references ----------------------------------------------------------

TEST_F(DeviceSampling, TopKKeepsExactlyKWithTiesToTheLowerIndex) {
  Tensor t = rows({1, 3, 3, 2, 3, kNaN, 3, kNegInf}, 1);
  be().top_k_filter_rows(t, 2);
  EXPECT_EQ(kept(values(t)), (std::vector<int32_t>{1, 2}));
  t = rows({1, 3, 3, 2, 3, kNaN, 3, kNegInf}, 1);
  be().top_k_filter_rows(t, 5);
  EXPECT_EQ(kept(values(t)), (std::vector<int32_t>{1, 2, 3, 4, 6}));
  // NaN ranks after -inf; kept values are unchanged.
  t = rows({kNaN, kNegInf, 0.5f, -0.0f, 0.0f}, 1);
  be().top_k_filter_rows(t, 4);
  const std::vector<float> v = values(t);
  EXPECT_EQ(v[0], kNegInf);
  EXPECT_EQ(v[2], 0.5f);
  EXPECT_TRUE(std::signbit(v[3]));
  EXPECT_EQ(kept(v), (std::vector<int32_t>{2, 3, 4}));
  // k >= V keeps the row.
  t = rows({1, 2, 3}, 1);
  be().top_k_filter_rows(t, 3);
  EXPECT_EQ(values(t), (std::vector<float>{1, 2, 3}));
}

TEST_F(DeviceSampling, TopPKeepsTheSmallestPrefixReachingP) {
  // Probabilities 0.5, 0.25, 0.125, 0.125 (at ids 2, 0, 1, 3).
  const std::vector<float> row = {std::log(0.25f), std::log(0.125f), std::log(0.5f),
                                  std::log(0.125f)};
  const std::map<double, std::vector<int32_t>> want = {{0.4, {2}},       {0.5, {2}},
                                                       {0.6, {0, 2}},    {0.75, {0, 2}},
                                                       {0.8, {0, 1, 2}}, {0.95, {0, 1, 2, 3}}};
  for (const auto& [p, ids] : want) {
    Tensor t = rows(row, 1);
    be().top_p_filter_rows(t, p);
    EXPECT_EQ(kept(values(t)), ids) << "p = " << p;
  }
  // Ties at the cut: four equal tokens, p = 0.5 keeps the first two by index, 0.3 as well.
  for (double p : {0.3, 0.5}) {
    Tensor t = rows({0, 0, 0, 0, kNegInf}, 1);
    be().top_p_filter_rows(t, p);
    EXPECT_EQ(kept(values(t)), (std::vector<int32_t>{0, 1})) << p;
  }
  // A row with nothing finite and p >= 1 are left alone.
  Tensor t = rows({kNegInf, kNaN, kNegInf, 1, 2, 3}, 2);
  be().top_p_filter_rows(t, 1.0);
  EXPECT_EQ(kept(values(t)).size(), 4u);  // NaN stays NaN
  t = rows({kNegInf, kNegInf, kNegInf, 1, 2, 3}, 2);
  be().top_p_filter_rows(t, 0.5);
  EXPECT_EQ(kept(values(t)), (std::vector<int32_t>{5}));
}

TEST_F(DeviceSampling, TopPBreaksLargeTiesAcrossManyValues) {
  // 3000 tokens at one value and a few above it: the cut falls inside the tied block.
  std::vector<float> row(3000, 0.0f);
  row[2999] = 3.0f;
  row[17] = 2.0f;
  Tensor t = rows(row, 1);
  be().top_p_filter_rows(t, 0.5);
  std::vector<float> host = row;
  make_sampler("top_p", {{"p", "0.5"}})->apply(host, {});
  EXPECT_EQ(kept(values(t)), kept(host));
}

TEST_F(DeviceSampling, MinPDropsTokensBelowPTimesTheBest) {
  Tensor t = rows({std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f), kNaN}, 1);
  be().min_p_filter_rows(t, 0.2);
  EXPECT_EQ(kept(values(t)), (std::vector<int32_t>{0, 1, 2}));
  t = rows({1, kNaN}, 1);
  be().min_p_filter_rows(t, 0.0);  // 0 keeps all
  EXPECT_TRUE(std::isnan(values(t)[1]));
  // A +inf max: the +inf tokens share the mass.
  t = rows({INFINITY, 5, INFINITY}, 1);
  be().min_p_filter_rows(t, 0.5);
  EXPECT_EQ(kept(values(t)), (std::vector<int32_t>{0, 2}));
}

TEST_F(DeviceSampling, RepetitionPenaltyPenalisesEachSeenIdOnce) {
  Tensor logits = rows({2, -2, 4, 1, 3, -1, 0.5, 6}, 2);
  // Row 0 saw 0, 0, 1 and an out-of-range id; row 1 saw 3 (the rest is past its length).
  Tensor history = test::tensor_from_i32(be(), {0, 0, 1, 99, 3, 2, 1, 0}, {2, 4});
  Tensor lengths = test::tensor_from_i32(be(), {4, 1}, {2});
  be().repetition_penalty_rows(logits, history, lengths, 2.0f);
  EXPECT_EQ(values(logits), (std::vector<float>{1, -4, 4, 1, 3, -1, 0.5, 3}));
}

TEST_F(DeviceSampling, TemperatureShiftsWhenTheDivisionOverflows) {
  Tensor t = rows({1.0f, 2.0f, kNegInf, kNaN}, 1);
  be().temperature_rows(t, 0.5);
  std::vector<float> v = values(t);
  EXPECT_EQ(v[0], 2.0f);
  EXPECT_EQ(v[1], 4.0f);
  EXPECT_EQ(v[2], kNegInf);
  EXPECT_TRUE(std::isnan(v[3]));
  t = rows({1.0f, 2.0f, 2.0f - 1e-6f}, 1);
  be().temperature_rows(t, 1e-40);
  v = values(t);
  EXPECT_EQ(v[1], 0.0f);  // the max is 0 after the shift
  EXPECT_EQ(v[0], kNegInf);
  EXPECT_LT(v[2], -1e20f);
}

// ---- filters against the host samplers ------------------------------------------------------

struct HostCase {
  std::string name;
  std::map<std::string, std::string> options;
};

TEST_F(DeviceSampling, EveryFilterMatchesTheHostSampler) {
  const std::vector<HostCase> cases = {{"temperature", {{"value", "0.7"}}},
                                       {"temperature", {{"value", "1e-30"}}},
                                       {"top_k", {{"k", "1"}}},
                                       {"top_k", {{"k", "40"}}},
                                       {"top_p", {{"p", "0.9"}}},
                                       {"top_p", {{"p", "0.3"}}},
                                       {"top_p", {{"p", "0.999"}}},
                                       {"min_p", {{"p", "0.05"}}},
                                       {"min_p", {{"p", "0.5"}}},
                                       {"repetition_penalty", {{"penalty", "1.3"}}}};
  for (const int64_t V : {260, 32000}) {
    const int64_t B = 8;
    std::vector<float> all = test::random_values(static_cast<size_t>(B * V), 90 + V, 6.0f);
    all[5] = kNegInf;  // a filtered token, and ties
    all[V + 7] = all[V + 8] = all[V + 9];
    // Histories: each row saw a few ids (with repeats), lengths vary.
    const int64_t L = 16;
    std::vector<int32_t> hist(static_cast<size_t>(B * L));
    std::vector<int32_t> lens(static_cast<size_t>(B));
    std::vector<std::vector<int32_t>> host_hist(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) {
      lens[static_cast<size_t>(b)] = static_cast<int32_t>(3 + b);
      for (int64_t i = 0; i < L; ++i) {
        hist[static_cast<size_t>(b * L + i)] =
            static_cast<int32_t>((b * 37 + i * 11) % (V / 4 + 3));
      }
      host_hist[static_cast<size_t>(b)].assign(hist.begin() + b * L,
                                               hist.begin() + b * L + lens[static_cast<size_t>(b)]);
    }
    DeviceSamplingContext ctx;
    ctx.history = test::tensor_from_i32(be(), hist, {B, L});
    ctx.lengths = test::tensor_from_i32(be(), lens, {B});
    for (const HostCase& c : cases) {
      const auto sampler = make_sampler(c.name, c.options);
      Tensor t = rows(all, B);
      ASSERT_TRUE(sampler->apply_device(be(), t, ctx)) << c.name;
      const std::vector<float> device = values(t);
      for (int64_t b = 0; b < B; ++b) {
        std::vector<float> host = row_of(all, b, V);
        sampler->apply(host, host_hist[static_cast<size_t>(b)]);
        const std::vector<float> got = row_of(device, b, V);
        const std::string what = c.name + " " + c.options.begin()->second +
                                 " V=" + std::to_string(V) + " row " + std::to_string(b);
        EXPECT_EQ(kept(got), kept(host)) << what;
        size_t differ = 0;
        for (size_t i = 0; i < host.size(); ++i) differ += got[i] == host[i] ? 0 : 1;
        EXPECT_EQ(differ, 0u) << what;
      }
    }
  }
}

// ---- sample_rows --------------------------------------------------------------------------

TEST_F(DeviceSampling, ArgmaxTakesTheFirstLargestAndSkipsNaN) {
  Tensor t = rows({1, 5, 5, 2, kNaN, 7, 7, 0, kNegInf, kNegInf, kNegInf, kNegInf}, 3);
  EXPECT_EQ(draw(t, 1, 0, true), (std::vector<int32_t>{1, 1, 0}));
  // Without argmax a row with nothing finite still returns its argmax.
  EXPECT_EQ(draw(t, 1, 0, false)[2], 0);
  // A +inf max: the first +inf.
  t = rows({1, INFINITY, INFINITY}, 1);
  EXPECT_EQ(draw(t, 1, 0, false)[0], 1);
}

TEST_F(DeviceSampling, DrawsFollowTheSoftmaxChiSquare) {
  // 64 rows x 1563 steps = 100032 draws of one 8-token distribution at seed 2026. Critical value
  // of chi-square with 7 degrees of freedom at alpha = 0.001: 24.32.
  const std::vector<float> row = {0.0f, 1.0f, -1.0f, 2.0f, 0.5f, -3.0f, 1.5f, 0.25f};
  const int64_t B = 64, V = static_cast<int64_t>(row.size());
  std::vector<float> all;
  for (int64_t b = 0; b < B; ++b) all.insert(all.end(), row.begin(), row.end());
  Tensor t = rows(all, B);
  std::vector<int64_t> counts(static_cast<size_t>(V), 0);
  for (int64_t step = 0; step < 1563; ++step) {
    for (int32_t id : draw(t, 2026, step)) ++counts[static_cast<size_t>(id)];
  }
  EXPECT_LT(chi_square(counts, softmax(row)), 24.32);
}

TEST_F(DeviceSampling, DrawsOverALargeVocabularyFollowTheSoftmax) {
  // V = 32000 with 10 likely tokens scattered across lanes and the rest negligible but nonzero:
  // 4000 draws (the CPU emulation is slow at this width), chi-square over the 10 tokens plus "any
  // other" (10 dof, alpha 0.001: 29.59).
  const int64_t V = 32000, B = 8;
  std::vector<float> row(static_cast<size_t>(V), -30.0f);
  const std::vector<int32_t> ids = {3, 1023, 1024, 5000, 12345, 20000, 20001, 31999, 777, 16384};
  for (size_t i = 0; i < ids.size(); ++i) row[static_cast<size_t>(ids[i])] = 0.2f * float(i);
  std::vector<float> all;
  for (int64_t b = 0; b < B; ++b) all.insert(all.end(), row.begin(), row.end());
  Tensor t = rows(all, B);
  const std::vector<double> p = softmax(row);
  std::vector<double> probs;
  double rest = 1.0;
  for (int32_t id : ids) {
    probs.push_back(p[static_cast<size_t>(id)]);
    rest -= probs.back();
  }
  probs.push_back(rest);
  std::vector<int64_t> counts(probs.size(), 0);
  for (int64_t step = 0; step < 500; ++step) {
    for (int32_t id : draw(t, 99, step)) {
      const auto at = std::find(ids.begin(), ids.end(), id);
      ++counts[static_cast<size_t>(at - ids.begin())];
    }
  }
  EXPECT_LT(chi_square(counts, probs), 29.59);
}

TEST_F(DeviceSampling, RowsAndStepsDrawIndependently) {
  // Two rows of one uniform 4-token distribution: the 16 joint outcomes of (row 0, row 1) at one
  // step, and of (row 0 at step s, row 0 at s + 1), are uniform. 20000 pairs each; chi-square with
  // 15 dof at alpha 0.001: 37.70.
  Tensor t = rows({0, 0, 0, 0, 0, 0, 0, 0}, 2);
  std::vector<int64_t> joint_rows(16, 0), joint_steps(16, 0);
  int32_t previous = -1;
  for (int64_t step = 0; step < 20001; ++step) {
    const std::vector<int32_t> ids = draw(t, 5, step);
    if (step < 20000) ++joint_rows[static_cast<size_t>(ids[0] * 4 + ids[1])];
    if (previous >= 0) ++joint_steps[static_cast<size_t>(previous * 4 + ids[0])];
    previous = ids[0];
  }
  const std::vector<double> uniform(16, 1.0 / 16.0);
  EXPECT_LT(chi_square(joint_rows, uniform), 37.70);
  EXPECT_LT(chi_square(joint_steps, uniform), 37.70);
}

TEST_F(DeviceSampling, TheSameSeedGivesTheSameIds) {
  const int64_t B = 8, V = 260;
  Tensor t = rows(test::random_values(static_cast<size_t>(B * V), 3, 2.0f), B);
  std::vector<int32_t> a, b, c;
  for (int64_t step = 0; step < 50; ++step) {
    const std::vector<int32_t> x = draw(t, 42, step), y = draw(t, 42, step), z = draw(t, 43, step);
    a.insert(a.end(), x.begin(), x.end());
    b.insert(b.end(), y.begin(), y.end());
    c.insert(c.end(), z.begin(), z.end());
  }
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  // The step read from the device equals the host step.
  Tensor step = test::tensor_from_i32(be(), {17}, {1});
  Tensor ids = be().empty({B}, DType::kI32);
  be().sample_rows(t, 42, 0, step, false, ids);
  EXPECT_EQ(ints(ids), draw(t, 42, 17));
}

// ---- the chain on the device ----------------------------------------------------------------

TEST_F(DeviceSampling, TopKDrawsNeverLeaveTheKLargest) {
  const int64_t B = 8, V = 32000;
  const std::vector<float> all = test::random_values(static_cast<size_t>(B * V), 8, 3.0f);
  Tensor logits = rows(all, B);
  const std::vector<std::shared_ptr<Sampler>> chain = {
      make_sampler("top_k", {{"k", "5"}}), make_sampler("temperature", {{"value", "2.0"}})};
  std::vector<std::set<int32_t>> allowed(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    std::vector<float> row = row_of(all, b, V);
    std::vector<int32_t> order(static_cast<size_t>(V));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 5, order.end(),
                      [&](int32_t x, int32_t y) { return row[size_t(x)] > row[size_t(y)]; });
    allowed[static_cast<size_t>(b)].insert(order.begin(), order.begin() + 5);
  }
  Tensor ids = be().empty({B}, DType::kI32);
  std::set<int32_t> seen;
  for (int64_t step = 0; step < 50; ++step) {
    ASSERT_TRUE(sample_on_device(be(), chain, logits, DeviceSamplingContext{}, 11, step, ids));
    const std::vector<int32_t> got = ints(ids);
    for (int64_t b = 0; b < B; ++b) {
      ASSERT_TRUE(allowed[size_t(b)].count(got[size_t(b)]))
          << "row " << b << " drew " << got[size_t(b)];
      if (b == 0) seen.insert(got[0]);
    }
  }
  EXPECT_EQ(seen.size(), 5u);  // at temperature 2 every kept token comes up
  // The caller's logits are not modified.
  EXPECT_EQ(values(logits), all);
}

TEST_F(DeviceSampling, TopPDrawsFollowTheKeptSet) {
  // Probabilities 0.4, 0.3, 0.2, 0.1 at ids 1, 3, 0, 2 (repeated over 50 rows): p = 0.65 keeps
  // ids 1 and 3, drawn 4:3. 50 rows x 2000 steps; chi-square 1 dof at alpha 0.001: 10.83.
  const std::vector<float> row = {std::log(0.2f), std::log(0.4f), std::log(0.1f), std::log(0.3f)};
  const int64_t B = 50;
  std::vector<float> all;
  for (int64_t b = 0; b < B; ++b) all.insert(all.end(), row.begin(), row.end());
  Tensor logits = rows(all, B);
  const std::vector<std::shared_ptr<Sampler>> chain = {make_sampler("top_p", {{"p", "0.65"}})};
  Tensor ids = be().empty({B}, DType::kI32);
  std::vector<int64_t> counts(2, 0);
  for (int64_t step = 0; step < 2000; ++step) {
    ASSERT_TRUE(sample_on_device(be(), chain, logits, DeviceSamplingContext{}, 3, step, ids));
    for (int32_t id : ints(ids)) {
      ASSERT_TRUE(id == 1 || id == 3) << id;
      ++counts[id == 1 ? 0 : 1];
    }
  }
  EXPECT_LT(chi_square(counts, {4.0 / 7.0, 3.0 / 7.0}), 10.83);
}

TEST_F(DeviceSampling, GreedyChainsMatchPickToken) {
  const int64_t B = 8, V = 260;
  const std::vector<float> all = test::random_values(static_cast<size_t>(B * V), 21, 4.0f);
  std::vector<std::vector<int32_t>> histories;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int32_t> h = {2};
    // Each row has seen its own argmax, so the penalty changes the answer on some rows.
    std::vector<float> row = row_of(all, b, V);
    h.push_back(static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin()));
    histories.push_back(h);
  }
  const DeviceSamplingContext ctx = make_device_sampling_context(be(), histories, 8);
  const std::vector<std::shared_ptr<Sampler>> chain = {
      make_sampler("repetition_penalty", {{"penalty", "3.0"}}), make_sampler("greedy")};
  Tensor ids = be().empty({B}, DType::kI32);
  ASSERT_TRUE(sample_on_device(be(), chain, rows(all, B), ctx, 0, 0, ids));
  const std::vector<int32_t> got = ints(ids);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<float> row = row_of(all, b, V);
    EXPECT_EQ(got[size_t(b)], pick_token(row, chain, histories[size_t(b)], 0.5)) << b;
  }
}

// A third-party sampler with only the host path.
class HostOnlySampler final : public Sampler {
 public:
  void apply(std::span<float>, const std::vector<int32_t>&) const override {}
};

TEST_F(DeviceSampling, AChainWithAHostOnlySamplerIsDeclined) {
  Tensor logits = rows({1, 2, 3, 4}, 2);
  Tensor ids = test::tensor_from_i32(be(), {-7, -7}, {2});
  const auto host_only = std::make_shared<HostOnlySampler>();
  EXPECT_FALSE(sample_on_device(be(), {make_sampler("top_k", {{"k", "1"}}), host_only}, logits,
                                DeviceSamplingContext{}, 1, 0, ids));
  // repetition_penalty declines without a history on the device.
  EXPECT_FALSE(sample_on_device(be(), {make_sampler("repetition_penalty")}, logits,
                                DeviceSamplingContext{}, 1, 0, ids));
  EXPECT_EQ(ints(ids), (std::vector<int32_t>{-7, -7}));
  EXPECT_EQ(values(logits), (std::vector<float>{1, 2, 3, 4}));
  // An empty chain draws from the softmax.
  EXPECT_TRUE(sample_on_device(be(), {}, logits, DeviceSamplingContext{}, 1, 0, ids));
}

TEST_F(DeviceSampling, TheHistoryAdvancesOnTheDevice) {
  DeviceSamplingContext ctx = make_device_sampling_context(be(), {{2, 5}, {2}}, 3, true, 4);
  Tensor ids = test::tensor_from_i32(be(), {7, 8}, {2});
  append_device_history(be(), ctx, ids);
  EXPECT_EQ(ints(ctx.lengths), (std::vector<int32_t>{3, 2}));
  EXPECT_EQ(ints(ctx.step), (std::vector<int32_t>{5}));
  append_device_history(be(), ctx, ids);  // row 0 is full: left as it is
  EXPECT_EQ(ints(ctx.history), (std::vector<int32_t>{2, 5, 7, 2, 8, 8}));
  EXPECT_EQ(ints(ctx.lengths), (std::vector<int32_t>{3, 3}));
  EXPECT_EQ(ints(ctx.step), (std::vector<int32_t>{6}));
  EXPECT_THROW(make_device_sampling_context(be(), {{1, 2, 3}}, 2), UsageError);
  // The draw reads ctx.step: step 6 on the device, whatever the host says.
  Tensor logits = rows(test::random_values(2 * 260, 4, 3.0f), 2);
  Tensor out = be().empty({2}, DType::kI32);
  ASSERT_TRUE(sample_on_device(be(), {}, logits, ctx, 9, 123, out));
  EXPECT_EQ(ints(out), draw(logits, 9, 6));
}

}  // namespace
}  // namespace nnkit
