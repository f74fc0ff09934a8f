// Purpose: the config.json <-> nnkit config mapping of hf.h (weights are hf_import.cpp and
// hf_export.cpp). HF defaults for absent keys are those of transformers' LlamaConfig /
// MixtralConfig, so a minimal config.json means what it means to transformers.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "nnkit/error.h"
#include "nnkit/hf.h"
#include "nnkit/logging.h"

namespace nnkit {

namespace {

using json = nlohmann::json;

// Shortest text that parses back to the same double (YAML and JSON both read it).
std::string number(double value) {
  char buffer[64];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof(buffer), "%.*g", precision, value);
    if (std::strtod(buffer, nullptr) == value) break;
  }
  std::string text = buffer;
  // YAML 1.2 core schema reads "1e-05" as a string; a '.' in the mantissa makes it a float.
  if (text.find_first_of(".en") == std::string::npos) {
    text += ".0";
  } else if (text.find('e') != std::string::npos && text.find('.') == std::string::npos) {
    text.insert(text.find('e'), ".0");
  }
  return text;
}

// Typed access to config.json that remembers which keys were read, so the rest can be listed.
class HfConfigReader {
 public:
  HfConfigReader(const json& root, std::string label) : root_(root), label_(std::move(label)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& message) const {
    throw ConfigError("hf", label_ + ": '" + key + "' " + message);
  }
  // Present and not null.
  bool has(const std::string& key) {
    seen_.insert(key);
    return root_.contains(key) && !root_[key].is_null();
  }
  int64_t get_int(const std::string& key, std::optional<int64_t> fallback = std::nullopt) {
    if (!has(key)) {
      if (!fallback) fail(key, "is missing");
      return *fallback;
    }
    const json& v = root_[key];
    if (!v.is_number_integer()) fail(key, "must be an integer (got " + v.dump() + ")");
    const int64_t value = v.get<int64_t>();
    if (value < 1) fail(key, "must be >= 1 (got " + std::to_string(value) + ")");
    return value;
  }
  double get_float(const std::string& key, double fallback) {
    if (!has(key)) return fallback;
    const json& v = root_[key];
    if (!v.is_number()) fail(key, "must be a number (got " + v.dump() + ")");
    return v.get<double>();
  }
  bool get_bool(const std::string& key, bool fallback) {
    if (!has(key)) return fallback;
    const json& v = root_[key];
    if (!v.is_boolean()) fail(key, "must be true or false (got " + v.dump() + ")");
    return v.get<bool>();
  }
  std::string get_string(const std::string& key, const std::string& fallback) {
    if (!has(key)) return fallback;
    const json& v = root_[key];
    if (!v.is_string()) fail(key, "must be a string (got " + v.dump() + ")");
    return v.get<std::string>();
  }
  const json& raw(const std::string& key) {
    seen_.insert(key);
    return root_[key];
  }
  // Keys that carry no meaning for the weights or the forward pass.
  void ignore(std::initializer_list<const char*> keys) {
    for (const char* k : keys) seen_.insert(k);
  }
  std::vector<std::string> unread() const {
    std::vector<std::string> out;
    for (const auto& [key, value] : root_.items()) {
      if (!seen_.count(key)) out.push_back(key);
    }
    return out;
  }

 private:
  const json& root_;
  std::string label_;
  std::set<std::string> seen_;
};

// rope_scaling (transformers 4) or rope_parameters (transformers 5): only plain RoPE is
// supported. Returns the rope_theta found in rope_parameters, if any.
std::optional<double> check_rope(HfConfigReader& r) {
  std::optional<double> theta;
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!r.has(key)) continue;
    const json& v = r.raw(key);
    if (!v.is_object()) r.fail(key, "must be an object or null (got " + v.dump() + ")");
    std::string type = "default";
    if (v.contains("rope_type") && v["rope_type"].is_string()) type = v["rope_type"];
    if (v.contains("type") && v["type"].is_string()) type = v["type"];
    if (type != "default") {
      r.fail(key, "has type '" + type +
                      "', which nnkit does not support (only plain RoPE; nnkit's own NTK "
                      "scaling is static, see docs/hf.md)");
    }
    if (v.contains("rope_theta") && v["rope_theta"].is_number())
      theta = v["rope_theta"].get<double>();
  }
  return theta;
}

}  // namespace

