// Purpose: switching the backend from the command line. A config written for one backend runs on
// another with `backend.type=...`: the file's options the new backend lacks are dropped with a log
// line, options typed for the wrong backend are still refused, and `nnkit validate` of a CUDA
// config works on a machine without a GPU (it never creates the backend).
#include "cli_support.h"

namespace nnkit::clitest {
namespace {

class BackendSwitch : public CliTest {
 protected:
  // tiny.yaml with its backend line (`backend: {type: cpu, threads: 1}`) replaced.
  fs::path with_backend(const std::string& name, const std::string& backend_line) {
    std::string text = tiny_config_yaml();
    const std::string cpu_line = "backend: {type: cpu, threads: 1}";
    const size_t at = text.find(cpu_line);
    EXPECT_NE(at, std::string::npos);
    text.replace(at, cpu_line.size(), backend_line);
    return write(name, text);
  }
  // Whether the CUDA backend plugin is built and loads here (a GPU is not needed for that).
  static bool cuda_plugin_available() {
    const RunResult r = run_nnkit({"plugins", "--json"});
    return r.exit_code == 0 && r.out.find("\"name\": \"cuda\"") != std::string::npos;
  }
};

TEST_F(BackendSwitch, ACudaConfigTrainsOnTheCpuWithTheCudaOptionsDropped) {
  const fs::path config =
      with_backend("gpu.yaml", "backend: {type: cuda, device: 0, tf32: false, cuda_graphs: true}");
  const RunResult r =
      run_nnkit({"train", config.string(), "backend.type=cpu", "--data", tokens_.string(), "--out",
                 path("run").string(), "train.steps=2", "train.eval_every=0"});
  ASSERT_EXIT_CODE(r, 0);
  EXPECT_MENTIONS(r.err, "backend.device=0 dropped: backend/cpu has no option 'device'");
  EXPECT_MENTIONS(r.err, "backend.tf32=false dropped: backend/cpu has no option 'tf32'");
  EXPECT_MENTIONS(r.err,
                  "backend.cuda_graphs=true dropped: backend/cpu has no option "
                  "'cuda_graphs'");
  // The run's resolved config is a CPU one: resuming it needs no override.
  const std::string resolved = read_text(path("run") / "config.yaml");
  EXPECT_EQ(resolved.find("cuda_graphs"), std::string::npos) << resolved;
  EXPECT_MENTIONS(resolved, "type: cpu");
}

TEST_F(BackendSwitch, WithoutTheSwitchTheCudaOptionsAreUnknownKeysForTheCpu) {
  const fs::path config = with_backend("wrong.yaml", "backend: {type: cpu, device: 0}");
  const RunResult r = run_nnkit({"validate", config.string()});
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "unknown key 'device' in backend");
}

TEST_F(BackendSwitch, ValidatingTheFlagshipCudaConfigNeedsNoGpu) {
  if (!cuda_plugin_available()) GTEST_SKIP() << "backend/cuda is not built here";
  const fs::path flagship = source_dir() / "configs" / "cuda-nn-6.9b.yaml";
  const RunResult r = run_nnkit({"validate", flagship.string(), "backend.type=cuda"});
  ASSERT_EXIT_CODE(r, 0);
  EXPECT_MENTIONS(r.out, "parameters:        6,882,678,528");
  EXPECT_MENTIONS(r.out, "active per token:  1,786,599,168");
  EXPECT_MENTIONS(r.out, "type: cuda");
  const RunResult json =
      run_nnkit({"validate", flagship.string(), "backend={type: cuda, precision: fp16}", "--json"});
  ASSERT_EXIT_CODE(json, 0);
  EXPECT_EQ(nlohmann::json::parse(json.out).at("total_params").get<int64_t>(), 6882678528);
}

TEST_F(BackendSwitch, ACpuConfigSwitchedToCudaDropsThreadsWithANotice) {
  if (!cuda_plugin_available()) GTEST_SKIP() << "backend/cuda is not built here";
  const RunResult r = run_nnkit({"validate", config_.string(), "backend.type=cuda"});
  ASSERT_EXIT_CODE(r, 0);
  EXPECT_MENTIONS(r.err, "backend.threads=1 dropped: backend/cuda has no option 'threads'");
  EXPECT_EQ(r.out.find("threads"), std::string::npos) << r.out;
  // Training gets past the configuration the same way: it trains on a GPU, and without one it
  // stops at the device, not at the config.
  const RunResult train =
      run_nnkit({"train", config_.string(), "backend.type=cuda", "--data", tokens_.string(),
                 "--out", path("run").string(), "train.steps=2", "train.eval_every=0"});
  EXPECT_MENTIONS(train.err, "backend.threads=1 dropped: backend/cuda has no option 'threads'");
  EXPECT_EQ(train.all().find("unknown key"), std::string::npos) << train.all();
  if (train.exit_code != 0) {
    EXPECT_MENTIONS(train.err, "[backend/cuda]");
  }
}

TEST_F(BackendSwitch, AnOptionTypedForTheOldBackendIsStillAnError) {
  if (!cuda_plugin_available()) GTEST_SKIP() << "backend/cuda is not built here";
  const RunResult r =
      run_nnkit({"validate", config_.string(), "backend.type=cuda", "backend.threads=4"});
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_MENTIONS(r.err, "[backend/cuda] unknown key 'threads' in backend");
  EXPECT_MENTIONS(r.err, "command-line override 'backend.threads=4'");
}

}  // namespace
}  // namespace nnkit::clitest
