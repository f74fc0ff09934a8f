// Purpose: end-to-end mixed-precision training on the CUDA backend: bf16 and fp16 (with dynamic
// loss scaling) track fp32 over 300 steps of bench/gpu-medium.yaml, an fp16 overflow is skipped
// and lowers the scale, CUDA Graph replay of a dense model's step and of a capacity-limited MoE
// step equals the ordinary steps, and a bf16 GPU run resumes on the CPU. Every test skips with the
// reason when no CUDA device is usable (the CPU-only CI) or the demo corpus is missing.
#include <cmath>
#include <cstdio>

#include "cli_support.h"
#include "support/test_support.h"

namespace nnkit::clitest {
namespace {

using Json = nlohmann::json;

class CudaTraining : public CliTest {
 protected:
  void SetUp() override {
    CliTest::SetUp();
    try {
      (void)nnkit::test::cuda_backend();
    } catch (const std::exception& e) {
      GTEST_SKIP() << "no CUDA device: " << e.what();
    }
  }

  // The demo corpus made by scripts/setup.sh (big enough that 300 steps do not memorise it).
  fs::path demo_tokens() const { return source_dir() / "data" / "demo.tokens"; }

  RunResult train(const fs::path& config, const fs::path& run,
                  const std::vector<std::string>& extra, const std::vector<std::string>& env = {},
                  double timeout_s = 600) {
    std::vector<std::string> args = {"train", config.string(), "--out", run.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_nnkit(args, env, dir_.path(), timeout_s);
  }

  // Mean training loss of the last `n` steps of a run.
  static double tail_loss(const fs::path& run, int n) {
    const auto losses = losses_by_step(run / "metrics.jsonl");
    double sum = 0.0;
    int count = 0;
    for (auto it = losses.rbegin(); it != losses.rend() && count < n; ++it, ++count) {
      sum += it->second;
    }
    return count > 0 ? sum / count : std::nan("");
  }
};

TEST_F(CudaTraining, Bf16AndFp16TrackFp32Over300Steps) {
  if (!fs::exists(demo_tokens())) GTEST_SKIP() << "no " << demo_tokens() << " (run setup.sh)";
  const fs::path config = source_dir() / "bench" / "gpu-medium.yaml";
  std::map<std::string, double> final_loss;
  for (const char* precision : {"fp32", "bf16", "fp16"}) {
    const fs::path run = path(std::string("run-") + precision);
    const RunResult r =
        train(config, run,
              {"--data", demo_tokens().string(), std::string("backend.precision=") + precision,
               "train.steps=300", "train.eval_every=0", "train.log_every=50"});
    ASSERT_EXIT_CODE(r, 0);
    final_loss[precision] = tail_loss(run, 20);
    ASSERT_TRUE(std::isfinite(final_loss[precision])) << precision;
  }
  std::printf("mean loss of steps 281-300: fp32 %.4f, bf16 %.4f (%+.2f%%), fp16 %.4f (%+.2f%%)\n",
              final_loss["fp32"], final_loss["bf16"],
              100.0 * (final_loss["bf16"] / final_loss["fp32"] - 1.0), final_loss["fp16"],
              100.0 * (final_loss["fp16"] / final_loss["fp32"] - 1.0));
  // The bound: within 2% of fp32's loss (mean of the last 20 steps, same data order).
  EXPECT_NEAR(final_loss["bf16"], final_loss["fp32"], 0.02 * final_loss["fp32"]);
  EXPECT_NEAR(final_loss["fp16"], final_loss["fp32"], 0.02 * final_loss["fp32"]);
  // fp16 lines carry the loss scale.
  for (const Json& j : read_jsonl(path("run-fp16") / "metrics.jsonl")) {
    if (j.contains("loss")) {
      ASSERT_TRUE(j.contains("loss_scale")) << j.dump();
    }
  }
}

TEST_F(CudaTraining, Fp16OverflowSkipsTheStepAndHalvesTheScale) {
  // A starting scale of 2^40 overflows fp16 gradients for sure; the scaler must skip those steps
  // (weights untouched), halve the scale each time, and then train normally.
  const fs::path run = path("run");
  const RunResult r = train(config_, run,
                            {"--data", tokens_.string(), "backend={type: cuda, precision: fp16}",
                             "train.steps=40", "train.eval_every=0"},
                            {"NNKIT_FP16_INITIAL_SCALE=1099511627776"});
  ASSERT_EXIT_CODE(r, 0);
  // A skipped line carries the scale after halving; the next step runs at exactly that scale.
  int64_t skipped = 0, taken = 0;
  double scale_after_skip = 0.0;
  for (const Json& j : read_jsonl(run / "metrics.jsonl")) {
    if (j.value("skipped", false)) {
      ASSERT_TRUE(j.contains("loss_scale")) << j.dump();
      const double scale = j["loss_scale"].get<double>();
      if (skipped++ > 0) {
        EXPECT_LE(scale, scale_after_skip) << "the scale only comes down here";
      }
      scale_after_skip = scale;
    } else if (j.contains("loss")) {
      if (taken++ == 0) {
        EXPECT_EQ(j["loss_scale"].get<double>(), scale_after_skip) << j.dump();
      }
      EXPECT_TRUE(std::isfinite(j["loss"].get<double>())) << j.dump();
    }
  }
  EXPECT_GT(skipped, 0) << "2^40 must overflow fp16 gradients";
  EXPECT_GT(taken, 0) << "the scale never came down far enough";
  EXPECT_LT(scale_after_skip, 1099511627776.0);
  EXPECT_MENTIONS(r.err, "loss scale lowered");
}

TEST_F(CudaTraining, GraphReplayGivesTheSameWeightsAsUncapturedSteps) {
  // A dense model has static shapes: from its second step the trainer replays a recorded CUDA
  // Graph. The replayed steps must compute exactly what the ordinary steps compute.
  const std::vector<std::string> dense = {"--data",
                                          tokens_.string(),
                                          "model.moe=null",
                                          "model.ffn={type: swiglu, ffn_dim: 64}",
                                          "train.steps=12",
                                          "train.grad_accum=2",
                                          "train.eval_every=0",
                                          "train.checkpoint_every=0"};
  std::vector<std::string> with_graphs = dense, without = dense;
  with_graphs.push_back("backend={type: cuda, precision: bf16, cuda_graphs: true}");
  without.push_back("backend={type: cuda, precision: bf16, cuda_graphs: false}");
  const RunResult a = train(config_, path("graphs"), with_graphs);
  ASSERT_EXIT_CODE(a, 0);
  EXPECT_MENTIONS(a.err, "recorded in a CUDA Graph");
  const RunResult b = train(config_, path("plain"), without);
  ASSERT_EXIT_CODE(b, 0);
  EXPECT_EQ(b.err.find("recorded in a CUDA Graph"), std::string::npos) << b.err;
  const fs::path weights = fs::path("checkpoints") / "step-00000012" / "model.safetensors";
  const std::string x = read_text(path("graphs") / weights), y = read_text(path("plain") / weights);
  ASSERT_FALSE(x.empty());
  EXPECT_TRUE(x == y) << "replayed steps changed the weights";
  EXPECT_EQ(losses_by_step(path("graphs") / "metrics.jsonl"),
            losses_by_step(path("plain") / "metrics.jsonl"));
}

TEST_F(CudaTraining, CapacityMoeStepIsRecordedAndReplaysLikeUncapturedSteps) {
  // With a capacity the MoE layers use the padded expert layout, so the whole step (routing,
  // sort, expert products, z-loss) is recorded. Replays must equal the same layout run
  // uncaptured bit for bit, and the padded layout must track the compact one.
  const std::vector<std::string> moe = {"--data",
                                        tokens_.string(),
                                        "model.moe.router.capacity_factor=1.0",
                                        "model.moe.router.z_loss_weight=0.001",
                                        "train.steps=12",
                                        "train.grad_accum=2",
                                        "train.log_every=1",
                                        "train.eval_every=0",
                                        "train.checkpoint_every=0"};
  std::vector<std::string> with_graphs = moe, compact = moe;
  with_graphs.push_back("backend={type: cuda, precision: bf16, cuda_graphs: true}");
  compact.push_back("backend={type: cuda, precision: bf16, cuda_graphs: false}");
  const RunResult a = train(config_, path("graphs"), with_graphs);
  ASSERT_EXIT_CODE(a, 0);
  EXPECT_MENTIONS(a.err, "recorded in a CUDA Graph");
  const RunResult b = train(config_, path("static"), with_graphs, {"NNKIT_GRAPHS_NO_REPLAY=1"});
  ASSERT_EXIT_CODE(b, 0);
  EXPECT_EQ(b.err.find("recorded in a CUDA Graph"), std::string::npos) << b.err;
  const fs::path weights = fs::path("checkpoints") / "step-00000012" / "model.safetensors";
  const std::string x = read_text(path("graphs") / weights),
                    y = read_text(path("static") / weights);
  ASSERT_FALSE(x.empty());
  EXPECT_TRUE(x == y) << "replayed MoE steps changed the weights";
  const auto replayed = read_jsonl(path("graphs") / "metrics.jsonl");
  const auto uncaptured = read_jsonl(path("static") / "metrics.jsonl");
  ASSERT_EQ(replayed.size(), uncaptured.size());
  for (size_t i = 0; i < replayed.size(); ++i) {
    for (const char* key : {"loss", "aux_loss", "dropped_fraction", "expert_load"}) {
      if (uncaptured[i].contains(key)) EXPECT_EQ(replayed[i][key], uncaptured[i][key]) << key;
    }
  }
  // Some slots are dropped at capacity 1.0, and the statistics read after a replay say so.
  bool dropped = false;
  for (const Json& j : replayed) {
    if (!j.contains("dropped_fraction")) continue;
    for (const Json& d : j["dropped_fraction"]) dropped = dropped || d.get<double>() > 0.0;
  }
  EXPECT_TRUE(dropped) << "capacity 1.0 should drop some slots";

  // The compact layout (graphs off) computes the same step with other product shapes: bf16
  // rounding differs, the losses agree to 1%.
  const RunResult c = train(config_, path("compact"), compact);
  ASSERT_EXIT_CODE(c, 0);
  const auto padded_losses = losses_by_step(path("graphs") / "metrics.jsonl");
  const auto compact_losses = losses_by_step(path("compact") / "metrics.jsonl");
  ASSERT_EQ(padded_losses.size(), compact_losses.size());
  for (const auto& [step, loss] : padded_losses) {
    EXPECT_NEAR(loss, compact_losses.at(step), 0.01 * compact_losses.at(step)) << "step " << step;
  }

  // Dropless MoE runs uncaptured and says why.
  std::vector<std::string> dropless = with_graphs;
  dropless[2] = "model.moe.router.capacity_factor=null";
  const RunResult d = train(config_, path("dropless"), dropless);
  ASSERT_EXIT_CODE(d, 0);
  EXPECT_EQ(d.err.find("recorded in a CUDA Graph"), std::string::npos) << d.err;
  EXPECT_MENTIONS(d.err, "capacity_factor");
}

TEST_F(CudaTraining, Bf16RunResumesOnTheCpu) {
  // The checkpoint holds the f32 master weights, so a GPU run continues on the CPU backend.
  const fs::path run = path("run");
  const RunResult gpu = train(config_, run,
                              {"--data", tokens_.string(), "backend={type: cuda, precision: bf16}",
                               "train.steps=10", "train.checkpoint_every=5", "train.eval_every=0"});
  ASSERT_EXIT_CODE(gpu, 0);
  const RunResult cpu =
      run_nnkit({"train", "--resume", run.string(), "train.steps=20", "backend={type: cpu}"}, {},
                dir_.path());
  ASSERT_EXIT_CODE(cpu, 0);
  const auto losses = losses_by_step(run / "metrics.jsonl");
  ASSERT_EQ(losses.size(), 20u);
  EXPECT_TRUE(std::isfinite(losses.at(20)));
  EXPECT_LT(losses.at(20), losses.at(1));
}

}  // namespace
}  // namespace nnkit::clitest
