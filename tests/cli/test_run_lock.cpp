// Purpose: one process per run directory, end to end: a second `train --resume` on a run in use is
// refused naming the holder while the first finishes intact; a lock file left by a dead process
// does not block; temporary checkpoint folders of killed saves are removed at the next start and
// by pruning; SIGHUP and SIGTERM checkpoint and stop like Ctrl-C (exit 128 + signal), and a
// SIGHUP ignored at start (nohup) stays ignored.
// Thread-safety: none needed (GoogleTest runs these sequentially; each test has its own folder).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "cli_support.h"

namespace nnkit::clitest {
namespace {

using Json = nlohmann::json;

fs::path checkpoint(const fs::path& run, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08lld", static_cast<long long>(step));
  return run / "checkpoints" / name;
}

// The steps of the training lines (those with a loss), in file order, duplicates kept: two
// writers interleaving one metrics file show up as a step that does not increase.
std::vector<int64_t> training_steps_in_order(const fs::path& metrics) {
  std::vector<int64_t> steps;
  for (const Json& line : read_jsonl(metrics)) {
    if (line.contains("loss")) steps.push_back(line.at("step").get<int64_t>());
  }
  return steps;
}

int64_t last_training_step(const fs::path& metrics) {
  const auto steps = training_steps_in_order(metrics);
  return steps.empty() ? 0 : steps.back();
}

std::string host_name() {
  char buffer[256] = {};
  ::gethostname(buffer, sizeof(buffer) - 1);
  return buffer;
}

// The PID of a process that has exited and been reaped (so nothing holds a lock under it).
pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;
}

class RunDirectory : public CliTest {
 protected:
  // A finished 10-step run with checkpoints at 5 and 10.
  fs::path trained_run() {
    const fs::path run = path("run");
    train_ok(run);
    return run;
  }

  RunResult resume(const fs::path& run, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"train", "--resume", run.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_nnkit(args, {}, dir_.path());
  }

  // A `train --resume RUN` that runs until signalled, started once it has taken steps past
  // `after` (so it holds the run and is writing into it).
  std::unique_ptr<Child> start_long_resume(const fs::path& run, int64_t after) {
    auto child = std::make_unique<Child>(
        std::vector<std::string>{"train", "--resume", run.string(), "train.steps=100000",
                                 "train.checkpoint_every=7", "train.eval_every=0",
                                 "train.log_every=1000"},
        std::vector<std::string>{}, dir_.path());
    wait_for_step(*child, run, after);
    return child;
  }

  void wait_for_step(Child& child, const fs::path& run, int64_t after) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (child.running() && std::chrono::steady_clock::now() < deadline &&
           last_training_step(run / "metrics.jsonl") <= after) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  // Stops `child` with `sig` and checks the run it leaves: exit 128 + sig, a checkpoint of the
  // last step logged, steps strictly increasing. Returns that step.
  int64_t stop_and_check(Child& child, const fs::path& run, int sig) {
    EXPECT_TRUE(child.running()) << "the long run ended early";
    child.signal(sig);
    const RunResult r = child.wait(60);
    EXPECT_EXIT_CODE(r, 128 + sig);
    EXPECT_MENTIONS(r.err, "--resume");
    const std::vector<int64_t> steps = training_steps_in_order(run / "metrics.jsonl");
    for (size_t i = 1; i < steps.size(); ++i) {
      EXPECT_LT(steps[i - 1], steps[i]) << "metrics.jsonl line " << i << " goes backwards";
    }
    const int64_t reached = steps.empty() ? 0 : steps.back();
    EXPECT_MENTIONS(r.err, "interrupted at step " + std::to_string(reached));
    const fs::path saved = checkpoint(run, reached);
    EXPECT_TRUE(fs::exists(saved / "MANIFEST.json")) << saved << "\n" << r.err;
    if (fs::exists(saved / "trainer.json")) {
      EXPECT_EQ(Json::parse(read_text(saved / "trainer.json")).at("step").get<int64_t>(), reached);
    }
    return reached;
  }

