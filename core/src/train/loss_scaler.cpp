// Purpose: see loss_scaler.h.
#include "train/loss_scaler.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "nnkit/error.h"

namespace nnkit {

namespace {

constexpr const char* kComponent = "loss_scaler";
constexpr int kStateVersion = 1;

// What is wrong with `options`, or "" when nothing is. Shared by the constructor (a caller's
// mistake: ConfigError) and restore (a damaged checkpoint: IoError).
std::string options_problem(const LossScalerOptions& o) {
  auto positive_finite = [](float v) { return std::isfinite(v) && v > 0.0f; };
  if (!positive_finite(o.min_scale) || !positive_finite(o.max_scale) ||
      !positive_finite(o.initial_scale)) {
    return "initial_scale, min_scale and max_scale must be finite and > 0";
  }
  if (!(o.min_scale <= o.initial_scale && o.initial_scale <= o.max_scale)) {
    return "initial_scale (" + std::to_string(o.initial_scale) + ") must lie in [min_scale (" +
           std::to_string(o.min_scale) + "), max_scale (" + std::to_string(o.max_scale) + ")]";
  }
  if (o.growth_interval < 1) return "growth_interval must be >= 1";
  if (!std::isfinite(o.growth_factor) || o.growth_factor <= 1.0f) {
    return "growth_factor must be finite and > 1";
  }
  if (!(o.backoff_factor > 0.0f && o.backoff_factor < 1.0f)) {
    return "backoff_factor must lie in (0, 1)";
  }
  return "";
}

[[noreturn]] void malformed(const std::string& state, const std::string& why) {
  // Enough of the text to recognise it, not a whole damaged file.
  const std::string shown = state.size() > 120 ? state.substr(0, 120) + "..." : state;
  throw IoError(kComponent, "malformed loss scaler state '" + shown + "': " + why +
                                " (the checkpoint's trainer.json may be damaged)");
}

enum class Kind { kBoolean, kInteger, kNumber };

const nlohmann::json& field(const nlohmann::json& object, const char* name, Kind kind,
                            const std::string& state) {
  const auto it = object.find(name);
  if (it == object.end()) malformed(state, std::string("field '") + name + "' is missing");
  const bool ok = kind == Kind::kBoolean   ? it->is_boolean()
                  : kind == Kind::kInteger ? it->is_number_integer()
                                           : it->is_number();
  if (!ok) {
    const char* expected = kind == Kind::kBoolean   ? "a boolean"
                           : kind == Kind::kInteger ? "an integer"
                                                    : "a number";
    malformed(state, std::string("field '") + name + "' is " + it->dump() + ", not " + expected);
  }
  return *it;
}

float float_field(const nlohmann::json& object, const char* name, const std::string& state) {
  const double value = field(object, name, Kind::kNumber, state).get<double>();
  const float narrowed = static_cast<float>(value);
  if (!std::isfinite(narrowed)) {
    malformed(state, std::string("field '") + name + "' is not a finite float");
  }
  return narrowed;
}

}  // namespace

LossScaler::LossScaler(bool enabled, const LossScalerOptions& options)
    : enabled_(enabled), options_(options), scale_(enabled ? options.initial_scale : 1.0f) {
  if (const std::string problem = options_problem(options); !problem.empty()) {
    throw ConfigError(kComponent, problem);
  }
}

bool LossScaler::update(bool found_non_finite) {
  if (!enabled_) return false;
  if (found_non_finite) {
    scale_ = std::max(scale_ * options_.backoff_factor, options_.min_scale);
    clean_steps_ = 0;
    ++skipped_steps_;
    return true;
  }
  if (++clean_steps_ >= options_.growth_interval) {
    scale_ = std::min(scale_ * options_.growth_factor, options_.max_scale);
    clean_steps_ = 0;
  }
  return false;
}

std::string LossScaler::save() const {
  // Floats go out as doubles: every float is exactly a double, so the text round-trips.
  const nlohmann::json state{
      {"version", kStateVersion},
      {"enabled", enabled_},
      {"scale", static_cast<double>(scale_)},
      {"clean_steps", clean_steps_},
      {"skipped_steps", skipped_steps_},
      {"initial_scale", static_cast<double>(options_.initial_scale)},
      {"growth_interval", options_.growth_interval},
      {"growth_factor", static_cast<double>(options_.growth_factor)},
      {"backoff_factor", static_cast<double>(options_.backoff_factor)},
      {"min_scale", static_cast<double>(options_.min_scale)},
      {"max_scale", static_cast<double>(options_.max_scale)},
  };
  return state.dump();
}

LossScaler LossScaler::restore(const std::string& state) {
  nlohmann::json object;
  try {
    object = nlohmann::json::parse(state);
  } catch (const nlohmann::json::exception& e) {
    malformed(state, std::string("not JSON (") + e.what() + ")");
  }
  if (!object.is_object()) malformed(state, "not a JSON object");
  const int64_t version = field(object, "version", Kind::kInteger, state).get<int64_t>();
  if (version != kStateVersion) {
    malformed(state, "format version " + std::to_string(version) + "; this nnkit reads version " +
                         std::to_string(kStateVersion));
  }

  LossScalerOptions options;
  options.initial_scale = float_field(object, "initial_scale", state);
  options.growth_interval = field(object, "growth_interval", Kind::kInteger, state).get<int64_t>();
  options.growth_factor = float_field(object, "growth_factor", state);
  options.backoff_factor = float_field(object, "backoff_factor", state);
  options.min_scale = float_field(object, "min_scale", state);
  options.max_scale = float_field(object, "max_scale", state);
  if (const std::string problem = options_problem(options); !problem.empty()) {
    malformed(state, problem);
  }
  const bool enabled = field(object, "enabled", Kind::kBoolean, state).get<bool>();
  const float scale = float_field(object, "scale", state);
  const int64_t clean = field(object, "clean_steps", Kind::kInteger, state).get<int64_t>();
  const int64_t skipped = field(object, "skipped_steps", Kind::kInteger, state).get<int64_t>();

  if (enabled ? !(scale >= options.min_scale && scale <= options.max_scale) : scale != 1.0f) {
    malformed(state, "scale " + std::to_string(scale) +
                         (enabled ? " is outside [min_scale, max_scale]"
                                  : " is not 1 for a disabled scaler"));
  }
  if (clean < 0 || clean >= options.growth_interval) {
    malformed(state, "clean_steps " + std::to_string(clean) + " is outside [0, growth_interval)");
  }
  if (skipped < 0) malformed(state, "skipped_steps " + std::to_string(skipped) + " is negative");

  LossScaler scaler(enabled, options);
  scaler.scale_ = scale;
  scaler.clean_steps_ = clean;
  scaler.skipped_steps_ = skipped;
  return scaler;
}

}  // namespace nnkit
