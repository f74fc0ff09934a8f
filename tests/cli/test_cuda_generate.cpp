// Purpose: end-to-end decoding on the CUDA backend: greedy fp32 decoding on the GPU gives the CPU
// backend's tokens for 128 tokens (configs/tiny.yaml and bench/gpu-medium.yaml, random init,
// fixed seed), the decode step is recorded in a CUDA Graph and replays exactly what the same
// steps compute uncaptured, and --json reports the batch, precision and whether the graph ran.
// Every test skips with the reason when no CUDA device is usable (the CPU-only CI).
#include <sstream>

#include "cli_support.h"
#include "support/test_support.h"

namespace nnkit::clitest {
namespace {

using Json = nlohmann::json;

class CudaGenerate : public CliTest {
 protected:
  void SetUp() override {
    CliTest::SetUp();
    try {
      (void)nnkit::test::cuda_backend();
    } catch (const std::exception& e) {
      GTEST_SKIP() << "no CUDA device: " << e.what();
    }
  }

  // `nnkit generate CONFIG --random-init --json` with greedy decoding; one JSON line per prompt.
  std::vector<Json> generate(const fs::path& config, const std::vector<std::string>& extra,
                             const std::vector<std::string>& env = {}) {
    std::vector<std::string> args = {"generate",
                                     config.string(),
                                     "--random-init",
                                     "--prompt",
                                     "The meaning of life is",
                                     "--max-new-tokens",
                                     "128",
                                     "--seed",
                                     "5",
                                     "--json",
                                     "decode=[{type: greedy}]"};
    args.insert(args.end(), extra.begin(), extra.end());
    const RunResult r = run_nnkit(args, env, dir_.path(), 600);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::vector<Json> lines;
    std::istringstream in(r.out);
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line.front() == '{') lines.push_back(Json::parse(line));
    }
    return lines;
  }
};

TEST_F(CudaGenerate, GreedyFp32OnTheGpuGivesTheCpuTokens) {
  for (const fs::path config :
       {source_dir() / "configs" / "tiny.yaml", source_dir() / "bench" / "gpu-medium.yaml"}) {
    SCOPED_TRACE(config.string());
    const auto cpu = generate(config, {"backend={type: cpu}"});
    const auto gpu = generate(config, {"backend={type: cuda, precision: fp32}"});
    ASSERT_EQ(cpu.size(), 1u);
    ASSERT_EQ(gpu.size(), 1u);
    EXPECT_EQ(gpu[0]["ids"], cpu[0]["ids"]);
    EXPECT_EQ(gpu[0]["ids"].size(), 128u);
    EXPECT_TRUE(gpu[0]["decode_graph"].get<bool>()) << gpu[0].dump();
    EXPECT_TRUE(gpu[0]["device_sampling"].get<bool>()) << gpu[0].dump();
    EXPECT_EQ(gpu[0]["precision"], "f32");
    EXPECT_EQ(gpu[0]["batch"], 1);
  }
}

TEST_F(CudaGenerate, ReplayedDecodeStepsEqualUncapturedSteps) {
  const fs::path config = source_dir() / "bench" / "gpu-medium.yaml";
  const auto replayed = generate(config, {"backend={type: cuda, precision: bf16}"});
  const auto plain =
      generate(config, {"backend={type: cuda, precision: bf16}"}, {"NNKIT_GRAPHS_NO_REPLAY=1"});
  ASSERT_EQ(replayed.size(), 1u);
  ASSERT_EQ(plain.size(), 1u);
  EXPECT_TRUE(replayed[0]["decode_graph"].get<bool>());
  EXPECT_FALSE(plain[0]["decode_graph"].get<bool>());
  EXPECT_EQ(replayed[0]["ids"], plain[0]["ids"]) << "replayed steps chose other tokens";
  // The device chain (top-k 40, temperature 0.8 from the config) reproduces its draws per seed.
  auto sampled = [&] {
    std::vector<std::string> args = {"generate",
                                     config.string(),
                                     "--random-init",
                                     "--prompt",
                                     "Once upon",
                                     "--max-new-tokens",
                                     "64",
                                     "--seed",
                                     "9",
                                     "--json",
                                     "backend={type: cuda, precision: bf16}"};
    const RunResult r = run_nnkit(args, {}, dir_.path(), 600);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return Json::parse(r.out.substr(r.out.find('{')));
  };
  const Json first = sampled(), second = sampled();
  EXPECT_TRUE(first["device_sampling"].get<bool>()) << first.dump();
  EXPECT_EQ(first["ids"], second["ids"]);
}

