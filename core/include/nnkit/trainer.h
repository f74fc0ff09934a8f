// Purpose: the training loop: micro-batches with gradient accumulation, auxiliary MoE losses,
// global-norm clipping, AdamW (or any optim/* plugin) with a schedule/* plugin, periodic
// validation, metrics.jsonl, atomic checkpoints, exact resume, non-finite-loss handling and
// Ctrl-C. One Trainer drives one run directory.
// Ownership: the Trainer owns the model, optimizer, schedule and data it builds from the
// RunConfig; it borrows the Registry (which must outlive it).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "nnkit/config.h"
#include "nnkit/export.h"
#include "nnkit/registry.h"

namespace nnkit {

struct TrainRequest {
  RunConfig config;
  const Registry* registry = nullptr;
  std::filesystem::path run_dir;         // created if missing; must be writable
  bool resume = false;                   // continue from the newest checkpoint in run_dir
  std::filesystem::path data;            // token file; empty = config.train.data
  bool progress_bar = false;             // redraw one line on a TTY instead of log lines
  std::function<bool()> stop_requested;  // polled after every step (Ctrl-C)
};

struct TrainSummary {
  int64_t first_step = 0;  // step the run started (or resumed) at
  int64_t last_step = 0;   // steps completed
  double last_loss = 0.0;
  double last_val_loss = 0.0;
  double tokens_per_second = 0.0;
  bool interrupted = false;
  std::filesystem::path last_checkpoint;
};

// Runs the request to completion (or interruption). Throws nnkit::Error subclasses on bad input
// (unwritable run_dir, missing data, mismatching resume config) before any step is taken.
NNKIT_API TrainSummary train(const TrainRequest& request);

// The keys of model.* that change parameter shapes and differ between two configs
// ("model.hidden_dim: 128 -> 256"); empty when the shapes agree.
NNKIT_API std::vector<std::string> model_shape_differences(const RunConfig& a, const RunConfig& b);

}  // namespace nnkit
