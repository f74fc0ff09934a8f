// Purpose: the one logger every part of nnkit writes to (spdlog, named "nnkit"), shared by the
// core and the plugins so that --log-level governs all of them.
// Ownership: the logger lives in the core library for the life of the process.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>

#include "nnkit/export.h"

namespace nnkit {

NNKIT_API std::shared_ptr<spdlog::logger> logger();
// "trace", "debug", "info", "warn", "error", "off"; throws UsageError otherwise.
NNKIT_API void set_log_level(const std::string& level);

}  // namespace nnkit
