// Purpose: `nnkit sweep FILE [--parallel N] [--out DIR] [--data FILE]`: trains every run of a
// sweep file (sweep_spec.h) into OUT/<run name>/, each as a child `nnkit train` process (a run
// that fails or crashes cannot take the sweep down, and its log is RUN/train.log), and writes
// OUT/summary.md, summary.csv and curves.svg after each run ends.
// Before any run starts, every run's config is resolved against the base (an unknown key gets
// its "did you mean", with the sweep file's line:column) and its data file checked.
// Resuming: a run whose record says complete is skipped; one with a checkpoint continues with
// `train --resume`; any other starts afresh. SIGINT, SIGTERM and SIGHUP stop the sweep: the
// running children are asked to checkpoint and stop (they get the signal too), the summary is
// written, and the exit code is 128 + the signal. A child outlives a SIGKILLed sweep only until
// the kernel sends it SIGTERM (PR_SET_PDEATHSIG), which checkpoints it as well.
// Thread-safety: one sweep per process; the signal handler only stores into a lock-free atomic.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include "args.h"
#include "commands.h"
#include "common.h"
#include "metrics_file.h"
#include "nnkit/error.h"
#include "nnkit/io/atomic_file.h"
#include "nnkit/io/run_lock.h"
#include "run_record.h"
#include "run_table.h"
#include "stop_signals.h"
#include "svg_chart.h"
#include "sweep_plan.h"
#include "sweep_spec.h"
#include "sweep_summary.h"

namespace nnkit::cli {

namespace {

namespace fs = std::filesystem;

// The last line of a run's train.log that starts with "error:" (what the child reported).
std::string last_error_line(const fs::path& log) {
  std::ifstream in(log);
  std::string line, found;
  while (std::getline(in, line)) {
    if (line.rfind("error:", 0) == 0) found = line;
  }
  return found;
}

struct Running {
  size_t index = 0;
  std::chrono::steady_clock::time_point started;
};

// Forks and execs this same nnkit binary with `argv`, output appended to `log`.
pid_t spawn(const std::vector<std::string>& argv, const fs::path& log,
            const std::optional<int>& threads) {
  std::vector<char*> c_argv;
  for (const std::string& a : argv) c_argv.push_back(const_cast<char*>(a.c_str()));
  c_argv.push_back(nullptr);
  const std::string threads_text = threads ? std::to_string(*threads) : "";
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0)
    throw IoError("sweep", std::string("cannot start a run: fork failed: ") + std::strerror(errno));
  if (pid != 0) return pid;
  // The child: dies with the sweep (SIGTERM checkpoints it), writes into its run's log.
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (::getppid() != parent) ::_exit(143);
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) ::dup2(fd, STDOUT_FILENO), ::dup2(fd, STDERR_FILENO);
  if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
  if (!threads_text.empty()) ::setenv("OMP_NUM_THREADS", threads_text.c_str(), 1);
  ::execv("/proc/self/exe", c_argv.data());
  std::fprintf(stderr, "error: cannot run %s: %s\n", "/proc/self/exe", std::strerror(errno));
  ::_exit(127);
}

}  // namespace

