// Purpose: the record of a training run, RUN/run.json, beside the trainer's config.yaml (the
// resolved config), metrics.jsonl and plugins.json (nnkit/plugin_record.h). It holds what those
// do not: the command and the overrides as typed, the seed, the nnkit build (version, git commit,
// dirty tree), the machine (host, CPU and GPU models, threads, precision), the data file's
// identity (path, size, SHA-256 of its first 64 KiB), the parameter counts, and one attempt per
// `nnkit train` invocation (fresh or --resume) with how it ended. `nnkit runs` and `nnkit sweep`
// read it back as a RunOverview.
// Ownership: value types; RunRecorder writes one run's file for the life of one train command.
// Thread-safety: none; one recorder per run directory (the run lock already guarantees that).
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "args.h"
#include "commands.h"
#include "common.h"
#include "nnkit/trainer.h"

namespace nnkit::cli {

inline constexpr const char* kRunRecordFile = "run.json";

// How a run stands. kRunning: a process holds its lock now. kInterrupted: stopped by a signal
// (or killed outright) before train.steps; `train --resume` continues it.
enum class RunStatus { kRunning, kComplete, kInterrupted, kFailed, kUnrecorded };
std::string to_string(RunStatus status);

// Writes RUN/run.json when a train command starts (status running, a new attempt) and again
// when it ends. A resumed run keeps its first attempt's record and appends.
class RunRecorder {
 public:
  // `command_line` is the arguments after `nnkit train`; `data` the data file the run reads.
  RunRecorder(const std::filesystem::path& run_dir, const Session& session, const ParsedArgs& args,
              const Args& command_line, const std::filesystem::path& data, bool resume);
  // Records how the attempt ended: complete when it reached train.steps, else interrupted.
  void finish(const TrainSummary& summary, int64_t train_steps);
  // Records a failure (the exception's message) and leaves the run resumable by hand.
  void fail(const std::string& message);

 private:
  void write() const;
  std::filesystem::path run_dir_;
  nlohmann::json record_;
  double started_ = 0;  // steady-clock seconds at construction
};

// What `runs ls`, `runs show` and `sweep` summaries show of one run directory.
struct RunOverview {
  std::filesystem::path dir;
  std::string name;  // the directory's name
  RunStatus status = RunStatus::kUnrecorded;
  int64_t last_step = 0;
  int64_t total_steps = 0;  // train.steps of the last attempt; 0 when unknown
  std::optional<double> final_val_loss, best_val_loss, tokens_per_s;
  double wall_s = 0;  // summed over the attempts that ended
  int64_t params_total = 0, params_active = 0;
  std::vector<std::string> overrides;
  std::string error;      // the failure's message, for kFailed
  nlohmann::json record;  // run.json as read (null when absent)
};

// Reads RUN_DIR's run.json and metrics.jsonl. Nullopt when RUN_DIR holds neither (not a run).
std::optional<RunOverview> read_run_overview(const std::filesystem::path& run_dir);

// The data file's identity as recorded: {path, size, header_bytes, header_sha256}.
nlohmann::json data_identity_json(const std::filesystem::path& data);

}  // namespace nnkit::cli
