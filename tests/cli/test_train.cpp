// Purpose: the happy paths end to end: data prepare, eval of a random model, train (run directory
// layout, metrics lines, checkpoints), eval/plot/generate of the trained run, non-finite losses.
#include <cmath>
#include <sstream>

#include "cli_support.h"

namespace nnkit::clitest {
namespace {

using Json = nlohmann::json;

class Train : public CliTest {};

TEST_F(Train, DataPrepareConcatenatesTextFiles) {
  const fs::path second = write("second.txt", "A second document, short and sweet.\n");
  const fs::path out = path("two.tokens");
  const RunResult r =
      run_nnkit({"data", "prepare", corpus_.string(), second.string(), "-o", out.string()});
  ASSERT_EXIT_CODE(r, 0);
  const size_t expected = english_corpus().size() + 1 + read_text(second).size() + 1;  // + EOS each
  EXPECT_MENTIONS(r.out, "wrote " + std::to_string(expected) + " tokens");
  EXPECT_MENTIONS(r.out, "vocabulary 260");
  ASSERT_TRUE(fs::exists(out));
  EXPECT_EQ(read_text(out).substr(0, 8), "NNKTOK01");
  // The token file evaluates to the same number of predicted tokens.
  const RunResult e =
      run_nnkit({"eval", config_.string(), "--random-init", "--data", out.string(), "--json"});
  ASSERT_EXIT_CODE(e, 0);
  EXPECT_EQ(Json::parse(e.out).at("tokens").get<int64_t>(), static_cast<int64_t>(expected) - 1);
}

TEST_F(Train, EvalOfARandomModelIsNearLnVocab) {
  const RunResult r =
      run_nnkit({"eval", config_.string(), "--random-init", "--data", tokens_.string(), "--json"});
  ASSERT_EXIT_CODE(r, 0);
  const Json j = Json::parse(r.out);
  const double loss = j.at("loss").get<double>();
  EXPECT_NEAR(loss, std::log(260.0), 0.1);
  EXPECT_NEAR(j.at("ppl").get<double>(), std::exp(loss), 1e-9 * std::exp(loss));
  // Every token but the first is predicted once.
  EXPECT_EQ(j.at("tokens").get<int64_t>(), static_cast<int64_t>(english_corpus().size()));
  // Text input is tokenised on the fly: the same text without the trailing EOS.
  const RunResult t =
      run_nnkit({"eval", config_.string(), "--random-init", "--data", corpus_.string(), "--json"});
  ASSERT_EXIT_CODE(t, 0);
  EXPECT_EQ(Json::parse(t.out).at("tokens").get<int64_t>(),
            static_cast<int64_t>(english_corpus().size()) - 1);
  // The text form says the same.
  const RunResult plain =
      run_nnkit({"eval", config_.string(), "--random-init", "--data", tokens_.string()});
  EXPECT_EXIT_CODE(plain, 0);
  EXPECT_MENTIONS(plain.out, "perplexity");
  EXPECT_MENTIONS(plain.out, "nats/token");
}

// The MoE statistics live on the device (a read costs a drain of the GPU stream), so they are
// written on logged steps only: every log_every steps, the first step and validation steps.
TEST_F(Train, MoeStatisticsAreWrittenOnLoggedStepsOnly) {
  const fs::path run = path("run");
  ASSERT_NO_FATAL_FAILURE(train_ok(run, {"train.log_every=4", "train.eval_every=0"}));
  std::set<int64_t> with_stats, without_stats;
  for (const Json& j : read_jsonl(run / "metrics.jsonl")) {
    if (!j.contains("loss")) continue;
    const int64_t step = j["step"].get<int64_t>();
    EXPECT_TRUE(j.contains("elapsed_s")) << j.dump();
    (j.contains("expert_load") && j.contains("aux_loss") ? with_stats : without_stats).insert(step);
  }
  // Steps 1 (first), 4 and 8 (log_every), 10 (the last step validates).
  EXPECT_EQ(with_stats, (std::set<int64_t>{1, 4, 8, 10}));
  EXPECT_EQ(without_stats, (std::set<int64_t>{2, 3, 5, 6, 7, 9}));
}

TEST_F(Train, RunDirectoryHoldsConfigMetricsAndCheckpoints) {
  const fs::path run = path("run");
  ASSERT_NO_FATAL_FAILURE(train_ok(run));
  EXPECT_TRUE(fs::exists(run / "config.yaml"));
  EXPECT_MENTIONS(read_text(run / "config.yaml"), "hidden_dim: 32");

  const std::vector<Json> lines = read_jsonl(run / "metrics.jsonl");
  int64_t train_lines = 0;
  std::set<int64_t> val_steps;
  for (const Json& j : lines) {
    ASSERT_TRUE(j.contains("step")) << j.dump();
    if (j.contains("val_loss")) {
      EXPECT_TRUE(std::isfinite(j["val_loss"].get<double>()));
      val_steps.insert(j["step"].get<int64_t>());
    }
    if (!j.contains("loss")) continue;
    ++train_lines;
    EXPECT_EQ(j["step"].get<int64_t>(), train_lines) << j.dump();
    for (const char* key : {"loss", "aux_loss", "lr", "grad_norm", "tokens_per_s"}) {
      ASSERT_TRUE(j.contains(key) && j[key].is_number()) << key << " in " << j.dump();
      EXPECT_TRUE(std::isfinite(j[key].get<double>())) << key << " in " << j.dump();
    }
    ASSERT_TRUE(j.contains("expert_load")) << j.dump();
    ASSERT_EQ(j["expert_load"].size(), 2u) << "one entry per layer: " << j.dump();
    for (const Json& layer : j["expert_load"]) {
      ASSERT_EQ(layer.size(), 4u) << "one fraction per expert: " << j.dump();
      double total = 0.0;
      for (const Json& f : layer) total += f.get<double>();
      EXPECT_NEAR(total, 1.0, 1e-6);
    }
  }
  EXPECT_EQ(train_lines, 10);
  EXPECT_EQ(val_steps, (std::set<int64_t>{0, 5, 10}));  // eval_every 5, plus the start
  const auto losses = losses_by_step(run / "metrics.jsonl");
  EXPECT_LT(losses.at(10), losses.at(1)) << "training did not lower the loss";

  for (const char* step : {"step-00000005", "step-00000010"}) {
    const fs::path dir = run / "checkpoints" / step;
    for (const char* file : {"model.safetensors", "optimizer.safetensors", "trainer.json",
                             "config.yaml", "MANIFEST.json"}) {
      EXPECT_TRUE(fs::exists(dir / file)) << (dir / file);
    }
  }
  const Json trainer =
      Json::parse(read_text(run / "checkpoints" / "step-00000010" / "trainer.json"));
  EXPECT_EQ(trainer.at("step").get<int64_t>(), 10);
  const Json manifest =
      Json::parse(read_text(run / "checkpoints" / "step-00000010" / "MANIFEST.json"));
  EXPECT_EQ(manifest.at("files").at("model.safetensors").at("bytes").get<uint64_t>(),
            fs::file_size(run / "checkpoints" / "step-00000010" / "model.safetensors"));
  // HF-style names in the weights file header.
  EXPECT_MENTIONS(
      read_text(run / "checkpoints" / "step-00000010" / "model.safetensors").substr(0, 4096),
      "model.layers.1.block_sparse_moe.experts.3.w1.weight");

  // A second `train` into the same run is refused (it would overwrite it).
  const RunResult again =
      run_nnkit({"train", config_.string(), "--data", tokens_.string(), "--out", run.string()});
  EXPECT_NE(again.exit_code, 0);
  EXPECT_MENTIONS(again.err, "already holds checkpoints");
  EXPECT_MENTIONS(again.err, "--resume");
}

TEST_F(Train, TrainedRunEvaluatesPlotsAndGenerates) {
  const fs::path run = path("run");
  ASSERT_NO_FATAL_FAILURE(
      train_ok(run, {"train.steps=30", "train.checkpoint_every=10", "train.eval_every=10"}));
  // eval --checkpoint: lower loss than a random model.
  const RunResult e =
      run_nnkit({"eval", "--checkpoint", run.string(), "--data", tokens_.string(), "--json"});
  ASSERT_EXIT_CODE(e, 0);
  const Json ej = Json::parse(e.out);
  EXPECT_LT(ej.at("loss").get<double>(), std::log(260.0) - 0.5);
  EXPECT_NEAR(ej.at("ppl").get<double>(), std::exp(ej.at("loss").get<double>()), 1e-6);
  EXPECT_GT(ej.at("tokens").get<int64_t>(), 3000);

  // plot writes an SVG with the curves.
  const RunResult p = run_nnkit({"plot", run.string()});
  ASSERT_EXIT_CODE(p, 0);
  EXPECT_MENTIONS(p.out, "loss.svg");
  const std::string svg = read_text(run / "loss.svg");
  EXPECT_MENTIONS(svg, "<svg");
  EXPECT_MENTIONS(svg, "<polyline");
  EXPECT_MENTIONS(svg, "</svg>");
  const RunResult bad_plot = run_nnkit({"plot", path("nothing-here").string()});
  EXPECT_NE(bad_plot.exit_code, 0);
  EXPECT_MENTIONS(bad_plot.err, "metrics.jsonl does not exist");

  // generate: the same seed gives the same ids; another seed, other ids.
  auto generate = [&](const std::string& seed) {
    const RunResult g =
        run_nnkit({"generate", "--checkpoint", run.string(), "--prompt", "The old ",
                   "--max-new-tokens", "20", "--seed", seed, "--temperature", "1.0", "--json"});
    EXPECT_EXIT_CODE(g, 0);
    const Json j = Json::parse(g.out);
    EXPECT_EQ(j.at("prompt").get<std::string>(), "The old ");
    if (j.at("stop_reason").get<std::string>() == "length") {
      EXPECT_EQ(j.at("ids").size(), 20u);
    }
    EXPECT_LE(j.at("ids").size(), 20u) << g.out;
    return j.at("ids").get<std::vector<int64_t>>();
  };
  const auto first = generate("3");
  const auto second = generate("3");
  const auto other = generate("4");
  EXPECT_EQ(first, second);
  EXPECT_NE(first, other);

  // The default output streams the text, the prompt first (so it does not start mid-word).
  const RunResult text = run_nnkit({"generate", "--checkpoint", run.string(), "--prompt", "The",
                                    "--max-new-tokens", "8", "--greedy"});
  EXPECT_EXIT_CODE(text, 0);
  EXPECT_EQ(text.out.rfind("The", 0), 0u) << text.out;
  EXPECT_GT(text.out.size(), std::string("The\n").size()) << text.out;
}

TEST_F(Train, GenerateFromAPromptsFilePrintsOneObjectPerLine) {
  const fs::path prompts = write("prompts.txt", "The river\nA good question\nSnow fell\n");
  const RunResult r = run_nnkit({"generate", config_.string(), "--random-init", "--prompts",
                                 prompts.string(), "--max-new-tokens", "5", "--json"});
  ASSERT_EXIT_CODE(r, 0);
  std::istringstream in(r.out);
  std::string line;
  std::vector<std::string> seen;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const Json j = Json::parse(line);
    seen.push_back(j.at("prompt").get<std::string>());
    // A random model may sample EOS early; otherwise it stops at the length limit.
    const std::string reason = j.at("stop_reason").get<std::string>();
    EXPECT_TRUE(reason == "length" || reason == "eos") << line;
    if (reason == "length") {
      EXPECT_EQ(j.at("ids").size(), 5u) << line;
    }
    EXPECT_LE(j.at("ids").size(), 5u) << line;
    EXPECT_TRUE(j.contains("text"));
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"The river", "A good question", "Snow fell"}));
}

