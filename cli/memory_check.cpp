// Purpose: see memory_check.h.
#include "memory_check.h"

#include "nnkit/logging.h"
#include "nnkit/model.h"

namespace nnkit::cli {

FlagSpec skip_memory_check_flag() {
  return {kSkipMemoryCheckFlag, "",
          "run even when the memory estimate exceeds the available memory"};
}

MemoryEstimate check_memory_before(const Session& session, const MemoryShape& shape,
                                   const ParsedArgs& args, const std::string& command) {
  // Counting parameters needs the components, not a backend (as in `nnkit validate`).
  const Transformer counter(session.config, *session.registry, nullptr);
  const MemoryEstimate estimate = estimate_memory(session.config, counter.parameter_count(), shape);
  const auto limit = host_memory_available();
  logger()->debug("memory estimate: {} ({}); available: {}", format_bytes(estimate.total()),
                  describe(estimate), limit ? format_bytes(limit->bytes) : "unknown");
  if (!args.has(kSkipMemoryCheckFlag)) {
    check_memory(estimate, session.config, shape, limit, command, kSkipMemoryCheckFlag);
  }
  return estimate;
}

}  // namespace nnkit::cli
