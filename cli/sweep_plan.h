// Purpose: planning a sweep before any run starts: each run's config resolved against the base
// exactly as its `nnkit train` will resolve it (so an unknown key fails at once, with the sweep
// file's position of the override), its parameter counts and data file checked, and, from what
// its run directory holds, whether it is skipped, resumed or started afresh.
// Ownership: value types. Thread-safety: none needed (the sweep plans on one thread).
#pragma once

#include <cstdint>
#include <filesystem>

#include "args.h"
#include "sweep_spec.h"

namespace nnkit::cli {

// How a run of the sweep starts: already complete (skipped), afresh, or from its checkpoint.
enum class Start { kSkip, kFresh, kResume };

struct PlannedRun {
  SweepRun run;
  std::filesystem::path dir;
  int64_t steps = 0;
  int64_t params_total = 0, params_active = 0;
  bool on_cpu = true;
  Start start = Start::kFresh;
};

// Throws ConfigError naming the run, the override's sweep-file position and the fix.
PlannedRun plan_run(const SweepSpec& sweep, const SweepRun& run, const std::filesystem::path& out,
                    const ParsedArgs& args);
// What the run directory says about how to continue; throws ConfigError when it holds a run with
// other overrides and IoError when another process is using it.
Start choose_start(const PlannedRun& planned);

}  // namespace nnkit::cli