TEST_F(Train, NonFiniteStepsAreSkipped) {
  const fs::path run = path("run");
  ASSERT_NO_FATAL_FAILURE(train_ok(run, {}, {"NNKIT_FAULT_NAN_STEPS=2,3"}));
  std::set<int64_t> skipped;
  for (const Json& j : read_jsonl(run / "metrics.jsonl")) {
    if (j.value("skipped", false)) skipped.insert(j.at("step").get<int64_t>());
  }
  EXPECT_EQ(skipped, (std::set<int64_t>{3, 4}));  // 0-based step indices 2 and 3
  const auto losses = losses_by_step(run / "metrics.jsonl");
  EXPECT_EQ(losses.count(3), 0u);
  EXPECT_TRUE(losses.count(10));
  EXPECT_TRUE(fs::exists(run / "checkpoints" / "step-00000010" / "MANIFEST.json"));
}

TEST_F(Train, ASkippedStepStillWritesItsPeriodicCheckpoint) {
  const fs::path run = path("run");
  // 0-based index 4 is step 5, the first periodic checkpoint (checkpoint_every 5).
  ASSERT_NO_FATAL_FAILURE(train_ok(run, {}, {"NNKIT_FAULT_NAN_STEPS=4"}));
  const fs::path five = run / "checkpoints" / "step-00000005";
  ASSERT_TRUE(fs::exists(five / "MANIFEST.json"));
  EXPECT_EQ(Json::parse(read_text(five / "trainer.json")).at("bad_steps_in_a_row").get<int64_t>(),
            1);
}

