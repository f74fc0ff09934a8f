// Purpose: see memory_check.h.
#include "memory_check.h"

#include "nnkit/backend.h"
#include "nnkit/logging.h"
#include "nnkit/model.h"

namespace nnkit::cli {

FlagSpec skip_memory_check_flag() {
  return {kSkipMemoryCheckFlag, "",
          "run even when the memory estimate exceeds the available memory"};
}

namespace {

// A GPU backend's free device memory; nullopt when the backend cannot say (a host backend).
std::optional<MemoryLimit> device_memory_available(const Session& session, Backend* backend) {
  std::shared_ptr<Backend> probe;
  if (backend == nullptr) {  // train: the trainer makes its own backend later
    probe = create_backend(session);
    backend = probe.get();
  }
  const std::optional<DeviceMemory> memory = backend->device_memory();
  if (!memory) return std::nullopt;
  return MemoryLimit{memory->free, "free on " + backend->id() + ", of " +
                                       format_bytes(memory->total) + " (cudaMemGetInfo)"};
}

}  // namespace

MemoryEstimate check_memory_before(const Session& session, const MemoryShape& shape,
                                   const ParsedArgs& args, const std::string& command,
                                   Backend* backend) {
  // Counting parameters needs the components, not a backend (as in `nnkit validate`).
  const Transformer counter(session.config, *session.registry, nullptr);
  const MemoryEstimate estimate = estimate_memory(session.config, counter.parameter_count(), shape);
  const bool skip = args.has(kSkipMemoryCheckFlag);
  const auto limit = estimate.device == "cpu" ? host_memory_available()
                     : skip                   ? std::nullopt
                                              : device_memory_available(session, backend);
  logger()->debug("memory estimate: {} ({}); available: {}", format_bytes(estimate.total()),
                  describe(estimate), limit ? format_bytes(limit->bytes) : "unknown");
  if (!skip) {
    check_memory(estimate, session.config, shape, limit, command, kSkipMemoryCheckFlag);
  }
  return estimate;
}

}  // namespace nnkit::cli