std::string hf_config_to_yaml(const std::string& config_json, const std::string& label,
                              const std::string& tokenizer_yaml) {
  json root;
  try {
    root = json::parse(config_json);
  } catch (const json::exception& e) {
    throw ConfigError("hf", label + " is not valid JSON: " + e.what());
  }
  if (!root.is_object()) throw ConfigError("hf", label + " must hold a JSON object");
  HfConfigReader r(root, label);

  const std::string model_type = r.get_string("model_type", "");
  if (model_type != "mixtral" && model_type != "llama" && model_type != "mistral") {
    r.fail("model_type", "is '" + model_type +
                             "'; nnkit imports 'mixtral' (MoE) and 'llama' / 'mistral' (dense)");
  }
  const bool moe = model_type == "mixtral";
  if (r.has("architectures")) {
    const json& arch = r.raw("architectures");
    const std::string expected = moe                       ? "MixtralForCausalLM"
                                 : model_type == "mistral" ? "MistralForCausalLM"
                                                           : "LlamaForCausalLM";
    if (!arch.is_array() || arch.size() != 1 || arch[0] != expected) {
      r.fail("architectures", "is " + arch.dump() + "; nnkit imports [\"" + expected + "\"]");
    }
  }
  // Features nnkit does not have: refused, never silently dropped.
  if (r.has("sliding_window")) {
    r.fail("sliding_window", "is " + r.raw("sliding_window").dump() +
                                 "; nnkit attention has no sliding window (null is supported)");
  } else if (model_type == "mistral" && !root.contains("sliding_window")) {
    r.fail("sliding_window", "is absent, and MistralConfig then uses 4096; nnkit needs null");
  }
  if (r.get_bool("attention_bias", false)) r.fail("attention_bias", "is true; nnkit has no biases");
  if (r.get_bool("mlp_bias", false)) r.fail("mlp_bias", "is true; nnkit has no biases");
  const std::string act = r.get_string("hidden_act", "silu");
  if (act != "silu") r.fail("hidden_act", "is '" + act + "'; nnkit's SwiGLU uses silu");
  const std::optional<double> rope_params_theta = check_rope(r);

  const int64_t vocab = r.get_int("vocab_size", 32000);
  const int64_t hidden = r.get_int("hidden_size");
  const int64_t layers = r.get_int("num_hidden_layers");
  const int64_t heads = r.get_int("num_attention_heads");
  const int64_t kv_heads = r.get_int("num_key_value_heads", heads);
  if (!r.has("head_dim") && hidden % heads != 0) {
    r.fail("num_attention_heads", "(" + std::to_string(heads) + ") does not divide hidden_size (" +
                                      std::to_string(hidden) + ") and head_dim is absent");
  }
  const int64_t head_dim = r.get_int("head_dim", hidden / heads);
  const int64_t ffn = r.get_int("intermediate_size");
  const int64_t max_pos = r.get_int("max_position_embeddings", moe ? 4096 * 32 : 2048);
  const double eps = r.get_float("rms_norm_eps", moe ? 1e-5 : 1e-6);
  double theta = r.get_float("rope_theta", moe ? 1e6 : 10000.0);
  if (rope_params_theta) theta = *rope_params_theta;
  const double init_std = r.get_float("initializer_range", 0.02);
  r.get_bool("tie_word_embeddings", false);  // handled by the weight import
  if (!(eps > 0.0)) r.fail("rms_norm_eps", "must be > 0");
  if (!(theta > 0.0)) r.fail("rope_theta", "must be > 0");

  std::string y;
  y += "# Imported from " + label + " (nnkit convert import-hf).\n";
  y += "seed: 1234\nmodel:\n";
  y += "  vocab_size: " + std::to_string(vocab) + "\n";
  y += "  hidden_dim: " + std::to_string(hidden) + "\n";
  y += "  n_layers: " + std::to_string(layers) + "\n";
  y += "  max_seq_len: " + std::to_string(max_pos) + "\n";
  y += "  init_std: " + number(init_std) + "\n";
  y += "  norm: {type: rmsnorm, eps: " + number(eps) + "}\n";
  y += "  attention: {type: mqa, n_heads: " + std::to_string(heads) +
       ", n_kv_heads: " + std::to_string(kv_heads) + ", head_dim: " + std::to_string(head_dim) +
       ", rope: {base: " + number(theta) + ", ntk_alpha: 1.0}}\n";
  if (moe) {
    const int64_t experts = r.get_int("num_local_experts", 8);
    const int64_t top_k = r.get_int("num_experts_per_tok", 2);
    const double coef = r.get_float("router_aux_loss_coef", 0.001);
    // HF's loss is top_k times nnkit's per layer and is averaged over layers (see hf.h).
    const double weight =
        coef * static_cast<double>(top_k) / static_cast<double>(std::max<int64_t>(layers, 1));
    y += "  moe:\n";
    y += "    router: {type: topk, top_k: " + std::to_string(top_k) +
         ", renormalize: true, aux_loss_weight: " + number(weight) + ", capacity_factor: null}\n";
    y += "    experts: {type: swiglu, n_experts: " + std::to_string(experts) +
         ", ffn_dim: " + std::to_string(ffn) + "}\n";
    const double jitter = r.get_float("router_jitter_noise", 0.0);
    if (jitter != 0.0) {
      logger()->warn(
          "{}: router_jitter_noise {} is a training-time option nnkit does not have; "
          "ignored",
          label, jitter);
    }
  } else {
    y += "  ffn: {type: swiglu, ffn_dim: " + std::to_string(ffn) + "}\n";
  }
  y += "backend: {type: cpu}\n";
  y += "tokenizer: " + tokenizer_yaml + "\n";
  y += "train: {seq_len: " + std::to_string(std::min<int64_t>(256, max_pos)) + "}\n";

  const double dropout = r.get_float("attention_dropout", 0.0);
  if (dropout != 0.0) {
    logger()->warn("{}: attention_dropout {} ignored (nnkit has no attention dropout)", label,
                   dropout);
  }
  r.ignore({"transformers_version",
            "torch_dtype",
            "dtype",
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
            "use_cache",
            "output_router_logits",
            "pretraining_tp",
            "_name_or_path",
            "initializer_range",
            "return_dict",
            "output_attentions",
            "output_hidden_states",
            "tokenizer_class",
            "is_decoder",
            "is_encoder_decoder",
            "chunk_size_feed_forward",
            "use_return_dict",
            "id2label",
            "label2id",
            "problem_type",
            "layer_types"});
  const std::vector<std::string> unread = r.unread();
  if (!unread.empty()) {
    std::string keys;
    for (const std::string& k : unread) keys += (keys.empty() ? "" : ", ") + k;
    logger()->warn("{}: keys not used by the import (no effect on the weights): {}", label, keys);
  }
  return y;
}

