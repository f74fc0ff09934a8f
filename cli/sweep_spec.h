// Purpose: the sweep file of `nnkit sweep`, read and checked before any run starts:
//   sweep:
//     base: configs/tiny.yaml                # the config every run starts from
//     overrides: ['train.steps=300']         # applied to every run, before its own
//     grid: {model.moe.router.top_k: [1, 2]} # dotted key -> values; every combination is a run
//     list: [{name: dense, overrides: ['model.moe=null', ...]}]  # named runs, in order
//     metric: val_loss                       # what summaries rank by (val_loss or loss)
// Every error names the sweep file with line:column and says how to fix it. Whether a key
// exists in the config is checked later, by resolving each run against the base
// (sweep.cpp), so that plugins' own option names count.
// Ownership: value types. Thread-safety: pure functions apart from reading the file.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace nnkit::cli {

struct SweepRun {
  std::string name;                    // its run directory's name under the sweep's --out
  std::vector<std::string> overrides;  // "key.path=value", applied to the base in order
  // For each override, where the sweep file set it ("sweep.yaml:5:5"), for messages.
  std::vector<std::string> origins;
  std::vector<std::string> keys;  // the dotted key of each override
};

struct SweepSpec {
  std::filesystem::path file;
  std::filesystem::path base;  // resolved: beside the sweep file, else from the working dir
  std::string metric = "val_loss";
  std::vector<SweepRun> runs;  // grid combinations first (last key varies fastest), then list
};

// Throws ConfigError for a missing or malformed file, an unknown key under sweep:, a missing
// base file, an empty grid or value list, a list entry without a name or with a name used twice,
// or an override without '='.
SweepSpec load_sweep(const std::filesystem::path& file);

}  // namespace nnkit::cli
