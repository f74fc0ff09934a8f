// Purpose: the config.json <-> nnkit config mapping: defaults, the aux-loss and NTK conversions,
// and refusals of HF features nnkit does not have, each naming the config.json key.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "hf_test_util.h"
#include "nnkit/error.h"
#include "nnkit/hf.h"
#include "support/test_support.h"

namespace nnkit::test {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

json mixtral_config() {
  return json{{"architectures", {"MixtralForCausalLM"}},
              {"model_type", "mixtral"},
              {"vocab_size", 320},
              {"hidden_size", 64},
              {"intermediate_size", 96},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 4},
              {"num_key_value_heads", 1},
              {"num_local_experts", 4},
              {"num_experts_per_tok", 2},
              {"max_position_embeddings", 128},
              {"rms_norm_eps", 1e-5},
              {"rope_theta", 1000000.0},
              {"router_aux_loss_coef", 0.02},
              {"sliding_window", nullptr},
              {"tie_word_embeddings", false},
              {"hidden_act", "silu"},
              {"torch_dtype", "float32"},
              {"transformers_version", "5.0.0"}};
}

RunConfig import_config(const json& config) {
  return resolve_yaml(hf_config_to_yaml(config.dump(), "config.json", "{type: byte}"));
}

std::string refusal(const json& config) {
  try {
    import_config(config);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(HfConfig, MixtralMapsToAnMoeModel) {
  const RunConfig c = import_config(mixtral_config());
  EXPECT_TRUE(c.model.is_moe);
  EXPECT_EQ(c.model.vocab_size, 320);
  EXPECT_EQ(c.model.hidden_dim, 64);
  EXPECT_EQ(c.model.max_seq_len, 128);
  EXPECT_EQ(c.model.attention.options.get_int("head_dim"), 16);  // hidden / heads when absent
  EXPECT_EQ(c.model.attention.options.get_int("n_kv_heads"), 1);
  EXPECT_EQ(c.model.attention.options.get_float("rope.base"), 1e6);
  EXPECT_EQ(c.model.attention.options.get_float("rope.ntk_alpha"), 1.0);
  EXPECT_EQ(c.model.experts.options.get_int("ffn_dim"), 96);
  EXPECT_EQ(c.model.router.options.get_int("top_k"), 2);
  EXPECT_TRUE(c.model.router.options.get_bool("renormalize"));
  // HF's coefficient c is top_k times ours per layer and averaged over layers: c * k / L.
  EXPECT_DOUBLE_EQ(c.model.router.options.get_float("aux_loss_weight"), 0.02 * 2 / 2);
  EXPECT_EQ(c.model.norm.options.get_float("eps"), 1e-5);
  // And back: the coefficient and the base survive.
  const json back = json::parse(hf_config_json(c, DType::kF32, 2, 3, 0));
  EXPECT_DOUBLE_EQ(back["router_aux_loss_coef"].get<double>(), 0.02);
  EXPECT_EQ(back["rope_theta"].get<double>(), 1e6);
  EXPECT_EQ(back["num_local_experts"], 4);
  EXPECT_EQ(back["tie_word_embeddings"], false);
  EXPECT_TRUE(back["sliding_window"].is_null());
}

TEST(HfConfig, ExportFoldsStaticNtkScalingIntoRopeTheta) {
  const RunConfig c = resolve_yaml(small_moe_yaml());  // head_dim 8, alpha 2
  const json j = json::parse(hf_config_json(c, DType::kBF16, 2, 3, 0));
  EXPECT_DOUBLE_EQ(j["rope_theta"].get<double>(), 10000.0 * std::pow(2.0, 8.0 / 6.0));
  EXPECT_EQ(j["torch_dtype"], "bfloat16");
}

TEST(HfConfig, LlamaDefaultsFollowTransformers) {
  json config = {{"model_type", "llama"},        {"hidden_size", 32},
                 {"intermediate_size", 64},      {"num_hidden_layers", 1},
                 {"num_attention_heads", 4},     {"vocab_size", 300},
                 {"max_position_embeddings", 64}};
  const RunConfig c = import_config(config);
  EXPECT_FALSE(c.model.is_moe);
  EXPECT_EQ(c.model.attention.options.get_int("n_kv_heads"), 4);  // MHA when absent
  EXPECT_EQ(c.model.attention.options.get_float("rope.base"), 10000.0);
  EXPECT_EQ(c.model.norm.options.get_float("eps"), 1e-6);
  EXPECT_EQ(c.model.ffn.options.get_int("ffn_dim"), 64);
}

TEST(HfConfig, Transformers5RopeParametersAreRead) {
  json config = mixtral_config();
  config.erase("rope_theta");
  config["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 250000.0}};
  EXPECT_EQ(import_config(config).model.attention.options.get_float("rope.base"), 250000.0);
}

TEST(HfConfig, UnsupportedFeaturesAreRefusedNamingTheKey) {
  json c = mixtral_config();
  c["sliding_window"] = 4096;
  EXPECT_NE(refusal(c).find("'sliding_window'"), std::string::npos) << refusal(c);
  c = mixtral_config();
  c["attention_bias"] = true;
  EXPECT_NE(refusal(c).find("'attention_bias'"), std::string::npos) << refusal(c);
  c = mixtral_config();
  c["model_type"] = "qwen2_moe";
  EXPECT_NE(refusal(c).find("'model_type'"), std::string::npos) << refusal(c);
  c = mixtral_config();
  c["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_NE(refusal(c).find("'rope_scaling'"), std::string::npos) << refusal(c);
  c = mixtral_config();
  c["hidden_act"] = "gelu";
  EXPECT_NE(refusal(c).find("'hidden_act'"), std::string::npos) << refusal(c);
  c = mixtral_config();
  c.erase("hidden_size");
  EXPECT_NE(refusal(c).find("'hidden_size' is missing"), std::string::npos) << refusal(c);
  json dense = {{"model_type", "llama"},  {"hidden_size", 32},        {"intermediate_size", 64},
                {"num_hidden_layers", 1}, {"num_attention_heads", 4}, {"mlp_bias", true}};
  EXPECT_NE(refusal(dense).find("'mlp_bias'"), std::string::npos) << refusal(dense);
  dense = {{"model_type", "mistral"},
           {"hidden_size", 32},
           {"intermediate_size", 64},
           {"num_hidden_layers", 1},
           {"num_attention_heads", 4}};
  EXPECT_NE(refusal(dense).find("'sliding_window'"), std::string::npos) << refusal(dense);
}

TEST(HfConfig, ImportHfRefusesTheFolderBeforeWritingAnything) {
  TempDir tmp;
  make_random_run(tmp / "run", small_dense_yaml(), 1);
  export_hf(tmp / "run", tmp / "hf", registry());
  json config = json::parse(read_text(tmp / "hf" / "config.json"));
  config["sliding_window"] = 128;
  write_text(tmp / "hf" / "config.json", config.dump());
  try {
    import_hf(tmp / "hf", tmp / "back", registry());
    FAIL() << "imported a sliding-window model";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("sliding_window"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(tmp / "back" / "checkpoints"));
}

}  // namespace
}  // namespace nnkit::test
