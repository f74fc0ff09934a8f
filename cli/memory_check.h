// Purpose: the memory check train, eval and generate run before they allocate anything: the
// estimate of nnkit/memory_estimate.h against the host's available memory (or a GPU's free
// memory, from Backend::device_memory()), refused with the
// numbers and the fixes; --skip-memory-check runs anyway. Logged at debug level when it passes.
#pragma once

#include <string>

#include "args.h"
#include "common.h"
#include "nnkit/memory_estimate.h"

namespace nnkit::cli {

inline constexpr const char* kSkipMemoryCheckFlag = "--skip-memory-check";
FlagSpec skip_memory_check_flag();

// Estimates the memory of `shape` for the session's model (built without a backend, so nothing
// is allocated) and throws Error("memory", ...) when it exceeds what the host has (CPU backend)
// or the device's free memory (a GPU backend: `backend` when the caller made it already, else a
// backend made here for the query and released).
MemoryEstimate check_memory_before(const Session& session, const MemoryShape& shape,
                                   const ParsedArgs& args, const std::string& command,
                                   Backend* backend = nullptr);

}  // namespace nnkit::cli
