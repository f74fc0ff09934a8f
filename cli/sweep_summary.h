// Purpose: a sweep's results as files in its output folder: summary.md (a Markdown table for
// people), summary.csv (the same rows at full precision, for programs: the numbers equal what
// each run's metrics.jsonl holds) and curves.svg (the runs' metric curves with a legend). They
// are rewritten from the run directories after every run, so a stopped sweep has them too.
// Ownership: value types. Thread-safety: none needed (one sweep per process).
#pragma once

#include <filesystem>
#include <optional>
#include <utility>
#include <vector>

#include "sweep_plan.h"
#include "sweep_spec.h"

namespace nnkit::cli {

// Writes OUT/summary.md, summary.csv and curves.svg atomically; `y_range` fixes the curves'
// value axis. Throws IoError.
void write_sweep_summary(const SweepSpec& sweep, const std::filesystem::path& out,
                         const std::vector<PlannedRun>& runs,
                         const std::optional<std::pair<double, double>>& y_range);

}  // namespace nnkit::cli