std::string hf_config_json(const RunConfig& config, DType dtype, int32_t bos_id, int32_t eos_id,
                           int32_t pad_id) {
  const ModelConfig& m = config.model;
  auto refuse = [](const std::string& key, const std::string& message) {
    throw ConfigError("hf", "cannot export: " + key + " " + message);
  };
  if (m.norm.name != "rmsnorm") refuse("model.norm.type", "'" + m.norm.name + "' has no HF form");
  if (m.attention.name != "mqa") {
    refuse("model.attention.type", "'" + m.attention.name + "' has no HF form");
  }
  const Options& a = m.attention.options;
  const int64_t head_dim = a.get_int("head_dim");
  const double d = static_cast<double>(head_dim);
  // Static NTK scaling is exactly plain RoPE with the scaled base (see hf.h).
  const double theta =
      a.get_float("rope.base") * std::pow(a.get_float("rope.ntk_alpha"), d / (d - 2.0));
  json j;
  j["architectures"] = json::array({m.is_moe ? "MixtralForCausalLM" : "LlamaForCausalLM"});
  j["model_type"] = m.is_moe ? "mixtral" : "llama";
  j["vocab_size"] = m.vocab_size;
  j["hidden_size"] = m.hidden_dim;
  j["num_hidden_layers"] = m.n_layers;
  j["num_attention_heads"] = a.get_int("n_heads");
  j["num_key_value_heads"] = a.get_int("n_kv_heads");
  j["head_dim"] = head_dim;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = m.max_seq_len;
  j["rms_norm_eps"] = m.norm.options.get_float("eps");
  j["rope_theta"] = theta;
  j["rope_scaling"] = nullptr;
  j["initializer_range"] = m.init_std;
  j["tie_word_embeddings"] = false;
  j["attention_dropout"] = 0.0;
  j["use_cache"] = true;
  j["bos_token_id"] = bos_id;
  j["eos_token_id"] = eos_id;
  j["pad_token_id"] = pad_id;
  const char* dtype_text = dtype == DType::kBF16  ? "bfloat16"
                           : dtype == DType::kF16 ? "float16"
                                                  : "float32";
  j["torch_dtype"] = dtype_text;
  j["dtype"] = dtype_text;  // transformers 5 reads "dtype"; 4 reads "torch_dtype"
  if (m.is_moe) {
    if (m.router.name != "topk") refuse("model.moe.router.type", "'" + m.router.name + "'");
    if (m.experts.name != "swiglu") refuse("model.moe.experts.type", "'" + m.experts.name + "'");
    const Options& ro = m.router.options;
    if (!ro.get_bool("renormalize")) {
      refuse("model.moe.router.renormalize", "is false; Mixtral always renormalises the top-k");
    }
    if (!ro.is_null("capacity_factor")) {
      refuse("model.moe.router.capacity_factor", "is set; HF Mixtral is dropless (use null)");
    }
    const int64_t top_k = ro.get_int("top_k");
    j["intermediate_size"] = m.experts.options.get_int("ffn_dim");
    j["num_local_experts"] = m.experts.options.get_int("n_experts");
    j["num_experts_per_tok"] = top_k;
    j["router_aux_loss_coef"] = ro.get_float("aux_loss_weight") * static_cast<double>(m.n_layers) /
                                static_cast<double>(top_k);
    j["output_router_logits"] = false;
    j["router_jitter_noise"] = 0.0;
    j["sliding_window"] = nullptr;
  } else {
    if (m.ffn.name != "swiglu") refuse("model.ffn.type", "'" + m.ffn.name + "' has no HF form");
    j["intermediate_size"] = m.ffn.options.get_int("ffn_dim");
    j["attention_bias"] = false;
    j["mlp_bias"] = false;
    j["pretraining_tp"] = 1;
  }
  return j.dump(2) + "\n";
}

}  // namespace nnkit
