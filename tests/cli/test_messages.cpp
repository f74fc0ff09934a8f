// Purpose: messages that must point at the right place (issue 12): a non-finite eval loss is an
// error naming the batch and position; resuming a finished run or with fewer train.steps than done
// says so; an out-of-range token id names the id and the vocabulary size; a directory given where
// a file is expected says "is a directory".
#include "cli_support.h"

namespace nnkit::clitest {
namespace {

class Messages : public CliTest {};

TEST_F(Messages, EvalOfDivergedWeightsIsAnErrorNamingBatchAndPosition) {
  // lr 1e30 blows the weights up on the first update; the later non-finite steps are skipped
  // (max_bad_steps is high), so the run ends normally with a checkpoint full of inf/NaN.
  const fs::path run = path("diverged");
  train_ok(run, {"train.optimizer.lr=1e30", "train.max_bad_steps=100",
                 "train.schedule={type: constant}", "train.steps=2", "train.eval_every=0"});
  for (const bool json : {false, true}) {
    std::vector<std::string> args = {"eval", "--checkpoint", run.string(), "--data",
                                     tokens_.string()};
    if (json) args.push_back("--json");
    const RunResult r = run_nnkit(args);
    EXPECT_EXIT_CODE(r, 1);
    EXPECT_MENTIONS(r.err, "[eval] the loss is not finite");
    EXPECT_MENTIONS(r.err, "at batch 1 of ");
    EXPECT_MENTIONS(r.err, "row 0 position 0 (data token 0");
    EXPECT_EQ(r.out.find("nan"), std::string::npos) << r.out;
  }
}

TEST_F(Messages, ResumingAFinishedRunSaysSoAndChangesNothing) {
  const fs::path run = path("done");
  train_ok(run, {"train.steps=3", "train.eval_every=0"});
  const std::string metrics = read_text(run / "metrics.jsonl");
  const RunResult r = run_nnkit({"train", "--resume", run.string()});
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_MENTIONS(r.err,
                  run.string() + " already reached step 3 of 3; raise train.steps to continue");
  EXPECT_EQ(r.err.find("loss 0.0000"), std::string::npos) << r.err;
  EXPECT_EQ(read_text(run / "metrics.jsonl"), metrics);
  const RunResult j = run_nnkit({"train", "--resume", run.string(), "--json"});
  EXPECT_EXIT_CODE(j, 0);
  const nlohmann::json summary = nlohmann::json::parse(j.out);
  EXPECT_EQ(summary["last_step"], 3);
  EXPECT_EQ(summary["already_done"], true);
  // No step ran, so no loss was measured: null, not 0.
  EXPECT_TRUE(summary["loss"].is_null()) << j.out;
  EXPECT_TRUE(summary["val_loss"].is_null()) << j.out;
  EXPECT_TRUE(summary["tokens_per_s"].is_null()) << j.out;
  // A run without validation does not report a val_loss of 0 either.
  const RunResult more = run_nnkit({"train", "--resume", run.string(), "train.steps=4", "--json"});
  EXPECT_EXIT_CODE(more, 0);
  const nlohmann::json trained = nlohmann::json::parse(more.out);
  EXPECT_TRUE(trained["loss"].is_number()) << more.out;
  EXPECT_TRUE(trained["val_loss"].is_null()) << more.out;
  EXPECT_EQ(more.err.find("val_loss 0.0000"), std::string::npos) << more.err;
}

TEST_F(Messages, ResumingWithFewerStepsThanDoneIsRefused) {
  const fs::path run = path("ahead");
  train_ok(run, {"train.steps=3", "train.eval_every=0"});
  const std::string config = read_text(run / "config.yaml");
  const RunResult r = run_nnkit({"train", "--resume", run.string(), "train.steps=2"});
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, run.string() + " is already at step 3, beyond train.steps = 2");
  EXPECT_MENTIONS(r.err, "raise train.steps above 3");
  // Nothing was rewritten: the run still says 3 steps.
  EXPECT_EQ(read_text(run / "config.yaml"), config);
  const RunResult again = run_nnkit({"train", "--resume", run.string()});
  EXPECT_EXIT_CODE(again, 0);
  EXPECT_MENTIONS(again.err, "already reached step 3 of 3");
}

TEST_F(Messages, DecodingAnOutOfRangeIdNamesTheIdAndTheVocabularySize) {
  const fs::path prefix = path("sp");
  const RunResult trained = run_nnkit(
      {"tokenizer", "train", corpus_.string(), "-o", prefix.string(), "--vocab-size", "400"});
  ASSERT_EXIT_CODE(trained, 0);
  const std::string model = prefix.string() + ".model";
  const RunResult r = run_nnkit({"tokenizer", "decode", "--model", model, "5", "6", "400"});
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "token id 400 is outside the vocabulary of " + model);
  EXPECT_MENTIONS(r.err, "vocabulary size 400: ids 0..399");
  EXPECT_EQ(r.out, "");
  // The last id still decodes.
  EXPECT_EXIT_CODE(run_nnkit({"tokenizer", "decode", "--model", model, "5,6,399"}), 0);
}

TEST_F(Messages, ADirectoryWhereAFileIsExpectedSaysSo) {
  const fs::path dir = path("a-folder");
  fs::create_directories(dir);
  const std::string d = dir.string();
  const std::vector<std::vector<std::string>> commands = {
      {"train", config_.string(), "--data", d, "--out", path("run").string()},
      {"eval", config_.string(), "--random-init", "--data", d},
      {"validate", d},
      {"data", "prepare", d, "-o", path("x.tokens").string()},
      {"generate", config_.string(), "--random-init", "--prompts", d},
      {"tokenizer", "train", d, "-o", path("sp").string()},
      {"tokenizer", "decode", "--model", d, "5"},
  };
  for (const std::vector<std::string>& args : commands) {
    SCOPED_TRACE(args[0] + " " + args[1]);
    const RunResult r = run_nnkit(args);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_MENTIONS(r.err, d);
    EXPECT_MENTIONS(r.err, "is a directory");
    EXPECT_EQ(r.err.find("does not exist"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("has no lines"), std::string::npos) << r.err;
  }
}

}  // namespace
}  // namespace nnkit::clitest
