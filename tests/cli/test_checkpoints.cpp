// Purpose: checkpoints and resume: bit-exact resume (weights and per-step losses), Ctrl-C,
// half-written and corrupt checkpoints, and which overrides a resume accepts.
#include <signal.h>

#include <chrono>
#include <thread>

#include "cli_support.h"
#include "support/test_support.h"

namespace nnkit::clitest {
namespace {

using Json = nlohmann::json;

fs::path checkpoint(const fs::path& run, int step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08d", step);
  return run / "checkpoints" / name;
}

// The training steps (lines with a loss) in a metrics file.
int64_t last_training_step(const fs::path& metrics) {
  const auto losses = losses_by_step(metrics);
  return losses.empty() ? 0 : losses.rbegin()->first;
}

class Checkpoints : public CliTest {
 protected:
  RunResult resume(const fs::path& run, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"train", "--resume", run.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_nnkit(args, {}, dir_.path());
  }
  void expect_same_file(const fs::path& a, const fs::path& b) {
    ASSERT_TRUE(fs::exists(a)) << a;
    ASSERT_TRUE(fs::exists(b)) << b;
    const std::string x = read_text(a), y = read_text(b);
    ASSERT_EQ(x.size(), y.size()) << a << " vs " << b;
    size_t first_difference = 0;
    while (first_difference < x.size() && x[first_difference] == y[first_difference]) {
      ++first_difference;
    }
    EXPECT_EQ(first_difference, x.size())
        << a << " and " << b << " differ at byte " << first_difference;
  }
};

// The key acceptance test: 40 steps straight == 20 steps, then --resume to 40. A constant
// schedule keeps the LR curve independent of train.steps (a decaying schedule's horizon is
// train.steps, so changing it on resume changes the curve by design; see the next test).
TEST_F(Checkpoints, ResumeIsBitExact) {
  const std::vector<std::string> common = {"train.checkpoint_every=20", "train.eval_every=10",
                                           "train.schedule={type: constant, warmup_steps: 5}"};
  const fs::path straight = path("straight"), split = path("split");
  std::vector<std::string> a = common, b = common;
  a.push_back("train.steps=40");
  b.push_back("train.steps=20");
  ASSERT_NO_FATAL_FAILURE(train_ok(straight, a));
  ASSERT_NO_FATAL_FAILURE(train_ok(split, b));
  EXPECT_TRUE(fs::exists(checkpoint(straight, 20) / "MANIFEST.json"));
  EXPECT_TRUE(fs::exists(checkpoint(split, 20) / "MANIFEST.json"));
  EXPECT_FALSE(fs::exists(checkpoint(split, 40)));
  // No --data: the run remembers its token file.
  const RunResult r = resume(split, {"train.steps=40"});
  ASSERT_EXIT_CODE(r, 0);
  EXPECT_MENTIONS(r.err, "resumed");
  EXPECT_MENTIONS(r.err, "(step 20)");

  expect_same_file(checkpoint(straight, 40) / "model.safetensors",
                   checkpoint(split, 40) / "model.safetensors");
  expect_same_file(checkpoint(straight, 40) / "optimizer.safetensors",
                   checkpoint(split, 40) / "optimizer.safetensors");
  const auto la = losses_by_step(straight / "metrics.jsonl");
  const auto lb = losses_by_step(split / "metrics.jsonl");
  ASSERT_EQ(la.size(), 40u);
  ASSERT_EQ(lb.size(), 40u);
  for (int64_t step = 1; step <= 40; ++step) {
    ASSERT_TRUE(la.count(step) && lb.count(step)) << "step " << step;
    EXPECT_EQ(la.at(step), lb.at(step)) << "loss differs at step " << step;
  }
  // The validation curve agrees too (steps 10, 20, 30, 40), and no step appears twice.
  std::map<int64_t, double> va, vb;
  std::map<int64_t, int> lines_per_step;
  for (const Json& j : read_jsonl(straight / "metrics.jsonl")) {
    if (j.contains("val_loss")) va[j["step"].get<int64_t>()] = j["val_loss"].get<double>();
  }
  for (const Json& j : read_jsonl(split / "metrics.jsonl")) {
    if (j.contains("val_loss")) vb[j["step"].get<int64_t>()] = j["val_loss"].get<double>();
    ++lines_per_step[j["step"].get<int64_t>()];
  }
  EXPECT_EQ(va, vb);
  for (const auto& [step, count] : lines_per_step) EXPECT_EQ(count, 1) << "step " << step;
}

// With the default warmup-cosine schedule and an unchanged train.steps, resuming from a middle
// checkpoint reproduces the straight run exactly.
TEST_F(Checkpoints, ResumeFromAMiddleCheckpointIsBitExact) {
  const fs::path straight = path("straight"), copy = path("copy");
  ASSERT_NO_FATAL_FAILURE(
      train_ok(straight, {"train.steps=20", "train.checkpoint_every=10", "train.eval_every=10"}));
  fs::copy(straight, copy, fs::copy_options::recursive);
  fs::remove_all(checkpoint(copy, 20));
  const RunResult r = resume(copy);
  ASSERT_EXIT_CODE(r, 0);
  EXPECT_MENTIONS(r.err, "(step 10)");
  expect_same_file(checkpoint(straight, 20) / "model.safetensors",
                   checkpoint(copy, 20) / "model.safetensors");
  EXPECT_EQ(losses_by_step(straight / "metrics.jsonl"), losses_by_step(copy / "metrics.jsonl"));
}

// The same guarantees on the GPU, at fp32 and at bf16 (backend/cuda is deterministic: no float
// atomics; the device-side sort by expert, fused AdamW and norm included): two runs give the same
// weights, and a resume from the middle checkpoint reproduces the straight run. Skipped without
// a usable CUDA device or plugin.
TEST_F(Checkpoints, CudaRunsRepeatAndResumeBitExactly) {
  try {
    (void)nnkit::test::cuda_backend();
  } catch (const std::exception& e) {
    GTEST_SKIP() << "no CUDA device: " << e.what();
  }
  for (const char* precision : {"fp32", "bf16"}) {
    SCOPED_TRACE(precision);
    const std::vector<std::string> overrides = {
        std::string("backend={type: cuda, precision: ") + precision + "}", "train.steps=20",
        "train.checkpoint_every=10", "train.eval_every=10"};
    const fs::path straight = path(std::string("straight-") + precision),
                   again = path(std::string("again-") + precision),
                   copy = path(std::string("copy-") + precision);
    ASSERT_NO_FATAL_FAILURE(train_ok(straight, overrides));
    ASSERT_NO_FATAL_FAILURE(train_ok(again, overrides));
    expect_same_file(checkpoint(straight, 20) / "model.safetensors",
                     checkpoint(again, 20) / "model.safetensors");
    fs::copy(straight, copy, fs::copy_options::recursive);
    fs::remove_all(checkpoint(copy, 20));
    const RunResult r = resume(copy);
    ASSERT_EXIT_CODE(r, 0);
    EXPECT_MENTIONS(r.err, "(step 10)");
    expect_same_file(checkpoint(straight, 20) / "model.safetensors",
                     checkpoint(copy, 20) / "model.safetensors");
    EXPECT_EQ(losses_by_step(straight / "metrics.jsonl"), losses_by_step(copy / "metrics.jsonl"));
  }
}

TEST_F(Checkpoints, CtrlCWritesACheckpointAndResumeContinues) {
  const fs::path run = path("run");
  Child child({"train", config_.string(), "--data", tokens_.string(), "--out", run.string(),
               "train.steps=100000", "train.checkpoint_every=0", "train.eval_every=0",
               "train.log_every=1000"},
              {}, dir_.path());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (child.running() && std::chrono::steady_clock::now() < deadline &&
         (!fs::exists(run / "metrics.jsonl") || last_training_step(run / "metrics.jsonl") < 3)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(child.running()) << child.wait().err;
  child.signal(SIGINT);
  const RunResult r = child.wait(30);
  ASSERT_EXIT_CODE(r, 130);
  const int64_t reached = last_training_step(run / "metrics.jsonl");
  ASSERT_GE(reached, 3);
  ASSERT_LT(reached, 100000);
  EXPECT_MENTIONS(r.err, "interrupted at step " + std::to_string(reached));
  EXPECT_MENTIONS(r.err, "--resume");
  const fs::path saved = checkpoint(run, static_cast<int>(reached));
  ASSERT_TRUE(fs::exists(saved / "MANIFEST.json")) << saved;
  EXPECT_EQ(Json::parse(read_text(saved / "trainer.json")).at("step").get<int64_t>(), reached);

  const int64_t target = reached + 3;
  const RunResult next = resume(run, {"train.steps=" + std::to_string(target)});
  ASSERT_EXIT_CODE(next, 0);
  EXPECT_MENTIONS(next.err, "(step " + std::to_string(reached) + ")");
  const auto losses = losses_by_step(run / "metrics.jsonl");
  EXPECT_EQ(losses.size(), static_cast<size_t>(target));
  EXPECT_EQ(losses.rbegin()->first, target);
  EXPECT_TRUE(fs::exists(checkpoint(run, static_cast<int>(target)) / "MANIFEST.json"));
}

TEST_F(Checkpoints, HalfWrittenCheckpointsAreIgnored) {
  const fs::path run = path("run");
  ASSERT_NO_FATAL_FAILURE(train_ok(run));  // checkpoints at 5 and 10
  const fs::path reference = path("reference.safetensors");
  fs::copy_file(checkpoint(run, 10) / "model.safetensors", reference);
  const fs::path copy = path("copy");
  fs::copy(run, copy, fs::copy_options::recursive);

  // A temp folder left by a killed save, with a higher step number: never resumed from, and
  // removed once the resume holds the run lock (test_run_lock.cpp has the details).
  fs::rename(checkpoint(run, 10), run / "checkpoints" / "step-00000099.tmp-123");
  const RunResult r = resume(run);
  ASSERT_EXIT_CODE(r, 0);
  EXPECT_MENTIONS(r.err, "removed stale temporary checkpoint folder");
  EXPECT_MENTIONS(r.err, "step-00000099.tmp-123");
  EXPECT_MENTIONS(r.err, "(step 5)");
  expect_same_file(reference, checkpoint(run, 10) / "model.safetensors");

  // A folder without its MANIFEST (written last) is incomplete too.
  fs::remove(checkpoint(copy, 10) / "MANIFEST.json");
  const RunResult c = resume(copy);
  ASSERT_EXIT_CODE(c, 0);
  EXPECT_MENTIONS(c.err, "ignoring incomplete checkpoint");
  EXPECT_MENTIONS(c.err, "(step 5)");
  expect_same_file(reference, checkpoint(copy, 10) / "model.safetensors");
}

TEST_F(Checkpoints, CorruptCheckpointIsAnErrorNeverAFreshStart) {
  const fs::path run = path("run");
  ASSERT_NO_FATAL_FAILURE(train_ok(run));
  const fs::path truncated = path("truncated");
  fs::copy(run, truncated, fs::copy_options::recursive);
  const std::string metrics_before = read_text(run / "metrics.jsonl");

  // One flipped byte in the middle of the weights.
  const fs::path weights = checkpoint(run, 10) / "model.safetensors";
  std::string bytes = read_text(weights);
  bytes[bytes.size() / 2] = static_cast<char>(bytes[bytes.size() / 2] ^ 0x10);
  write_text(weights, bytes);
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"eval", "--checkpoint", run.string(), "--data", tokens_.string()},
        std::vector<std::string>{"train", "--resume", run.string(), "train.steps=12"},
        std::vector<std::string>{"generate", "--checkpoint", run.string(), "--prompt", "The"}}) {
    SCOPED_TRACE(args[0]);
    const RunResult r = run_nnkit(args);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_MENTIONS(r.err, weights.string());
    EXPECT_MENTIONS(r.err, "checksum");
    EXPECT_MENTIONS(r.err, "corrupt");
  }
  EXPECT_EQ(read_text(run / "metrics.jsonl"), metrics_before) << "the failed resume trained";
  EXPECT_FALSE(fs::exists(checkpoint(run, 12)));

