// Purpose: tests of the `schedule/*` plugins: warmup values, the peak, the cosine midpoint, the
// final value (= min_lr_ratio, also past the end), and the constant and linear shapes.
#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "nnkit/error.h"
#include "nnkit/optim.h"
#include "support/test_support.h"

namespace nnkit {
namespace {

std::shared_ptr<Schedule> make_schedule(const std::string& name,
                                        const std::map<std::string, std::string>& values = {}) {
  return test::create<Schedule>("schedule", name, values);
}

TEST(WarmupCosine, WarmupPeakMidpointAndEnd) {
  auto schedule = make_schedule("warmup_cosine", {{"warmup_steps", "10"}, {"min_lr_ratio", "0.1"}});
  constexpr int64_t kTotal = 111;  // decay over steps 10..110: midpoint at 60
  EXPECT_DOUBLE_EQ(schedule->factor(0, kTotal), 0.1);
  EXPECT_DOUBLE_EQ(schedule->factor(4, kTotal), 0.5);
  EXPECT_DOUBLE_EQ(schedule->factor(9, kTotal), 1.0);   // warmup reaches the peak
  EXPECT_DOUBLE_EQ(schedule->factor(10, kTotal), 1.0);  // cosine starts at the peak
  EXPECT_NEAR(schedule->factor(60, kTotal), 0.55, 1e-12);
  EXPECT_NEAR(schedule->factor(110, kTotal), 0.1, 1e-12);
  EXPECT_NEAR(schedule->factor(500, kTotal), 0.1, 1e-12);  // clamped past the end
  for (int64_t step = 10; step < 110; ++step) {
    EXPECT_GT(schedule->factor(step, kTotal), schedule->factor(step + 1, kTotal)) << step;
  }
}

TEST(WarmupCosine, Defaults) {
  auto schedule = make_schedule("warmup_cosine");  // warmup 100, min_lr_ratio 0.1
  EXPECT_DOUBLE_EQ(schedule->factor(0, 1000), 0.01);
  EXPECT_DOUBLE_EQ(schedule->factor(99, 1000), 1.0);
  EXPECT_NEAR(schedule->factor(999, 1000), 0.1, 1e-12);
}

TEST(WarmupCosine, NoWarmupStartsAtThePeak) {
  auto schedule = make_schedule("warmup_cosine", {{"warmup_steps", "0"}, {"min_lr_ratio", "0"}});
  EXPECT_DOUBLE_EQ(schedule->factor(0, 101), 1.0);
  EXPECT_NEAR(schedule->factor(50, 101), 0.5, 1e-12);
  EXPECT_NEAR(schedule->factor(100, 101), 0.0, 1e-12);
}

TEST(Constant, WarmupThenOne) {
  EXPECT_DOUBLE_EQ(make_schedule("constant")->factor(0, 10), 1.0);
  EXPECT_DOUBLE_EQ(make_schedule("constant")->factor(9, 10), 1.0);
  auto schedule = make_schedule("constant", {{"warmup_steps", "4"}});
  EXPECT_DOUBLE_EQ(schedule->factor(0, 100), 0.25);
  EXPECT_DOUBLE_EQ(schedule->factor(2, 100), 0.75);
  EXPECT_DOUBLE_EQ(schedule->factor(3, 100), 1.0);
  EXPECT_DOUBLE_EQ(schedule->factor(99, 100), 1.0);
  EXPECT_DOUBLE_EQ(schedule->factor(1000, 100), 1.0);
}

TEST(Linear, DecaysToZeroByDefault) {
  auto schedule = make_schedule("linear");
  EXPECT_DOUBLE_EQ(schedule->factor(0, 101), 1.0);
  EXPECT_NEAR(schedule->factor(25, 101), 0.75, 1e-12);
  EXPECT_NEAR(schedule->factor(50, 101), 0.5, 1e-12);
  EXPECT_NEAR(schedule->factor(100, 101), 0.0, 1e-12);
  EXPECT_NEAR(schedule->factor(200, 101), 0.0, 1e-12);
}

TEST(Linear, WarmupThenDecayToMinRatio) {
  auto schedule = make_schedule("linear", {{"warmup_steps", "10"}, {"min_lr_ratio", "0.2"}});
  EXPECT_DOUBLE_EQ(schedule->factor(0, 111), 0.1);
  EXPECT_DOUBLE_EQ(schedule->factor(9, 111), 1.0);
  EXPECT_DOUBLE_EQ(schedule->factor(10, 111), 1.0);
  EXPECT_NEAR(schedule->factor(60, 111), 0.6, 1e-12);
  EXPECT_NEAR(schedule->factor(110, 111), 0.2, 1e-12);
}

TEST(Schedules, RunShorterThanWarmupStaysInWarmup) {
  auto schedule = make_schedule("warmup_cosine", {{"warmup_steps", "10"}});
  EXPECT_DOUBLE_EQ(schedule->factor(4, 5), 0.5);
}

TEST(Schedules, InvalidOptions) {
  EXPECT_THROW(make_schedule("warmup_cosine", {{"min_lr_ratio", "1.5"}}), ConfigError);
  EXPECT_THROW(make_schedule("linear", {{"warmup_steps", "-1"}}), ConfigError);
  EXPECT_THROW(make_schedule("constant", {{"min_lr_ratio", "0.1"}}), ConfigError);  // undeclared
}

}  // namespace
}  // namespace nnkit
