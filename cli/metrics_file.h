// Purpose: reading a run's metrics.jsonl (written by the trainer, one JSON object per line) into
// the series that `plot`, `runs`, `sweep` and the TensorBoard export share: training and
// validation loss, throughput and the per-layer MoE statistics. A line cut short by a kill is
// skipped, as the trainer itself does when it resumes.
// Ownership: value types. Thread-safety: pure functions apart from reading the file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace nnkit::cli {

struct Point {
  double step = 0;
  double value = 0;
};

struct RunMetrics {
  std::vector<Point> loss;          // training loss by step
  std::vector<Point> val_loss;      // validation loss by step (step 0: the untrained model)
  std::vector<Point> tokens_per_s;  // throughput by step
  // Every numeric scalar field by name ("loss", "lr", "grad_norm", ...), for exporters.
  std::map<std::string, std::vector<Point>> scalars;
  // Per MoE layer, by step: the largest share of routed slots any expert received (1/n_experts
  // is perfect balance), and the share of slots the capacity limit dropped.
  std::vector<std::vector<Point>> max_expert_load;
  std::vector<std::vector<Point>> dropped_fraction;
  int64_t last_step = 0;  // the highest step a training line reached; 0 when none did

  // Mean of the throughput over the training lines; nullopt without any.
  std::optional<double> mean_tokens_per_s() const;
  // The metric ("val_loss", "loss", or any scalar) at its last step, and its smallest value.
  std::optional<double> final_value(const std::string& metric) const;
  std::optional<double> best_value(const std::string& metric) const;
  const std::vector<Point>* series(const std::string& metric) const;
};

// Reads FILE; returns nullopt when it does not exist. Throws IoError when it cannot be read.
std::optional<RunMetrics> read_run_metrics(const std::filesystem::path& file);

}  // namespace nnkit::cli