int run_sweep(const Args& raw) {
  CommandSpec spec{
      "sweep",
      "nnkit sweep FILE [--parallel N] [--out DIR] [--data FILE]",
      "Trains every run of a sweep file (a grid of dotted keys and/or a list of named override "
      "sets on one base config) into DIR/<run>/, and writes DIR/summary.md, summary.csv and "
      "curves.svg. Runs already complete are skipped and interrupted ones resumed, so running "
      "the same command again continues a stopped sweep; a failed run is reported and the "
      "sweep goes on.",
      {{"--parallel", "N", "runs at a time (default 1); CPU runs split the threads between them"},
       {"--out", "DIR", "where the runs go (default: runs/<sweep file name>)"},
       {"--data", "FILE", "token file for every run (default: each run's train.data)"},
       {"--dry-run", "", "check the sweep file and list its runs; train nothing"},
       {"--y-range", "LO,HI", "fixed value axis of curves.svg (default: the whole range)"}},
      "FILE  a sweep file (see docs/experiments.md)"};
  const std::optional<ParsedArgs> parsed = parse_command(spec, raw);
  if (!parsed) return 0;  // --help was printed
  const ParsedArgs& args = *parsed;
  if (args.positionals().size() != 1) {
    throw UsageError("cli", "`nnkit sweep` needs one sweep FILE (see --help)");
  }
  const int64_t parallel = args.get_int("--parallel", 1, 1, 256);
  std::optional<std::pair<double, double>> y_range;
  if (const auto range = args.get("--y-range")) y_range = parse_y_range("--y-range", *range);
  const SweepSpec sweep = load_sweep(args.positionals()[0]);
  const fs::path out = args.get_or("--out", "runs/" + sweep.file.stem().string());

  // Everything that can be wrong with the input is found before the first run starts.
  std::vector<PlannedRun> runs;
  for (const SweepRun& run : sweep.runs) runs.push_back(plan_run(sweep, run, out, args));
  if (args.has("--dry-run")) {
    TextTable table({"run", "overrides", "steps", "params total", "params active"});
    for (const PlannedRun& p : runs) {
      table.add({p.run.name, join_words(p.run.overrides), std::to_string(p.steps),
                 group_digits(p.params_total), group_digits(p.params_active)});
    }
    std::cout << table.str();
    return 0;
  }
  ensure_writable_directory(out);
  const RunLock sweep_lock(out, "nnkit sweep");
  for (PlannedRun& planned : runs) planned.start = choose_start(planned);

  // Children share the machine's threads when several run at once on the CPU.
  std::optional<int> threads;
  if (parallel > 1) {
    const char* omp = std::getenv("OMP_NUM_THREADS");
    const int available = omp != nullptr && std::atoi(omp) > 0
                              ? std::atoi(omp)
                              : static_cast<int>(std::thread::hardware_concurrency());
    threads = std::max(1, available / static_cast<int>(parallel));
  }
  std::vector<std::string> passed_flags;
  if (auto level = args.get("--log-level"))
    passed_flags.insert(passed_flags.end(), {"--log-level", *level});
  for (const std::string& p : args.get_all("--plugin-path"))
    passed_flags.insert(passed_flags.end(), {"--plugin-path", p});
  if (args.has("--allow-unsafe-plugin-dirs")) passed_flags.push_back("--allow-unsafe-plugin-dirs");

  const size_t total = runs.size();
  const auto tag = [&](size_t i) {
    return "[" + std::to_string(i + 1) + "/" + std::to_string(total) + "] " + runs[i].run.name;
  };
  std::cout << "sweep " << sweep.file.string() << ": " << total << " runs into " << out.string()
            << (parallel > 1 ? ", " + std::to_string(parallel) + " at a time" : "") << "\n"
            << std::flush;
  std::map<pid_t, Running> running;
  std::vector<std::string> failed;
  size_t next = 0, skipped = 0, completed = 0, interrupted = 0;
  bool forwarded = false;
  const StopSignals signals;
  write_sweep_summary(sweep, out, runs, y_range);
  while (true) {
    while (stop_signal() == 0 && running.size() < static_cast<size_t>(parallel) && next < total) {
      const size_t i = next++;
      PlannedRun& planned = runs[i];
      if (planned.start == Start::kSkip) {
        ++skipped;
        std::cout << tag(i) << ": already complete, skipped\n" << std::flush;
        continue;
      }
      ensure_writable_directory(planned.dir);
      std::vector<std::string> argv = {"nnkit", "train"};
      if (planned.start == Start::kResume) {
        argv.insert(argv.end(), {"--resume", planned.dir.string()});
      } else {
        argv.push_back(sweep.base.string());
        argv.insert(argv.end(), planned.run.overrides.begin(), planned.run.overrides.end());
        argv.insert(argv.end(), {"--out", planned.dir.string()});
        if (auto data = args.get("--data")) argv.insert(argv.end(), {"--data", *data});
      }
      argv.push_back("--no-progress");
      argv.insert(argv.end(), passed_flags.begin(), passed_flags.end());
      const pid_t pid =
          spawn(argv, planned.dir / "train.log", planned.on_cpu ? threads : std::nullopt);
      running[pid] = Running{i, std::chrono::steady_clock::now()};
      std::cout << tag(i) << ": " << (planned.start == Start::kResume ? "resuming" : "started")
                << "\n"
                << std::flush;
    }
    if (running.empty()) break;
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) {
      if (stop_signal() != 0 && !forwarded) {
        // Children in the terminal's process group already got a Ctrl-C; a `kill` of the sweep
        // reaches only the sweep. Either way each child checkpoints and stops.
        for (const auto& [child, unused] : running) ::kill(child, SIGTERM);
        forwarded = true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    const auto found = running.find(pid);
    if (found == running.end()) continue;
    const size_t i = found->second.index;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - found->second.started)
            .count();
    running.erase(found);
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    const std::optional<RunOverview> overview = read_run_overview(runs[i].dir);
    std::ostringstream line;
    line << tag(i) << ": ";
    if (code == 0 && overview && overview->status == RunStatus::kComplete) {
      ++completed;
      line << "complete, " << overview->last_step << " steps";
      const std::optional<RunMetrics> m = read_run_metrics(runs[i].dir / "metrics.jsonl");
      if (m && m->final_value(sweep.metric)) {
        line << ", " << sweep.metric << " "
             << format_optional(m->final_value(sweep.metric), 4, true) << " (best "
             << format_optional(m->best_value(sweep.metric), 4, true) << ")";
      }
      if (overview->tokens_per_s)
        line << ", " << group_digits(std::llround(*overview->tokens_per_s)) << " tokens/s";
      line << ", " << format_duration_short(seconds);
    } else if (code == 128 + SIGINT || code == 128 + SIGTERM || code == 128 + SIGHUP) {
      ++interrupted;
      line << "interrupted at step " << (overview ? overview->last_step : 0)
           << "; the next `nnkit sweep` resumes it";
    } else {
      const std::string error = last_error_line(runs[i].dir / "train.log");
      failed.push_back(runs[i].run.name);
      line << "FAILED (exit " << code << ")" << (error.empty() ? "" : ": " + error)
           << "; log: " << (runs[i].dir / "train.log").string();
    }
    std::cout << line.str() << "\n" << std::flush;
    write_sweep_summary(sweep, out, runs, y_range);
  }
  write_sweep_summary(sweep, out, runs, y_range);
  std::cout << "sweep: " << completed << " complete, " << skipped << " skipped (already complete), "
            << interrupted << " interrupted, " << failed.size() << " failed; summary in "
            << (out / "summary.md").string() << ", curves in " << (out / "curves.svg").string()
            << "\n";
  if (const int stop = stop_signal(); stop != 0) {
    std::cout << "stopped by " << ::strsignal(stop) << "; run the same command again to resume\n";
    return 128 + stop;
  }
  if (!failed.empty()) {
    std::cerr << "error: " << failed.size() << " run(s) failed: " << join_words(failed)
              << "; see each RUN/train.log, fix, and run the sweep again (complete runs are "
                 "skipped)\n";
    return 1;
  }
  return 0;
}

}  // namespace nnkit::cli
