// Purpose: the inference commands hold their weights in the compute dtype only (issue 10): `nnkit
// generate --json` reports the weight bytes and that the model is inference-only, the tokens and
// `nnkit logits` are the same as with --keep-f32-masters (the old allocation), on the CPU backend
// and, where a CUDA device is usable, at bf16 (where the masters are really released: 2 bytes a
// parameter instead of 6). The CUDA cases skip with the reason on a machine without one.
#include <sstream>

#include "cli_support.h"
#include "support/test_support.h"

namespace nnkit::clitest {
namespace {

using Json = nlohmann::json;

class InferenceWeights : public CliTest {
 protected:
  // `nnkit generate CONFIG --random-init --json`, greedy; the one JSON line.
  Json generate(const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"generate", config_.string(), "--random-init",
                                     "--prompt", "Inference",      "--max-new-tokens",
                                     "16",       "--json",         "decode=[{type: greedy}]"};
    args.insert(args.end(), extra.begin(), extra.end());
    const RunResult r = run_nnkit(args, {}, dir_.path(), 300);
    EXPECT_EXIT_CODE(r, 0);
    std::istringstream in(r.out);
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line.front() == '{') return Json::parse(line);
    }
    ADD_FAILURE() << "no JSON line in:\n" << r.out << r.err;
    return Json::object();
  }

  // `nnkit logits CONFIG --random-init --ids ... --json` as printed (the logits' text is exact).
  std::string logits(const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"logits", config_.string(), "--random-init",
                                     "--ids",  "1,5,9,200,7,3",  "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    const RunResult r = run_nnkit(args, {}, dir_.path(), 300);
    EXPECT_EXIT_CODE(r, 0);
    return r.out;
  }

  // Parameters of the test config, from `nnkit validate --json`.
  int64_t parameter_count() {
    const RunResult r = run_nnkit({"validate", config_.string(), "--json"});
    EXPECT_EXIT_CODE(r, 0);
    return Json::parse(r.out).at("total_params").get<int64_t>();
  }

  static bool cuda_usable(std::string& why) {
    try {
      (void)nnkit::test::cuda_backend();
      return true;
    } catch (const std::exception& e) {
      why = e.what();
      return false;
    }
  }
};

TEST_F(InferenceWeights, CpuGenerateReportsInferenceOnlyWeightsAndTheSameTokens) {
  const Json inference = generate({});
  const Json masters = generate({"--keep-f32-masters"});
  EXPECT_TRUE(inference.at("inference_only_weights").get<bool>());
  EXPECT_FALSE(masters.at("inference_only_weights").get<bool>());
  // f32 compute: the masters are the weights, no gradients in either.
  EXPECT_EQ(inference.at("weight_bytes").get<int64_t>(), 4 * parameter_count());
  EXPECT_EQ(masters.at("weight_bytes").get<int64_t>(), 4 * parameter_count());
  EXPECT_TRUE(inference.at("device_memory_in_use_bytes").is_null());
  EXPECT_EQ(inference.at("ids"), masters.at("ids"));
  EXPECT_EQ(inference.at("ids").size(), 16u);
  EXPECT_EQ(logits({}), logits({"--keep-f32-masters"}));
}

TEST_F(InferenceWeights, CudaBf16GenerateHoldsTwoBytesAParameterAndTheSameTokensAndLogits) {
  std::string why;
  if (!cuda_usable(why)) GTEST_SKIP() << "no CUDA device: " << why;
  const std::string gpu = "backend={type: cuda, precision: bf16}";
  const Json inference = generate({gpu});
  const Json masters = generate({gpu, "--keep-f32-masters"});
  const int64_t n = parameter_count();
  EXPECT_EQ(inference.at("precision"), "bf16");
  EXPECT_EQ(inference.at("weight_bytes").get<int64_t>(), 2 * n);
  EXPECT_EQ(masters.at("weight_bytes").get<int64_t>(), 6 * n);
  EXPECT_GT(inference.at("device_memory_in_use_bytes").get<int64_t>(), 2 * n);
  EXPECT_EQ(inference.at("ids"), masters.at("ids"));
  EXPECT_EQ(logits({gpu}), logits({gpu, "--keep-f32-masters"}));
}

}  // namespace
}  // namespace nnkit::clitest
