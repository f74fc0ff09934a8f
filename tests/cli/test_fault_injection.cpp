// Purpose: a disk that fills up or fails while a checkpoint is written. An LD_PRELOAD shim
// (fault_shim.cpp) makes write(2) or fsync(2) fail with ENOSPC or EIO on the files of the step-10
// checkpoint, at its first byte or in the middle of its second file. Each time the run must stop
// with the OS reason and the fix, leave no step-10 folder (complete or half-written), keep the
// step-5 checkpoint valid, and resume from it to the same losses as a run that never failed.
#include "cli_support.h"

namespace nnkit::clitest {
namespace {

class FaultInjection : public CliTest {};

struct Fault {
  const char* name;
  const char* op;
  const char* err;
  const char* after_bytes;  // bytes of the checkpoint's files that get through first
  const char* expected;     // strerror text in the message
};

TEST_F(FaultInjection, FailedCheckpointSaveKeepsThePreviousOneAndResumesFromIt) {
  const fs::path base = path("base");
  train_ok(base, {"train.steps=5"});
  // The same run continued to step 10 with no fault (the schedule spans train.steps, so the
  // reference resumes at step 5 too).
  const fs::path reference = path("reference");
  fs::copy(base, reference, fs::copy_options::recursive);
  ASSERT_EXIT_CODE(run_nnkit({"train", "--resume", reference.string(), "train.steps=10"}), 0);
  const std::map<int64_t, double> expected = losses_by_step(reference / "metrics.jsonl");
  ASSERT_EQ(expected.size(), 10u);

  const Fault faults[] = {
      {"enospc-first-byte", "write", "ENOSPC", "0", "No space left on device"},
      // The model file (~100 KB for this config) goes through; the optimizer state fails.
      {"enospc-mid-checkpoint", "write", "ENOSPC", "150000", "No space left on device"},
      {"eio-write", "write", "EIO", "40000", "Input/output error"},
      {"eio-fsync", "fsync", "EIO", "0", "Input/output error"},
  };
  for (const Fault& f : faults) {
    SCOPED_TRACE(f.name);
    const fs::path run = path(f.name);
    fs::copy(base, run, fs::copy_options::recursive);
    const std::vector<std::string> env = {
        std::string("LD_PRELOAD=") + NNKIT_FAULT_SHIM, "NNKIT_FAULT_MATCH=step-00000010",
        std::string("NNKIT_FAULT_OP=") + f.op, std::string("NNKIT_FAULT_ERRNO=") + f.err,
        std::string("NNKIT_FAULT_AFTER_BYTES=") + f.after_bytes,
        // A sanitizer runtime must come first; the shim only wraps two libc calls.
        "ASAN_OPTIONS=verify_asan_link_order=0:detect_leaks=0"};
    const RunResult failed = run_nnkit({"train", "--resume", run.string(), "train.steps=10"}, env);
    EXPECT_EXIT_CODE(failed, 1);
    EXPECT_MENTIONS(failed.err, f.expected);
    EXPECT_MENTIONS(failed.err, "step-00000010");
    if (std::string(f.err) == "ENOSPC") EXPECT_MENTIONS(failed.err, "free disk space");
    // Nothing of step 10 is left to be picked, complete or not.
    std::vector<std::string> folders;
    for (const auto& entry : fs::directory_iterator(run / "checkpoints")) {
      folders.push_back(entry.path().filename().string());
    }
    EXPECT_EQ(folders, std::vector<std::string>{"step-00000005"});

    const RunResult resumed =
        run_nnkit({"train", "--resume", run.string(), "train.steps=10", "--json"});
    ASSERT_EXIT_CODE(resumed, 0);
    EXPECT_MENTIONS(resumed.err, "step-00000005 (step 5)");
    const nlohmann::json summary = nlohmann::json::parse(resumed.out);
    EXPECT_EQ(summary["first_step"], 5);
    EXPECT_EQ(summary["last_step"], 10);
    EXPECT_EQ(losses_by_step(run / "metrics.jsonl"), expected);
  }
}

}  // namespace
}  // namespace nnkit::clitest