TEST_F(Train, TooManyConsecutiveNonFiniteStepsStopTheRun) {
  const fs::path run = path("run");
  const RunResult r = run_nnkit({"train", config_.string(), "--data", tokens_.string(), "--out",
                                 run.string(), "train.max_bad_steps=2"},
                                {"NNKIT_FAULT_NAN_STEPS=1,2,3"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.exit_code, 130);
  EXPECT_MENTIONS(r.err, "2 consecutive steps had a non-finite loss");
  EXPECT_MENTIONS(r.err, "diverging");
  EXPECT_MENTIONS(r.err, "non-finite loss (nan)");
}

TEST_F(Train, ADivergingRunNamesTheFirstParameterWithANonFiniteGradient) {
  // lr 1e30 blows the weights up in one step; the next gradients are not finite. The device
  // skips those updates, and the trainer says where the gradient first broke.
  const fs::path run = path("run");
  const RunResult r = run_nnkit({"train", config_.string(), "--data", tokens_.string(), "--out",
                                 run.string(), "train.max_bad_steps=2", "train.optimizer.lr=1e30",
                                 "train.schedule={type: constant}"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_MENTIONS(r.err, "consecutive steps had a non-finite loss or gradient");
  EXPECT_MENTIONS(r.err, "(first in model.");
}

}  // namespace
}  // namespace nnkit::clitest
