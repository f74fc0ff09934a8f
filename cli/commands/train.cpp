// Purpose: `nnkit train CONFIG [overrides] [--out RUN_DIR] [--resume RUN_DIR] [--data FILE]`.
// Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes a checkpoint and exits with 130.
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <iostream>
#include <nlohmann/json.hpp>

#include "args.h"
#include "commands.h"
#include "common.h"
#include "nnkit/checkpoint.h"
#include "nnkit/error.h"
#include "nnkit/logging.h"
#include "nnkit/trainer.h"

namespace nnkit::cli {

namespace {

std::atomic<bool> g_stop{false};

extern "C" void on_stop_signal(int) {
  g_stop.store(true);
}

}  // namespace

int run_train(const Args& raw) {
  CommandSpec spec{
      "train",
      "nnkit train CONFIG [key.path=value ...] [--out RUN_DIR] [--data FILE]\n"
      "       nnkit train [CONFIG] --resume RUN_DIR [key.path=value ...]",
      "Trains the model described by CONFIG, writing checkpoints, metrics.jsonl and the resolved "
      "config into RUN_DIR. Ctrl-C writes a checkpoint and stops; --resume continues from the "
      "newest complete checkpoint.",
      {{"--out", "RUN_DIR", "run directory (default: runs/<config name>)"},
       {"--resume", "RUN_DIR", "continue the run in RUN_DIR"},
       {"--data", "FILE", "token file from `nnkit data prepare` (default: train.data)"},
       {"--no-progress", "", "plain log lines even on a terminal"},
       {"--json", "", "print a JSON summary at the end"}},
      "CONFIG  a YAML model description (optional with --resume: the run's own config is used)",
      true};
  const std::optional<ParsedArgs> parsed = parse_command(spec, raw);
  if (!parsed) return 0;  // --help was printed
  const ParsedArgs& args = *parsed;
  const auto resume = args.get("--resume");
  if (resume && args.has("--out")) {
    throw UsageError("cli", "--resume RUN_DIR continues that run in place; drop --out");
  }
  if (args.positionals().size() > 1) {
    throw UsageError("cli", "`nnkit train` takes one CONFIG (see --help)");
  }
  Session session;
  if (!args.positionals().empty()) {
    session = open_session(args.positionals()[0], args.overrides(), args);
  } else if (resume) {
    const CheckpointRef ref = CheckpointStore(*resume).require_latest();
    session = open_session_from_text(CheckpointStore::read_config(ref),
                                     (ref.dir / "config.yaml").string(), args.overrides(), args);
  } else {
    throw UsageError("cli", "`nnkit train` needs a CONFIG (see --help)");
  }
  TrainRequest request;
  request.config = session.config;
  request.registry = session.registry.get();
  if (resume) {
    request.run_dir = *resume;
    request.resume = true;
  } else {
    request.run_dir = args.get_or(
        "--out", "runs/" + std::filesystem::path(session.config.source_name).stem().string());
  }
  request.data = args.get_or("--data", "");
  request.progress_bar = ::isatty(STDERR_FILENO) && !args.has("--no-progress");
  g_stop = false;
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  request.stop_requested = [] { return g_stop.load(); };
  const TrainSummary summary = train(request);
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  if (args.has("--json")) {
    std::cout << nlohmann::json{{"run_dir", request.run_dir.string()},
                                {"first_step", summary.first_step},
                                {"last_step", summary.last_step},
                                {"loss", summary.last_loss},
                                {"val_loss", summary.last_val_loss},
                                {"tokens_per_s", summary.tokens_per_second},
                                {"interrupted", summary.interrupted},
                                {"checkpoint", summary.last_checkpoint.string()}}
                     .dump()
              << "\n";
  }
  if (summary.interrupted) {
    logger()->warn("interrupted at step {}; continue with: nnkit train --resume {}",
                   summary.last_step, request.run_dir.string());
    return 130;
  }
  logger()->info("done: {} steps, loss {:.4f}, val_loss {:.4f}, {:.0f} tokens/s; run in {}",
                 summary.last_step, summary.last_loss, summary.last_val_loss,
                 summary.tokens_per_second, request.run_dir.string());
  return 0;
}

}  // namespace nnkit::cli