// The default device loop queues each step before the host has read the previous step's ids
// (the sampler writes the next step's input on the device). It must produce what reading every
// step's ids first produces: a batch of two prompts of different lengths with the config's
// sampled chain, and a stop string that ends the generation early (the queued step after it is
// discarded).
TEST_F(CudaGenerate, LookaheadStepsGiveTheStepByStepTokens) {
  const fs::path config = source_dir() / "bench" / "gpu-medium.yaml";
  write_text(dir_.path() / "prompts.txt", "Once upon a time\nHi\n");
  auto run = [&](const std::vector<std::string>& extra, const std::vector<std::string>& env) {
    std::vector<std::string> args = {"generate",
                                     config.string(),
                                     "--random-init",
                                     "--prompts",
                                     (dir_.path() / "prompts.txt").string(),
                                     "--max-new-tokens",
                                     "48",
                                     "--seed",
                                     "9",
                                     "--json",
                                     "backend={type: cuda, precision: bf16}"};
    args.insert(args.end(), extra.begin(), extra.end());
    const RunResult r = run_nnkit(args, env, dir_.path(), 600);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::vector<Json> lines;
    std::istringstream in(r.out);
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line.front() == '{') lines.push_back(Json::parse(line));
    }
    return lines;
  };
  const auto ahead = run({}, {});
  const auto stepwise = run({}, {"NNKIT_DECODE_LOOKAHEAD=0"});
  ASSERT_EQ(ahead.size(), 2u);
  ASSERT_EQ(stepwise.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_TRUE(ahead[i]["device_sampling"].get<bool>()) << ahead[i].dump();
    EXPECT_EQ(ahead[i]["ids"], stepwise[i]["ids"]) << "prompt " << i;
    EXPECT_EQ(ahead[i]["stop_reason"], stepwise[i]["stop_reason"]) << "prompt " << i;
  }
  // A stop string: two printable bytes that both rows produce after their tenth token, so both
  // rows stop early and the generation ends before its length.
  std::vector<int> first_ids = ahead[0]["ids"].get<std::vector<int>>();
  std::vector<int> second_ids = ahead[1]["ids"].get<std::vector<int>>();
  std::string stop;
  auto printable = [](int id) { return id >= 4 + 33 && id < 4 + 127; };
  for (size_t j = 10; j + 1 < first_ids.size() && stop.empty(); ++j) {
    if (!printable(first_ids[j]) || !printable(first_ids[j + 1])) continue;
    const std::string candidate = {char(first_ids[j] - 4), char(first_ids[j + 1] - 4)};
    std::string second_text;
    for (size_t t = 0; t < second_ids.size(); ++t) second_text.push_back(char(second_ids[t] - 4));
    if (second_text.find(candidate) != std::string::npos) stop = candidate;
  }
  if (stop.empty()) {
    // No shared pair: the first row's pair alone still ends that row early.
    for (size_t j = 10; j + 1 < first_ids.size() && stop.empty(); ++j) {
      if (printable(first_ids[j]) && printable(first_ids[j + 1])) {
        stop = {char(first_ids[j] - 4), char(first_ids[j + 1] - 4)};
      }
    }
  }
  ASSERT_FALSE(stop.empty()) << "no two printable bytes in a row to stop at: " << ahead[0].dump();
  const auto ahead_stop = run({"--stop", stop}, {});
  const auto stepwise_stop = run({"--stop", stop}, {"NNKIT_DECODE_LOOKAHEAD=0"});
  ASSERT_EQ(ahead_stop.size(), 2u);
  ASSERT_EQ(stepwise_stop.size(), 2u);
  EXPECT_EQ(ahead_stop[0]["stop_reason"], "stop") << ahead_stop[0].dump();
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(ahead_stop[i]["ids"], stepwise_stop[i]["ids"]) << "prompt " << i << ", stop " << stop;
    EXPECT_EQ(ahead_stop[i]["text"], stepwise_stop[i]["text"]) << "prompt " << i;
    EXPECT_EQ(ahead_stop[i]["stop_reason"], stepwise_stop[i]["stop_reason"]) << "prompt " << i;
  }
  EXPECT_LT(ahead_stop[0]["ids"].size(), ahead[0]["ids"].size());
}

}  // namespace
}  // namespace nnkit::clitest
