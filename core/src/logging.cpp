// Purpose: the process-wide nnkit logger (to stderr, so stdout stays clean for --json output).
#include "nnkit/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include "nnkit/error.h"

namespace nnkit {

std::shared_ptr<spdlog::logger> logger() {
  static std::shared_ptr<spdlog::logger> instance = [] {
    auto log = spdlog::stderr_color_mt("nnkit");
    log->set_pattern("[%H:%M:%S] [%^%l%$] %v");
    log->set_level(spdlog::level::info);
    return log;
  }();
  return instance;
}

void set_log_level(const std::string& level) {
  const spdlog::level::level_enum parsed = spdlog::level::from_str(level);
  if (parsed == spdlog::level::off && level != "off") {
    throw UsageError(
        "cli", "unknown log level '" + level + "'; use trace, debug, info, warn, error or off");
  }
  logger()->set_level(parsed);
}

}  // namespace nnkit