  // A truncated weights file.
  const fs::path cut = checkpoint(truncated, 10) / "model.safetensors";
  fs::resize_file(cut, fs::file_size(cut) / 3);
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"eval", "--checkpoint", truncated.string(), "--data",
                                 tokens_.string()},
        std::vector<std::string>{"train", "--resume", truncated.string()}}) {
    SCOPED_TRACE(args[0]);
    const RunResult r = run_nnkit(args);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_MENTIONS(r.err, cut.string());
    EXPECT_MENTIONS(r.err, "truncated");
  }
}

TEST_F(Checkpoints, ResumeRefusesShapeChangesButAcceptsMoreSteps) {
  const fs::path run = path("run");
  ASSERT_NO_FATAL_FAILURE(train_ok(run));
  const RunResult r = resume(run, {"model.hidden_dim=64"});
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "cannot resume");
  EXPECT_MENTIONS(r.err, "model.hidden_dim: 32 -> 64");
  EXPECT_FALSE(fs::exists(checkpoint(run, 11)));
  // The same through a CONFIG given next to --resume.
  const RunResult c = run_nnkit(
      {"train", config_.string(), "--resume", run.string(), "model.moe.experts.n_experts=8"});
  EXPECT_EXIT_CODE(c, 2);
  EXPECT_MENTIONS(c.err, "model.moe.experts.n_experts: 4 -> 8");
  // Inference commands refuse shape overrides too.
  const RunResult e = run_nnkit(
      {"eval", "--checkpoint", run.string(), "--data", tokens_.string(), "model.hidden_dim=64"});
  EXPECT_EXIT_CODE(e, 2);
  EXPECT_MENTIONS(e.err, "model.hidden_dim");

  const RunResult more = resume(run, {"train.steps=12"});
  ASSERT_EXIT_CODE(more, 0);
  EXPECT_MENTIONS(more.err, "train.steps changed from 10 to 12");
  EXPECT_EQ(last_training_step(run / "metrics.jsonl"), 12);
  EXPECT_TRUE(fs::exists(checkpoint(run, 12) / "MANIFEST.json"));
}

}  // namespace
}  // namespace nnkit::clitest
