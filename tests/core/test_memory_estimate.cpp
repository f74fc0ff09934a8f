// Purpose: nnkit/memory_estimate.h as a unit: what each category counts per workload and
// precision (bf16 compute copies and 2-byte activations on CUDA, docs/cuda.md), checkpointing,
// the KV cache, overflow, the message of a refusal, and the host limit read from /proc/meminfo
// and cgroup v1/v2 files (fake roots in a temporary folder).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <vector>

#include "nnkit/error.h"
#include "nnkit/memory_estimate.h"

namespace nnkit {
namespace {

namespace fs = std::filesystem;

// Expects fn to throw E whose message holds every one of `parts`.
template <typename E>
void expect_throws(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no exception";
  } catch (const E& e) {
    const std::string what = e.what();
    for (const std::string& part : parts) {
      EXPECT_NE(what.find(part), std::string::npos) << "missing '" << part << "' in: " << what;
    }
  }
}

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "nnkit-mem-XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

Options::Value int_value(int64_t v) {
  Options::Value value;
  value.type = OptionType::kInt;
  value.int_value = v;
  return value;
}

// The dims of configs/tiny.yaml (MoE, 4 experts top-2, MQA 4 x 32).
RunConfig tiny(const std::string& backend = "cpu", const std::string& precision = "") {
  RunConfig c;
  c.model.vocab_size = 260;
  c.model.hidden_dim = 128;
  c.model.n_layers = 4;
  c.model.max_seq_len = 512;
  c.model.is_moe = true;
  c.model.attention.options.set("n_heads", int_value(4));
  c.model.attention.options.set("n_kv_heads", int_value(1));
  c.model.attention.options.set("head_dim", int_value(32));
  c.model.experts.options.set("n_experts", int_value(4));
  c.model.experts.options.set("ffn_dim", int_value(256));
  c.model.router.options.set("top_k", int_value(2));
  c.backend.kind = "backend";
  c.backend.name = backend;
  if (!precision.empty()) {
    Options::Value value;
    value.type = OptionType::kString;
    value.string_value = precision;
    c.backend.options.set("precision", value);
  }
  return c;
}

constexpr int64_t kParams = 1806464;  // `nnkit validate configs/tiny.yaml`

TEST(MemoryEstimate, TrainCountsEveryCategoryAndCheckpointingKeepsLess) {
  const RunConfig c = tiny();
  const MemoryShape shape{Workload::kTrain, 16, 128, 0, false};
  const MemoryEstimate e = estimate_memory(c, kParams, shape);
  EXPECT_EQ(e.parameters, 4 * kParams);
  EXPECT_EQ(e.gradients, 4 * kParams);
  EXPECT_EQ(e.optimizer_state, 8 * kParams);
  EXPECT_EQ(e.compute_copies, 0);
  EXPECT_EQ(e.kv_cache, 0);
  EXPECT_EQ(e.precision, "fp32");
  // Activations grow linearly with the tokens of a step.
  const MemoryEstimate twice = estimate_memory(c, kParams, {Workload::kTrain, 32, 128, 0, false});
  EXPECT_EQ(twice.activations, 2 * e.activations);
  const MemoryEstimate ckpt = estimate_memory(c, kParams, {Workload::kTrain, 16, 128, 0, true});
  EXPECT_LT(ckpt.activations, e.activations / 2);
  EXPECT_EQ(e.total(), e.parameters + e.gradients + e.optimizer_state + e.activations);
}

TEST(MemoryEstimate, CudaBf16HasCompute16BitCopiesAndHalfSizeActivations) {
  const MemoryShape shape{Workload::kTrain, 16, 128, 0, false};
  const MemoryEstimate fp32 = estimate_memory(tiny("cuda", "fp32"), kParams, shape);
  const MemoryEstimate bf16 = estimate_memory(tiny("cuda", "bf16"), kParams, shape);
  EXPECT_EQ(fp32.compute_copies, 0);
  EXPECT_EQ(bf16.compute_copies, 2 * kParams);
  EXPECT_EQ(bf16.parameters, 4 * kParams);       // fp32 masters
  EXPECT_EQ(bf16.optimizer_state, 8 * kParams);  // fp32 moments
  EXPECT_EQ(bf16.gradients, 4 * kParams);        // fp32 gradients
  // fp32 stays for logits, router statistics and norms, so more than half remains.
  EXPECT_LT(bf16.activations, fp32.activations);
  EXPECT_GT(bf16.activations, fp32.activations / 2);
}

TEST(MemoryEstimate, EvalAndGenerate) {
  const RunConfig c = tiny();
  const MemoryEstimate eval = estimate_memory(c, kParams, {Workload::kEval, 16, 128, 0, false});
  EXPECT_EQ(eval.gradients, 0);
  EXPECT_EQ(eval.optimizer_state, 0);
  EXPECT_GT(eval.activations, 0);
  const MemoryEstimate gen = estimate_memory(c, kParams, {Workload::kGenerate, 2, 10, 100, false});
  // 4 layers x (k and v) x 1 KV head x 32 dims x 4 bytes per token, 2 sequences x 100 tokens.
  EXPECT_EQ(gen.kv_cache, 2 * 100 * 4 * 2 * 32 * 4);
}

// Inference at bf16 holds the compute copies only (Transformer::allocate_inference_only) and one
// f32 tensor while loading: the largest parameter, here the embedding (260 x 128).
TEST(MemoryEstimate, InferenceAtBf16CountsComputeWeightsAndOneStagedTensor) {
  for (Workload workload : {Workload::kEval, Workload::kGenerate}) {
    const MemoryShape shape{workload, 2, 10, 100, false};
    const MemoryEstimate e = estimate_memory(tiny("cuda", "bf16"), kParams, shape);
    EXPECT_EQ(e.parameters, 0);
    EXPECT_EQ(e.compute_copies, 2 * kParams);
    EXPECT_EQ(e.load_staging, 4 * 260 * 128);
    EXPECT_EQ(e.gradients, 0);
    EXPECT_EQ(e.total(), e.compute_copies + e.load_staging + e.activations + e.kv_cache);
    MemoryShape with_masters = shape;
    with_masters.keep_f32_masters = true;
    const MemoryEstimate m = estimate_memory(tiny("cuda", "bf16"), kParams, with_masters);
    EXPECT_EQ(m.parameters, 4 * kParams);
    EXPECT_EQ(m.compute_copies, 2 * kParams);
    EXPECT_EQ(m.load_staging, 0);
    // At fp32 the masters are the weights that compute.
    const MemoryEstimate fp32 = estimate_memory(tiny("cuda", "fp32"), kParams, shape);
    EXPECT_EQ(fp32.parameters, 4 * kParams);
    EXPECT_EQ(fp32.compute_copies, 0);
    EXPECT_EQ(fp32.load_staging, 0);
  }
  // Training keeps its masters whatever the flag says.
  MemoryShape train{Workload::kTrain, 2, 10, 0, false};
  train.keep_f32_masters = false;
  EXPECT_EQ(estimate_memory(tiny("cuda", "bf16"), kParams, train).parameters, 4 * kParams);
}

// configs/cuda-nn-6.9b.yaml generating at bf16: 6,882,678,528 parameters in 2 bytes (12.8 GiB)
// plus the 32000 x 768 embedding staged in f32, where masters and copies took 38.5 GiB.
TEST(MemoryEstimate, FlagshipGenerationAtBf16HoldsTheBf16WeightsOnly) {
  constexpr int64_t kFlagship = 6882678528;
  RunConfig c = tiny("cuda", "bf16");
  c.model.vocab_size = 32000;
  c.model.hidden_dim = 768;
  c.model.n_layers = 30;
  c.model.attention.options.set("n_heads", int_value(12));
  c.model.attention.options.set("head_dim", int_value(64));
  c.model.experts.options.set("n_experts", int_value(16));
  c.model.experts.options.set("ffn_dim", int_value(6144));
  c.model.router.options.set("top_k", int_value(4));
  const MemoryEstimate e = estimate_memory(c, kFlagship, {Workload::kGenerate, 1, 17, 145, false});
  EXPECT_EQ(e.compute_copies, 13765357056);  // 12.82 GiB
  EXPECT_EQ(e.parameters, 0);
  EXPECT_EQ(e.load_staging, 98304000);  // 32000 x 768 x 4
  // 30 layers x (k, v) x 64 dims x 2 bytes per token.
  EXPECT_EQ(e.kv_cache, 145 * 30 * 2 * 64 * 2);
  MemoryShape with_masters{Workload::kGenerate, 1, 17, 145, false};
  with_masters.keep_f32_masters = true;
  EXPECT_EQ(estimate_memory(c, kFlagship, with_masters).parameters, 27530714112);  // 25.6 GiB
}

TEST(MemoryEstimate, OverflowIsAConfigError) {
  expect_throws<ConfigError>(
      [] {
        estimate_memory(tiny(), kParams, {Workload::kTrain, int64_t{1} << 40, 1 << 20, 0, false});
      },
      {"does not fit in 64 bits", "batch 1099511627776", "train.batch_size"});
}

TEST(MemoryEstimate, RefusalNamesEstimateLimitAndFixes) {
  const RunConfig c = tiny();
  const MemoryShape shape{Workload::kTrain, 16, 128, 0, false};
  const MemoryEstimate e = estimate_memory(c, kParams, shape);
  const MemoryLimit limit{1 << 20, "MemAvailable in /proc/meminfo"};
  expect_throws<Error>(
      [&] { check_memory(e, c, shape, limit, "nnkit train", "--skip-memory-check"); },
      {"[memory] nnkit train needs about", "activations", "1.0 MiB is available", "MemAvailable",
       "train.batch_size", "train.seq_len", "train.activation_checkpointing=true", "bf16",
       "--skip-memory-check"});
  // Enough memory or no limit known: no error.
  check_memory(e, c, shape, MemoryLimit{e.total(), "x"}, "nnkit train", "--skip");
  check_memory(e, c, shape, std::nullopt, "nnkit train", "--skip");
  // A GPU's estimate is held against the device's free memory.
  const RunConfig cuda = tiny("cuda", "bf16");
  const MemoryEstimate on_gpu = estimate_memory(cuda, kParams, shape);
  expect_throws<Error>(
      [&] {
        check_memory(on_gpu, cuda, shape, MemoryLimit{1 << 20, "free on backend/cuda (cuda:0)"},
                     "nnkit train", "--skip-memory-check");
      },
      {"nnkit train needs about", "1.0 MiB is available", "free on backend/cuda (cuda:0)",
       "train.batch_size", "--skip-memory-check"});
  check_memory(on_gpu, cuda, shape, MemoryLimit{on_gpu.total(), "x"}, "nnkit train", "--x");
}

TEST(MemoryEstimate, AKvCacheBeyondTheDeviceIsRefusedWithItsBytes) {
  const RunConfig cuda = tiny("cuda", "bf16");
  const MemoryShape shape{Workload::kGenerate, 8, 1000, 1 << 20, false};
  const MemoryEstimate e = estimate_memory(cuda, kParams, shape);
  ASSERT_GT(e.kv_cache, int64_t{1} << 30);
  expect_throws<Error>(
      [&] {
        check_memory(e, cuda, shape, MemoryLimit{int64_t{1} << 30, "free on backend/cuda"},
                     "nnkit generate", "--skip-memory-check");
      },
      {"nnkit generate needs about", "KV cache", "1.0 GiB is available", "fewer prompts",
       "--max-new-tokens"});
}

void write(const fs::path& file, const std::string& text) {
  fs::create_directories(file.parent_path());
  std::ofstream(file) << text;
}

TEST(HostMemory, ReadsMemAvailableAndTheSmallerCgroupLimit) {
  TempDir dir;
  write(dir / "meminfo", "MemTotal:  1000 kB\nMemFree: 10 kB\nMemAvailable:   800 kB\n");
  auto limit = host_memory_available(dir / "meminfo", dir / "cg-none");
  ASSERT_TRUE(limit);
  EXPECT_EQ(limit->bytes, 800 * 1024);
  EXPECT_NE(limit->source.find("MemAvailable"), std::string::npos);
  // cgroup v2: limit minus usage, when smaller.
  write(dir / "v2" / "memory.max", "500000\n");
  write(dir / "v2" / "memory.current", "100000\n");
  limit = host_memory_available(dir / "meminfo", dir / "v2");
  ASSERT_TRUE(limit);
  EXPECT_EQ(limit->bytes, 400000);
  EXPECT_NE(limit->source.find("memory.max"), std::string::npos);
  // "max" means no limit; cgroup v1 writes no limit as a huge number.
  write(dir / "v2max" / "memory.max", "max\n");
  EXPECT_EQ(host_memory_available(dir / "meminfo", dir / "v2max")->bytes, 800 * 1024);
  write(dir / "v1" / "memory" / "memory.limit_in_bytes", "9223372036854771712\n");
  EXPECT_EQ(host_memory_available(dir / "meminfo", dir / "v1")->bytes, 800 * 1024);
  write(dir / "v1b" / "memory" / "memory.limit_in_bytes", "300000\n");
  write(dir / "v1b" / "memory" / "memory.usage_in_bytes", "400000\n");
  EXPECT_EQ(host_memory_available(dir / "meminfo", dir / "v1b")->bytes, 0);
  EXPECT_FALSE(host_memory_available(dir / "missing", dir / "cg-none"));
}

TEST(MemoryEstimate, FormatsBytes) {
  EXPECT_EQ(format_bytes(12), "12 B");
  EXPECT_EQ(format_bytes(1536), "1.5 KiB");
  EXPECT_EQ(format_bytes(int64_t{3} << 30), "3.0 GiB");
}

}  // namespace
}  // namespace nnkit
