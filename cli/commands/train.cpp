// Purpose: `nnkit train CONFIG [overrides] [--out RUN_DIR] [--resume RUN_DIR] [--data FILE]`.
// The run directory is locked for the whole command (nnkit/io/run_lock.h): a second process
// using it is refused, naming the holder. SIGINT (Ctrl-C), SIGTERM and SIGHUP (terminal closed)
// finish the current step, write a checkpoint and exit with 128 + the signal number (130, 143,
// 129), the code a shell reports for a process that signal ended.
// Thread-safety: the signal handler only stores into a lock-free atomic; one train per process.
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>

#include "args.h"
#include "commands.h"
#include "common.h"
#include "data_identity.h"
#include "memory_check.h"
#include "nnkit/checkpoint.h"
#include "nnkit/communicator.h"
#include "nnkit/error.h"
#include "nnkit/io/atomic_file.h"
#include "nnkit/io/run_lock.h"
#include "nnkit/logging.h"
#include "nnkit/trainer.h"
#include "run_record.h"
#include "stop_signals.h"

namespace nnkit::cli {

int run_train(const Args& raw) {
  CommandSpec spec{
      "train",
      "nnkit train CONFIG [key.path=value ...] [--out RUN_DIR] [--data FILE]\n"
      "       nnkit train [CONFIG] --resume RUN_DIR [key.path=value ...]",
      "Trains the model described by CONFIG, writing checkpoints, metrics.jsonl and the resolved "
      "config into RUN_DIR. Ctrl-C (or SIGTERM, SIGHUP) writes a checkpoint and stops with exit "
      "code 128 + signal (130 for Ctrl-C); --resume continues from the newest complete "
      "checkpoint. One process at a time may use a run directory. Data-parallel on N "
      "processes: mpirun -np N nnkit train CONFIG parallel.data=N (or torchrun-style RANK, "
      "WORLD_SIZE, MASTER_ADDR, MASTER_PORT; docs/parallel.md).",
      {{"--out", "RUN_DIR", "run directory (default: runs/<config name>)"},
       {"--resume", "RUN_DIR", "continue the run in RUN_DIR"},
       {"--data", "FILE", "token file from `nnkit data prepare` (default: train.data)"},
       {"--no-progress", "", "plain log lines even on a terminal"},
       {"--json", "", "print a JSON summary at the end"},
       skip_memory_check_flag(),
       allow_tokenizer_mismatch_flag()},
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
  // A resumed run is locked before its checkpoints are read (another writer could be pruning
  // them); a fresh run once its directory is known. Removes the temp folders of killed saves.
  // In a job of several ranks (mpirun, torchrun-style variables) rank 0 holds the lock, writes
  // the run's files and logs; the others only report warnings and errors.
  const bool lead_rank = detect_launch_environment().rank == 0;
  RunLock run_lock;
  if (resume && lead_rank)
    run_lock = CheckpointStore(*resume).lock_for_writing("nnkit train --resume");
  Session session;
  if (!args.positionals().empty()) {
    session = open_session(args.positionals()[0], args.overrides(), args);
  } else if (resume) {
    const CheckpointRef ref = CheckpointStore(*resume).require_latest();
    session = open_session_from_text(CheckpointStore::read_config(ref),
                                     (ref.dir / "config.yaml").string(), args.overrides(), args,
                                     read_plugin_records(*resume));
  } else {
    throw UsageError("cli", "`nnkit train` needs a CONFIG (see --help)");
  }
  if (!lead_rank && logger()->level() < spdlog::level::warn)
    logger()->set_level(spdlog::level::warn);
  // Before the run directory is made and the trainer allocates: a step that cannot fit is
  // refused with the estimate.
  MemoryShape memory_shape;
  memory_shape.workload = Workload::kTrain;
  memory_shape.batch = session.config.train.batch_size;
  memory_shape.seq = session.config.train.seq_len;
  memory_shape.activation_checkpointing = session.config.train.activation_checkpointing;
  check_memory_before(session, memory_shape, args, "nnkit train");
  // The data must come from the model's tokenizer (a resumed run without --data keeps the data
  // checked when it started; its stored train.data is checked again here).
  const std::string data = args.get_or("--data", session.config.train.data);
  if (!data.empty()) {
    check_data_tokenizer(data, tokenizer_identity(session, *create_tokenizer(session)), args);
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
    ensure_writable_directory(request.run_dir);
    if (lead_rank) run_lock = CheckpointStore(request.run_dir).lock_for_writing("nnkit train");
  }
  if (lead_rank) record_run_plugins(request.run_dir, session, request.resume);
  request.data = args.get_or("--data", "");
  request.progress_bar = ::isatty(STDERR_FILENO) && !args.has("--no-progress");
  request.stop_requested = [] { return stop_signal() != 0; };
  // RUN/run.json: the overrides as typed, build, machine, data; how this attempt ends.
  std::optional<RunRecorder> recorder;  // rank 0's record stands for the job
  if (lead_rank) recorder.emplace(request.run_dir, session, args, raw, data, request.resume);
  TrainSummary summary;
  try {
    const StopSignals stop_signals;
    summary = train(request);
  } catch (const std::exception& e) {
    if (recorder) recorder->fail(e.what());
    throw;
  }
  if (recorder) recorder->finish(summary, request.config.train.steps);
  // The trainer returns at once when a resumed run already holds train.steps steps.
  const bool already_done = request.resume && !summary.interrupted &&
                            summary.first_step == summary.last_step &&
                            summary.last_step == request.config.train.steps;
  if (already_done) {
    logger()->info("{} already reached step {} of {}; raise train.steps to continue",
                   request.run_dir.string(), summary.last_step, request.config.train.steps);
  }
  // Numbers this command did not measure are null (JSON) or left out (log line), never 0: no
  // step ran when the run was already done (or stopped before its first step), and no
  // validation runs with train.eval_every = 0.
  const bool stepped = summary.last_step > summary.first_step;
  const bool validated = stepped && request.config.train.eval_every > 0;
  const auto measured = [](bool known, double value) {
    return known ? nlohmann::json(value) : nlohmann::json();
  };
  if (args.has("--json") && lead_rank) {
    std::cout << nlohmann::json{{"run_dir", request.run_dir.string()},
                                {"already_done", already_done},
                                {"first_step", summary.first_step},
                                {"last_step", summary.last_step},
                                {"loss", measured(stepped, summary.last_loss)},
                                {"val_loss", measured(validated, summary.last_val_loss)},
                                {"tokens_per_s", measured(stepped, summary.tokens_per_second)},
                                {"interrupted", summary.interrupted},
                                {"checkpoint", summary.last_checkpoint.string()}}
                     .dump()
              << "\n";
  }
  if (summary.interrupted) {
    const int signal_number = stop_signal();
    logger()->warn("interrupted at step {} ({}); continue with: nnkit train --resume {}",
                   summary.last_step, signal_number != 0 ? ::strsignal(signal_number) : "stop",
                   request.run_dir.string());
    return 128 + (signal_number != 0 ? signal_number : SIGINT);
  }
  if (already_done) return 0;
  logger()->info("done: {} steps, loss {:.4f}{}, {:.0f} tokens/s; run in {}", summary.last_step,
                 summary.last_loss,
                 validated ? fmt::format(", val_loss {:.4f}", summary.last_val_loss) : "",
                 summary.tokens_per_second, request.run_dir.string());
  return 0;
}

}  // namespace nnkit::cli
