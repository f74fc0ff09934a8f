// Purpose: parameter counts. The shipped cuda-nn 6.9B description must give the spec's exact
// totals without allocating anything, and small MoE and dense models must match the spec's
// formula (embedding, per layer q/o/k/v + router + experts + two norms, final norm, LM head).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "model/model_test_util.h"
#include "nnkit/config.h"
#include "nnkit/error.h"
#include "nnkit/model.h"
#include "support/test_support.h"

namespace nnkit::test {
namespace {

std::filesystem::path source_dir() {
  const char* dir = std::getenv("NNKIT_SOURCE_DIR");
  return dir != nullptr ? std::filesystem::path(dir)
                        : std::filesystem::path(__FILE__).parent_path().parent_path().parent_path();
}

TEST(ParameterCount, CudaNn69bConfigMatchesTheSpecWithoutAllocating) {
  const ConfigDocument doc = ConfigDocument::load_file(source_dir() / "configs/cuda-nn-6.9b.yaml");
  const RunConfig config = resolve_config(doc, registry());
  const Transformer model(config, registry(), cpu_backend());
  EXPECT_FALSE(model.allocated());
  EXPECT_EQ(model.parameter_count(), 6882678528LL);
  EXPECT_EQ(model.active_parameter_count(), 1786599168LL);
  // NTK scaling alpha 8 over head_dim 64: base' = 10000 * 8^(64/62).
  EXPECT_NEAR(model.rope_base(), 10000.0 * std::pow(8.0, 64.0 / 62.0), 1e-6 * model.rope_base());
}

TEST(ParameterCount, SizesThatOverflowAreRefusedBeforeAllocating) {
  // hidden_dim 2^40 with a 32000-token vocabulary: 3.5e16 embedding entries are still countable,
  // but the experts' 16 x 3 x 2^40 x 6144 are not (they would wrap to a small or negative count).
  ConfigDocument doc = ConfigDocument::load_file(source_dir() / "configs/cuda-nn-6.9b.yaml");
  doc.apply_override("model.hidden_dim=1099511627776");
  const RunConfig config = resolve_config(doc, registry());
  Transformer model(config, registry(), cpu_backend());
  try {
    (void)model.parameter_count();
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("does not fit in 64 bits"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("hidden_dim 1099511627776"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(model.allocate(true), ConfigError);  // nothing is allocated first
  EXPECT_FALSE(model.allocated());
}

// The spec's counting rule written out for a ModelSpec.
struct Counts {
  int64_t total = 0;
  int64_t active = 0;
};

Counts spec_formula(const ModelSpec& s) {
  const int64_t c = s.hidden_dim;
  const int64_t attention = 2 * c * s.n_heads * s.head_dim + 2 * c * s.n_kv_heads * s.head_dim;
  const int64_t expert = 3 * c * s.ffn_dim;
  const int64_t ffn = s.moe ? s.n_experts * c + s.n_experts * expert : expert;
  const int64_t per_layer = attention + ffn + 2 * c;
  Counts counts;
  counts.total = s.vocab_size * c + s.n_layers * per_layer + c + c * s.vocab_size;
  counts.active = counts.total - (s.moe ? s.n_layers * (s.n_experts - s.top_k) * expert : 0);
  return counts;
}

TEST(ParameterCount, SmallModelsMatchTheSpecFormula) {
  ModelSpec moe;
  moe.n_heads = 3;
  moe.n_kv_heads = 1;
  moe.head_dim = 6;
  moe.n_experts = 5;
  moe.top_k = 2;
  ModelSpec dense = moe;
  dense.moe = false;
  for (const ModelSpec& spec : {moe, dense}) {
    SCOPED_TRACE(spec.moe ? "moe" : "dense");
    Transformer model(resolve_spec(spec), registry(), cpu_backend());
    const Counts want = spec_formula(spec);
    EXPECT_EQ(model.parameter_count(), want.total);
    EXPECT_EQ(model.active_parameter_count(), want.active);
    // The descriptors agree with the count, and allocation gives each its shape.
    model.allocate(false);
    int64_t described = 0;
    for (Parameter* p : model.parameters()) {
      described += shape_numel(p->shape);
      EXPECT_EQ(p->value.numel(), shape_numel(p->shape)) << p->name;
    }
    EXPECT_EQ(described, want.total);
    // K and V of every layer: 2 * Hkv * D floats per token.
    EXPECT_EQ(model.kv_cache_bytes_per_token(),
              spec.n_layers * 2 * spec.n_kv_heads * spec.head_dim * int64_t(sizeof(float)));
  }
}

TEST(ParameterCount, ParametersCarryHuggingFaceNames) {
  ModelSpec spec;
  spec.n_layers = 1;
  spec.n_experts = 2;
  spec.top_k = 1;
  Transformer model(resolve_spec(spec), registry(), cpu_backend());
  std::vector<std::string> names;
  for (Parameter* p : model.parameters()) names.push_back(p->name);
  const std::vector<std::string> want = {
      "model.embed_tokens.weight",
      "model.layers.0.input_layernorm.weight",
      "model.layers.0.self_attn.q_proj.weight",
      "model.layers.0.self_attn.k_proj.weight",
      "model.layers.0.self_attn.v_proj.weight",
      "model.layers.0.self_attn.o_proj.weight",
      "model.layers.0.post_attention_layernorm.weight",
      "model.layers.0.block_sparse_moe.gate.weight",
      "model.layers.0.block_sparse_moe.experts.0.w1.weight",
      "model.layers.0.block_sparse_moe.experts.0.w2.weight",
      "model.layers.0.block_sparse_moe.experts.0.w3.weight",
      "model.layers.0.block_sparse_moe.experts.1.w1.weight",
      "model.layers.0.block_sparse_moe.experts.1.w2.weight",
      "model.layers.0.block_sparse_moe.experts.1.w3.weight",
      "model.norm.weight",
      "lm_head.weight",
  };
  EXPECT_EQ(names, want);
  EXPECT_NE(model.find_parameter("model.layers.0.self_attn.o_proj.weight"), nullptr);
  EXPECT_EQ(model.find_parameter("model.layers.1.self_attn.o_proj.weight"), nullptr);
}

}  // namespace
}  // namespace nnkit::test

namespace nnkit::test {
namespace {

// Expert parallelism: a model holding expert shard 1 of 2 holds the router and everything dense
// plus experts 2 and 3 of every layer (under their global names), still counts the whole model,
// and lists every parameter of the whole model, in the unsharded order, in its layout.
TEST(ParameterCount, AnExpertShardHoldsItsBlockAndCountsAndListsTheWholeModel) {
  const ConfigDocument doc = ConfigDocument::load_file(source_dir() / "configs/tiny.yaml");
  const RunConfig config = resolve_config(doc, registry());
  Transformer whole(config, registry(), cpu_backend());
  Transformer half(config, registry(), cpu_backend(), ExpertShard{1, 2});
  EXPECT_EQ(half.parameter_count(), whole.parameter_count());
  EXPECT_EQ(half.active_parameter_count(), whole.active_parameter_count());

  std::vector<std::string> all, held, experts_held;
  for (Parameter* p : whole.parameters()) all.push_back(p->name);
  for (Parameter* p : half.parameters()) held.push_back(p->name);
  for (Parameter* p : half.sharded_expert_parameters()) experts_held.push_back(p->name);
  ASSERT_FALSE(experts_held.empty());
  for (const std::string& name : experts_held) {
    const bool block = name.find(".experts.2.") != std::string::npos ||
                       name.find(".experts.3.") != std::string::npos;
    EXPECT_TRUE(block) << name;
  }
  // Everything but the experts 0 and 1 of each layer.
  size_t others = 0;
  for (const std::string& name : all) {
    if (name.find(".experts.0.") != std::string::npos ||
        name.find(".experts.1.") != std::string::npos) {
      ++others;
    }
  }
  EXPECT_EQ(held.size(), all.size() - others);
  EXPECT_EQ(experts_held.size(), others);  // 2 of 4 experts: as many as the other shard holds

  std::vector<std::string> listed;
  for (const ParameterPlace& place : half.parameter_layout()) {
    listed.push_back(place.parameter->name);
    const bool expert = place.parameter->name.find(".experts.") != std::string::npos;
    const bool first_block = place.parameter->name.find(".experts.0.") != std::string::npos ||
                             place.parameter->name.find(".experts.1.") != std::string::npos;
    EXPECT_EQ(place.shard, expert ? (first_block ? 0 : 1) : -1) << place.parameter->name;
  }
  EXPECT_EQ(listed, all);

  // A shard that does not exist.
  EXPECT_THROW(Transformer(config, registry(), cpu_backend(), ExpertShard{2, 2}), ConfigError);
}

}  // namespace
}  // namespace nnkit::test