  // A short resume from `reached` verifies the newest checkpoint (sizes, checksums) and goes on.
  void expect_resumes_from(const fs::path& run, int64_t reached) {
    const int64_t target = reached + 2;
    const RunResult next = resume(run, {"train.steps=" + std::to_string(target)});
    ASSERT_EXIT_CODE(next, 0);
    EXPECT_MENTIONS(next.err, "(step " + std::to_string(reached) + ")");
    EXPECT_EQ(last_training_step(run / "metrics.jsonl"), target);
    EXPECT_TRUE(fs::exists(checkpoint(run, target) / "MANIFEST.json"));
  }
};

TEST_F(RunDirectory, SecondResumeOfARunInUseIsRefusedAndTheFirstFinishesIntact) {
  const fs::path run = trained_run();
  std::unique_ptr<Child> first = start_long_resume(run, 12);
  ASSERT_TRUE(first->running()) << first->wait().err;
  const RunResult second = resume(run, {"train.steps=14"});
  EXPECT_NE(second.exit_code, 0) << second.err;
  EXPECT_MENTIONS(second.err, "another nnkit process (pid " + std::to_string(first->pid()));
  EXPECT_MENTIONS(second.err, "on host " + host_name());
  EXPECT_MENTIONS(second.err, run.string());
  EXPECT_MENTIONS(second.err, "wait for it");
  EXPECT_EQ(second.err.find("resumed "), std::string::npos) << "the second run started";
  // A fresh run into the same directory is refused by the lock as well.
  const RunResult fresh =
      run_nnkit({"train", config_.string(), "--data", tokens_.string(), "--out", run.string()}, {},
                dir_.path());
  EXPECT_NE(fresh.exit_code, 0);
  EXPECT_MENTIONS(fresh.err, "pid " + std::to_string(first->pid()));

  const int64_t reached = stop_and_check(*first, run, SIGINT);
  EXPECT_FALSE(fs::exists(run / ".lock")) << "the lock file outlived its holder";
  ASSERT_NO_FATAL_FAILURE(expect_resumes_from(run, reached));
}

TEST_F(RunDirectory, LockFileOfADeadProcessDoesNotBlock) {
  const fs::path run = trained_run();
  const pid_t dead = dead_pid();
  write_text(run / ".lock", Json{{"pid", dead},
                                 {"host", host_name()},
                                 {"started", "2026-01-01T00:00:00Z"},
                                 {"command", "nnkit train"}}
                                    .dump() +
                                "\n");
  const RunResult r = resume(run, {"train.steps=12"});
  ASSERT_EXIT_CODE(r, 0);
  EXPECT_MENTIONS(r.err, "pid " + std::to_string(dead));  // the takeover is logged
  EXPECT_EQ(last_training_step(run / "metrics.jsonl"), 12);
  EXPECT_FALSE(fs::exists(run / ".lock"));

  // Garbage in a leftover lock file does not block either.
  write_text(run / ".lock", "not json\n");
  const RunResult again = resume(run, {"train.steps=13"});
  ASSERT_EXIT_CODE(again, 0);
}

TEST_F(RunDirectory, StaleTemporaryCheckpointFoldersAreRemovedAtTheNextStart) {
  const fs::path run = trained_run();
  const fs::path stale_high = run / "checkpoints" / "step-00000099.tmp-123";
  const fs::path stale_low = run / "checkpoints" / "step-00000007.tmp-4567";
  fs::copy(checkpoint(run, 10), stale_high, fs::copy_options::recursive);
  fs::create_directories(stale_low);
  write_text(stale_low / "model.safetensors", "half written");

  const RunResult r = resume(run, {"train.steps=12"});
  ASSERT_EXIT_CODE(r, 0);
  EXPECT_FALSE(fs::exists(stale_high));
  EXPECT_FALSE(fs::exists(stale_low));
  EXPECT_MENTIONS(r.err, "removed stale temporary checkpoint folder");
  EXPECT_MENTIONS(r.err, "step-00000099.tmp-123");
  EXPECT_MENTIONS(r.err, "step-00000007.tmp-4567");
  EXPECT_MENTIONS(r.err, "(step 10)");  // the temp folder's higher step was never a candidate
  EXPECT_EQ(r.err.find("ignoring incomplete checkpoint"), std::string::npos) << r.err;

  // The next start has nothing left to warn about.
  const RunResult next = resume(run, {"train.steps=13"});
  ASSERT_EXIT_CODE(next, 0);
  EXPECT_EQ(next.err.find("tmp-"), std::string::npos) << next.err;
}

TEST_F(RunDirectory, SighupWritesACheckpointAndTheRunResumes) {
  const fs::path run = trained_run();
  std::unique_ptr<Child> child = start_long_resume(run, 12);
  ASSERT_TRUE(child->running()) << child->wait().err;
  const int64_t reached = stop_and_check(*child, run, SIGHUP);
  ASSERT_GT(reached, 12);
  ASSERT_NO_FATAL_FAILURE(expect_resumes_from(run, reached));
}

// Also: retention pruning at a save removes temp folders that appeared after the start.
TEST_F(RunDirectory, SigtermWritesACheckpointAndExits143) {
  const fs::path run = trained_run();
  std::unique_ptr<Child> child = start_long_resume(run, 12);
  ASSERT_TRUE(child->running()) << child->wait().err;
  const fs::path leftover = run / "checkpoints" / "step-00000003.tmp-77";
  fs::create_directories(leftover);
  const int64_t reached = stop_and_check(*child, run, SIGTERM);
  ASSERT_GT(reached, 12);
  EXPECT_FALSE(fs::exists(leftover)) << "the save's pruning kept a temp folder";
}

// `nohup nnkit train` starts it with SIGHUP ignored: closing the terminal must not stop it.
TEST_F(RunDirectory, AnIgnoredSighupStaysIgnored) {
  const fs::path run = trained_run();
  struct sigaction ignore {
  }, previous{};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  ::sigaction(SIGHUP, &ignore, &previous);  // inherited through fork and exec
  std::unique_ptr<Child> child = start_long_resume(run, 12);
  ::sigaction(SIGHUP, &previous, nullptr);
  ASSERT_TRUE(child->running()) << child->wait().err;
  child->signal(SIGHUP);
  const int64_t at_hangup = last_training_step(run / "metrics.jsonl");
  wait_for_step(*child, run, at_hangup + 5);
  EXPECT_TRUE(child->running()) << "SIGHUP stopped a run that was started with it ignored";
  stop_and_check(*child, run, SIGINT);
}

}  // namespace
}  // namespace nnkit::clitest
