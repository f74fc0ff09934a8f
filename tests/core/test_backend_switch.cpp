// Switching the backend from the command line (docs/config.md, "Switching the backend"): the
// file's options for the previous backend that the new one does not declare are dropped with one
// log line each; options typed on the command line are never dropped; nothing changes without a
// switch.
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>

#include <algorithm>
#include <sstream>

#include "nnkit/config.h"
#include "nnkit/error.h"
#include "nnkit/logging.h"
#include "support/test_support.h"

namespace nnkit {
namespace {

// A model small enough to resolve fast; `backend` is the file's backend line.
std::string config_with_backend(const std::string& backend) {
  return R"(model:
  vocab_size: 260
  hidden_dim: 32
  n_layers: 2
  max_seq_len: 64
  attention: {type: mqa, n_heads: 4, n_kv_heads: 1, head_dim: 8}
  moe:
    router: {type: topk, top_k: 2}
    experts: {type: swiglu, n_experts: 4, ffn_dim: 16}
train: {seq_len: 32}
)" + backend +
         "\n";
}

// What nnkit's logger printed while it lived.
class CapturedLog {
 public:
  CapturedLog() : sink_(std::make_shared<spdlog::sinks::ostream_sink_mt>(text_)) {
    sink_->set_pattern("%v");
    logger()->sinks().push_back(sink_);
  }
  ~CapturedLog() {
    auto& sinks = logger()->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
  }
  std::string text() const { return text_.str(); }

 private:
  std::ostringstream text_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink_;
};

RunConfig resolve(const std::string& text, const std::vector<std::string>& overrides) {
  ConfigDocument doc = ConfigDocument::parse(text, "gpu.yaml");
  for (const auto& o : overrides) doc.apply_override(o);
  return resolve_config(doc, test::registry());
}

std::string error_of(const std::string& text, const std::vector<std::string>& overrides) {
  try {
    resolve(text, overrides);
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

// A CUDA config run on the CPU: the CUDA plugin need not exist, only the new backend's must.
const std::string kCudaFile =
    config_with_backend("backend: {type: cuda, device: 0, tf32: true, cuda_graphs: false}");

TEST(BackendSwitch, OptionsTheNewBackendLacksAreDroppedWithOneLineEach) {
  CapturedLog log;
  const RunConfig cfg = resolve(kCudaFile, {"backend.type=cpu"});
  EXPECT_EQ(cfg.backend.id(), "backend/cpu");
  EXPECT_EQ(cfg.backend.options.get_int("threads"), 0) << "the new backend's defaults apply";
  const std::string text = log.text();
  EXPECT_NE(text.find("backend.device=0 dropped: backend/cpu has no option 'device' (set for "
                      "backend/cuda at gpu.yaml:11:"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("backend.cuda_graphs=false dropped: backend/cpu has no option 'cuda_graphs'"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("backend.tf32=true dropped: backend/cpu has no option 'tf32'"),
            std::string::npos)
      << text;
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 3) << text;
  // The resolved configuration (config.yaml of a run) holds only the new backend's options.
  const std::string yaml = cfg.to_yaml();
  EXPECT_EQ(yaml.find("tf32"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("threads: 0"), std::string::npos) << yaml;
}

TEST(BackendSwitch, AMappingValueIsLoggedAsOneLine) {
  CapturedLog log;
  resolve(config_with_backend("backend: {type: cuda, streams: {count: 2, priority: high}}"),
          {"backend.type=cpu"});
  EXPECT_NE(log.text().find("backend.streams={count: 2, priority: high} dropped"),
            std::string::npos)
      << log.text();
}

TEST(BackendSwitch, AnOptionTypedForTheWrongBackendIsStillAnError) {
  const std::string message = error_of(kCudaFile, {"backend.type=cpu", "backend.device=1"});
  EXPECT_NE(message.find("[backend/cpu] unknown key 'device' in backend"), std::string::npos)
      << message;
  EXPECT_NE(message.find("command-line override 'backend.device=1'"), std::string::npos) << message;
}

TEST(BackendSwitch, AReplacedBackendMappingIsCheckedAsTyped) {
  // `backend={...}` replaces the file's mapping: what remains was typed for the new backend.
  const std::string message = error_of(kCudaFile, {"backend={type: cpu, device: 1}"});
  EXPECT_NE(message.find("unknown key 'device' in backend"), std::string::npos) << message;
  EXPECT_NE(message.find("command-line override 'backend={type: cpu, device: 1}'"),
            std::string::npos)
      << message;
  CapturedLog log;
  EXPECT_EQ(
      resolve(kCudaFile, {"backend={type: cpu, threads: 3}"}).backend.options.get_int("threads"),
      3);
  EXPECT_EQ(log.text(), "") << "nothing of the file's mapping is left to drop";
}

TEST(BackendSwitch, WithoutASwitchUnknownBackendKeysAreErrors) {
  // The file itself names cpu with a CUDA option: a mistake in the file, not a switch.
  const std::string file = config_with_backend("backend: {type: cpu, device: 0}");
  EXPECT_NE(error_of(file, {}).find("unknown key 'device' in backend"), std::string::npos);
  // Overriding the type with the one the file already has is no switch either.
  EXPECT_NE(error_of(file, {"backend.type=cpu"}).find("unknown key 'device' in backend"),
            std::string::npos);
  // A file without a backend section means cpu: naming cpu again drops nothing.
  CapturedLog log;
  resolve(config_with_backend(""), {"backend.type=cpu"});
  EXPECT_EQ(log.text(), "");
}

TEST(BackendSwitch, TheFilesDefaultTypeCountsAsThePreviousBackend) {
  // `backend: {threads: 2}` is a CPU backend by default; switching to another drops threads.
  if (test::registry().find("backend", "cuda") == nullptr) {
    GTEST_SKIP() << "backend/cuda is not built here";
  }
  CapturedLog log;
  const RunConfig cfg =
      resolve(config_with_backend("backend: {threads: 2}"), {"backend.type=cuda"});
  EXPECT_EQ(cfg.backend.id(), "backend/cuda");
  EXPECT_NE(log.text().find("backend.threads=2 dropped: backend/cuda has no option 'threads' "
                            "(set for backend/cpu at gpu.yaml:11:"),
            std::string::npos)
      << log.text();
  EXPECT_EQ(cfg.backend.options.get_string("precision"), "bf16");
}

TEST(BackendSwitch, CpuFileSwitchedToCudaKeepsTheOptionsCudaDeclares) {
  if (test::registry().find("backend", "cuda") == nullptr) {
    GTEST_SKIP() << "backend/cuda is not built here";
  }
  CapturedLog log;
  const RunConfig cfg = resolve(config_with_backend("backend: {type: cpu, threads: 2}"),
                                {"backend.type=cuda", "backend.precision=fp16"});
  EXPECT_EQ(cfg.backend.options.get_string("precision"), "fp16");
  EXPECT_NE(log.text().find("backend.threads=2 dropped: backend/cuda has no option 'threads'"),
            std::string::npos)
      << log.text();
  // ... and an option typed for the CPU together with the switch is refused.
  const std::string message = error_of(config_with_backend("backend: {type: cpu, threads: 2}"),
                                       {"backend.type=cuda", "backend.threads=4"});
  EXPECT_NE(message.find("[backend/cuda] unknown key 'threads' in backend"), std::string::npos)
      << message;
}

}  // namespace
}  // namespace nnkit
