// LossScaler (core/src/train/loss_scaler.h): growth after exactly growth_interval clean steps,
// backoff and skip on overflow, counter reset, floor and ceiling, the disabled scaler, state
// round trip and the messages for malformed state or options.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "nnkit/error.h"
#include "train/loss_scaler.h"

namespace nnkit {
namespace {

void clean_steps(LossScaler& scaler, int64_t n) {
  for (int64_t i = 0; i < n; ++i) ASSERT_FALSE(scaler.update(false));
}

TEST(LossScaler, StartsAt2To16AndGrowsAfterExactlyGrowthIntervalCleanSteps) {
  LossScaler scaler(true);
  EXPECT_TRUE(scaler.enabled());
  EXPECT_EQ(scaler.scale(), 65536.0f);
  clean_steps(scaler, 1999);
  EXPECT_EQ(scaler.scale(), 65536.0f) << "one clean step short of the interval";
  EXPECT_EQ(scaler.clean_steps(), 1999);
  EXPECT_FALSE(scaler.update(false));
  EXPECT_EQ(scaler.scale(), 131072.0f);
  EXPECT_EQ(scaler.clean_steps(), 0) << "the counter restarts after growth";
  clean_steps(scaler, 2000);
  EXPECT_EQ(scaler.scale(), 262144.0f);
  EXPECT_EQ(scaler.skipped_steps(), 0);
}

TEST(LossScaler, OverflowSkipsHalvesTheScaleAndRestartsTheCounter) {
  LossScalerOptions options;
  options.growth_interval = 10;
  LossScaler scaler(true, options);
  clean_steps(scaler, 9);
  EXPECT_TRUE(scaler.update(true)) << "non-finite gradients: skip the step";
  EXPECT_EQ(scaler.scale(), 32768.0f);
  EXPECT_EQ(scaler.clean_steps(), 0);
  EXPECT_EQ(scaler.skipped_steps(), 1);
  // The nine clean steps before the overflow no longer count towards growth.
  clean_steps(scaler, 9);
  EXPECT_EQ(scaler.scale(), 32768.0f);
  EXPECT_FALSE(scaler.update(false));
  EXPECT_EQ(scaler.scale(), 65536.0f);
  EXPECT_TRUE(scaler.update(true));
  EXPECT_TRUE(scaler.update(true));
  EXPECT_EQ(scaler.scale(), 16384.0f);
  EXPECT_EQ(scaler.skipped_steps(), 3) << "skipped steps add up over the run";
}

TEST(LossScaler, BackoffGoesBelowOneAndStopsAtTheFloor) {
  LossScaler scaler(true);
  for (int i = 0; i < 16; ++i) EXPECT_TRUE(scaler.update(true));
  EXPECT_EQ(scaler.scale(), 1.0f);
  EXPECT_TRUE(scaler.update(true));
  EXPECT_EQ(scaler.scale(), 0.5f) << "below 1: the trainer counts such a skip as a bad step";
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(scaler.update(true));
  EXPECT_EQ(scaler.scale(), scaler.options().min_scale);
  EXPECT_EQ(scaler.options().min_scale, 1.0f / 16777216.0f);
  EXPECT_EQ(scaler.skipped_steps(), 117);
}

TEST(LossScaler, GrowthStopsAtTheCeiling) {
  LossScalerOptions options;
  options.growth_interval = 1;
  options.max_scale = 262144.0f;
  LossScaler scaler(true, options);
  clean_steps(scaler, 10);
  EXPECT_EQ(scaler.scale(), 262144.0f);
  EXPECT_EQ(scaler.clean_steps(), 0);
}

TEST(LossScaler, DisabledStaysAtOneAndNeverSkips) {
  LossScaler scaler(false);
  EXPECT_FALSE(scaler.enabled());
  EXPECT_EQ(scaler.scale(), 1.0f);
  for (int i = 0; i < 5000; ++i) {
    // Non-finite gradients are the trainer's skip rule's business, not the scaler's.
    EXPECT_FALSE(scaler.update(i % 3 == 0));
  }
  EXPECT_EQ(scaler.scale(), 1.0f);
  EXPECT_EQ(scaler.skipped_steps(), 0);
  EXPECT_EQ(scaler.clean_steps(), 0);
  const LossScaler restored = LossScaler::restore(scaler.save());
  EXPECT_FALSE(restored.enabled());
  EXPECT_EQ(restored.scale(), 1.0f);
}

TEST(LossScaler, StateRoundTripsAndTheRestoredScalerContinuesIdentically) {
  LossScalerOptions options;
  options.growth_interval = 7;
  options.backoff_factor = 0.25f;
  LossScaler original(true, options);
  clean_steps(original, 7);  // grows to 2^17
  original.update(true);     // backs off to 2^15
  clean_steps(original, 3);  // 3 towards the next growth
  const std::string state = original.save();
  EXPECT_EQ(state.find('\n'), std::string::npos) << "one line: " << state;

  LossScaler restored = LossScaler::restore(state);
  EXPECT_TRUE(restored.enabled());
  EXPECT_EQ(restored.scale(), original.scale());
  EXPECT_EQ(restored.scale(), 32768.0f);
  EXPECT_EQ(restored.clean_steps(), 3);
  EXPECT_EQ(restored.skipped_steps(), 1);
  EXPECT_EQ(restored.options().growth_interval, 7);
  EXPECT_EQ(restored.options().backoff_factor, 0.25f);
  EXPECT_EQ(restored.save(), state);

  const std::vector<bool> pattern = {false, false, false, false, true, false, true, true, false};
  for (bool overflow : pattern) {
    EXPECT_EQ(restored.update(overflow), original.update(overflow));
    EXPECT_EQ(restored.scale(), original.scale());
    EXPECT_EQ(restored.clean_steps(), original.clean_steps());
  }
}

TEST(LossScaler, AScaleThatIsNotAPowerOfTwoRoundTripsExactly) {
  LossScalerOptions options;
  options.initial_scale = 1000.1f;
  options.growth_factor = 1.3f;
  options.growth_interval = 1;
  LossScaler scaler(true, options);
  clean_steps(scaler, 5);
  EXPECT_EQ(LossScaler::restore(scaler.save()).scale(), scaler.scale());
}

std::string restore_error(const std::string& state) {
  try {
    LossScaler::restore(state);
  } catch (const IoError& e) {
    EXPECT_EQ(e.component(), "loss_scaler");
    EXPECT_NE(std::string(e.what()).find("malformed loss scaler state"), std::string::npos)
        << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error for: " << state;
  return "";
}

// save() of a scaler with a few steps behind it, with one field replaced by `replacement`
// (the whole `"name":value` text), or removed when replacement is empty.
std::string with_field(const std::string& name, const std::string& replacement) {
  LossScaler scaler(true);
  clean_steps(scaler, 3);
  std::string state = scaler.save();
  const size_t at = state.find("\"" + name + "\":");
  EXPECT_NE(at, std::string::npos) << name << " in " << state;
  size_t end = state.find_first_of(",}", at);
  if (replacement.empty() && state[end] == ',') ++end;  // drop the separator with the field
  state.replace(at, end - at, replacement);
  return state;
}

TEST(LossScaler, MalformedStateSaysWhatIsWrong) {
  EXPECT_NE(restore_error("").find("not JSON"), std::string::npos);
  EXPECT_NE(restore_error("scale=65536").find("not JSON"), std::string::npos);
  EXPECT_NE(restore_error("[1, 2]").find("not a JSON object"), std::string::npos);
  EXPECT_NE(restore_error("{}").find("field 'version' is missing"), std::string::npos);
  EXPECT_NE(restore_error(with_field("version", "\"version\":2")).find("format version 2"),
            std::string::npos);
  EXPECT_NE(restore_error(with_field("scale", "")).find("field 'scale' is missing"),
            std::string::npos);
  EXPECT_NE(restore_error(with_field("scale", "\"scale\":\"big\""))
                .find("field 'scale' is \"big\", not a number"),
            std::string::npos);
  EXPECT_NE(restore_error(with_field("clean_steps", "\"clean_steps\":2.5"))
                .find("field 'clean_steps' is 2.5, not an integer"),
            std::string::npos);
  EXPECT_NE(restore_error(with_field("enabled", "\"enabled\":1")).find("not a boolean"),
            std::string::npos);
  EXPECT_NE(restore_error(with_field("clean_steps", "\"clean_steps\":2000"))
                .find("clean_steps 2000 is outside [0, growth_interval)"),
            std::string::npos);
  EXPECT_NE(restore_error(with_field("skipped_steps", "\"skipped_steps\":-1")).find("negative"),
            std::string::npos);
  EXPECT_NE(restore_error(with_field("scale", "\"scale\":1e40")).find("not a finite float"),
            std::string::npos);
  EXPECT_NE(
      restore_error(with_field("scale", "\"scale\":1e30")).find("outside [min_scale, max_scale]"),
      std::string::npos);
  EXPECT_NE(restore_error(with_field("backoff_factor", "\"backoff_factor\":1.5"))
                .find("backoff_factor must lie in (0, 1)"),
            std::string::npos);
  EXPECT_NE(restore_error(with_field("enabled", "\"enabled\":false")).find("not 1 for a disabled"),
            std::string::npos);
  // Long damaged text is cut in the message.
  const std::string message = restore_error(std::string(1000, 'x'));
  EXPECT_LT(message.size(), 400u) << message;
}

TEST(LossScaler, OptionsOutOfRangeAreConfigErrors) {
  auto error_of = [](const LossScalerOptions& options) -> std::string {
    try {
      LossScaler scaler(true, options);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  };
  LossScalerOptions options;
  options.growth_interval = 0;
  EXPECT_NE(error_of(options).find("[loss_scaler] growth_interval must be >= 1"),
            std::string::npos);
  options = {};
  options.growth_factor = 1.0f;
  EXPECT_NE(error_of(options).find("growth_factor must be finite and > 1"), std::string::npos);
  options = {};
  options.backoff_factor = 0.0f;
  EXPECT_NE(error_of(options).find("backoff_factor"), std::string::npos);
  options = {};
  options.initial_scale = 1e9f;
  EXPECT_NE(error_of(options).find("must lie in [min_scale"), std::string::npos);
  options = {};
  options.min_scale = 0.0f;
  EXPECT_NE(error_of(options).find("finite and > 0"), std::string::npos);
}

}  // namespace
}  // namespace nnkit
