// Purpose: helpers for the model-level tests: describe a small transformer (MoE or dense) as a
// ModelSpec, turn it into YAML and a RunConfig through the real config path, build and allocate
// the Transformer on the CPU backend plugin, give it weights large enough that every term of the
// forward matters, and copy its parameters to host doubles for the reference in reference_model.h.
// Ownership: models are returned as unique_ptr and own their parameters; host copies are values.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nnkit/config.h"
#include "nnkit/model.h"

namespace nnkit::test {

// A small transformer. The defaults give a 2-layer MoE model whose query width (H*D = 32) differs
// from the hidden width (16), so a transposed projection cannot pass by accident.
struct ModelSpec {
  bool moe = true;
  int64_t vocab_size = 40;
  int64_t hidden_dim = 16;
  int64_t n_layers = 2;
  int64_t max_seq_len = 32;
  double norm_eps = 1e-5;
  int64_t n_heads = 4;
  int64_t n_kv_heads = 1;
  int64_t head_dim = 8;
  double rope_base = 10000.0;
  double ntk_alpha = 1.0;
  // moe
  int64_t n_experts = 4;
  int64_t top_k = 2;
  bool renormalize = true;
  double aux_loss_weight = 0.01;
  double z_loss_weight = 0.0;
  std::optional<double> capacity_factor;  // none = dropless
  // expert FFN width (moe) or the dense FFN width
  int64_t ffn_dim = 24;

  // base' = base * alpha^(D / (D - 2)) (NTK-aware scaling), from the spec.
  double scaled_rope_base() const;
};

// The spec as a complete run description (model, train.seq_len fitting max_seq_len).
std::string model_yaml(const ModelSpec& spec);
// model_yaml() through ConfigDocument::parse and resolve_config with the test registry.
RunConfig resolve_spec(const ModelSpec& spec);

// Builds, allocates (with gradients) and initialises a model: init_random(seed), then, when
// `test_weights`, overwrite_with_test_weights(seed).
std::unique_ptr<Transformer> build_model(const ModelSpec& spec, uint64_t seed,
                                         bool test_weights = true);

// Replaces every parameter with seeded values of a scale where each path carries signal:
// projections Uniform(+-sqrt(3 / fan_in)) (unit-variance outputs), the router gate 3x larger so
// routing decisions are far from ties, embeddings Uniform(+-1), norm scales 1 + Uniform(+-0.3).
void overwrite_with_test_weights(Transformer& model, uint64_t seed);

using HostWeights = std::map<std::string, std::vector<double>>;
// Every parameter's values as doubles, keyed by full (HF) name.
HostWeights read_weights(Transformer& model);
// Every parameter's gradient as doubles, keyed by full name.
HostWeights read_grads(Transformer& model);

// Logits tensor of the model as host floats.
std::vector<float> host_values(Transformer& model, const Tensor& t);

// Uniform random ids in [low, vocab) from a fixed seed.
std::vector<int32_t> random_ids(size_t n, int64_t vocab, uint64_t seed, int32_t low = 0);
// Next-token targets: targets[b*T + t] = ids[b*T + t + 1], the last of each row from `extra`.
std::vector<int32_t> shifted_targets(const std::vector<int32_t>& ids, int64_t batch, int64_t seq,
                                     int64_t vocab, uint64_t seed);

double max_abs_diff(const std::vector<float>& a, const std::vector<double>& b);
double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace nnkit::test
