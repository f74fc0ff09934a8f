// Purpose: see hf_test_util.h.
#include "hf_test_util.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "nnkit/checkpoint.h"
#include "nnkit/io/atomic_file.h"
#include "support/test_support.h"

namespace nnkit::test {

namespace fs = std::filesystem;

TempDir::TempDir() {
  std::string pattern = (fs::temp_directory_path() / "nnkit-hf-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::string small_moe_yaml() {
  return "model:\n"
         "  vocab_size: 300\n  hidden_dim: 32\n  n_layers: 2\n  max_seq_len: 64\n"
         "  norm: {type: rmsnorm, eps: 1.0e-5}\n"
         "  attention: {type: mqa, n_heads: 4, n_kv_heads: 1, head_dim: 8,"
         " rope: {base: 10000, ntk_alpha: 2.0}}\n"
         "  moe:\n"
         "    router: {type: topk, top_k: 2, renormalize: true, aux_loss_weight: 0.01}\n"
         "    experts: {type: swiglu, n_experts: 4, ffn_dim: 48}\n"
         "train: {seq_len: 32}\n";
}

std::string small_dense_yaml() {
  return "model:\n"
         "  vocab_size: 300\n  hidden_dim: 32\n  n_layers: 2\n  max_seq_len: 64\n"
         "  norm: {type: rmsnorm, eps: 1.0e-6}\n"
         "  attention: {type: mqa, n_heads: 4, n_kv_heads: 2, head_dim: 8,"
         " rope: {base: 500000}}\n"
         "  ffn: {type: swiglu, ffn_dim: 64}\n"
         "train: {seq_len: 32}\n";
}

RunConfig resolve_yaml(const std::string& yaml, const std::string& source) {
  return resolve_config(ConfigDocument::parse(yaml, source), registry());
}

namespace {

std::unique_ptr<Transformer> build(const RunConfig& config) {
  const PluginChoice& b = config.backend;
  auto backend = registry().create<Backend>(b.kind, b.name, CreateArgs{b.options, {}, nullptr});
  auto model = std::make_unique<Transformer>(config, registry(), backend);
  model->allocate(false);
  return model;
}

}  // namespace

void make_random_run(const fs::path& run_dir, const std::string& yaml, uint64_t seed) {
  const RunConfig config = resolve_yaml(yaml);
  auto model = build(config);
  model->init_random(seed);
  CheckpointStore(run_dir).save(TrainerState{}, *model, nullptr, config.to_yaml(), 1);
}

LoadedRun load_run(const fs::path& run_dir) {
  const CheckpointRef ref = CheckpointStore(run_dir).require_latest();
  LoadedRun run;
  run.config = resolve_yaml(CheckpointStore::read_config(ref), (ref.dir / "config.yaml").string());
  run.model = build(run.config);
  CheckpointStore::load(ref, *run.model, nullptr);
  return run;
}

std::vector<float> logits_of(Transformer& model, const std::vector<int32_t>& ids) {
  const Tensor logits = model.logits(ids, 1, static_cast<int64_t>(ids.size()));
  return to_vector(model.backend(), logits);
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float worst = 0.0f;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    worst = std::max(worst, std::fabs(a[i] - b[i]));
  }
  return worst;
}

float max_abs(const std::vector<float>& a) {
  float worst = 0.0f;
  for (float v : a) worst = std::max(worst, std::fabs(v));
  return worst;
}

std::vector<float> parameter_values(Transformer& model, const std::string& name) {
  Parameter* p = model.find_parameter(name);
  EXPECT_NE(p, nullptr) << name;
  return p ? to_vector(model.backend(), p->value) : std::vector<float>{};
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

std::string read_text(const fs::path& path) {
  return read_file(path);
}

}  // namespace nnkit::test
