// Purpose: see model_test_util.h.
#include "model/model_test_util.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>

#include "support/test_support.h"

namespace nnkit::test {

double ModelSpec::scaled_rope_base() const {
  const double d = static_cast<double>(head_dim);
  return rope_base * std::pow(ntk_alpha, d / (d - 2.0));
}

namespace {

std::string number(double value) {
  std::ostringstream out;
  out.precision(17);
  out << value;
  return out.str();
}

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::string model_yaml(const ModelSpec& spec) {
  std::ostringstream y;
  y << "seed: 7\n"
    << "model:\n"
    << "  vocab_size: " << spec.vocab_size << "\n"
    << "  hidden_dim: " << spec.hidden_dim << "\n"
    << "  n_layers: " << spec.n_layers << "\n"
    << "  max_seq_len: " << spec.max_seq_len << "\n"
    << "  norm: {type: rmsnorm, eps: " << number(spec.norm_eps) << "}\n"
    << "  attention:\n"
    << "    type: mqa\n"
    << "    n_heads: " << spec.n_heads << "\n"
    << "    n_kv_heads: " << spec.n_kv_heads << "\n"
    << "    head_dim: " << spec.head_dim << "\n"
    << "    rope: {base: " << number(spec.rope_base) << ", ntk_alpha: " << number(spec.ntk_alpha)
    << "}\n";
  if (spec.moe) {
    y << "  moe:\n"
      << "    router: {type: topk, top_k: " << spec.top_k
      << ", renormalize: " << (spec.renormalize ? "true" : "false")
      << ", aux_loss_weight: " << number(spec.aux_loss_weight)
      << ", z_loss_weight: " << number(spec.z_loss_weight) << ", capacity_factor: "
      << (spec.capacity_factor ? number(*spec.capacity_factor) : std::string("null")) << "}\n"
      << "    experts: {type: swiglu, n_experts: " << spec.n_experts
      << ", ffn_dim: " << spec.ffn_dim << "}\n";
  } else {
    y << "  ffn: {type: swiglu, ffn_dim: " << spec.ffn_dim << "}\n";
  }
  y << "backend: {type: cpu}\n"
    << "tokenizer: {type: byte}\n"
    << "train: {seq_len: " << spec.max_seq_len << ", batch_size: 2}\n";
  return y.str();
}

RunConfig resolve_spec(const ModelSpec& spec) {
  const ConfigDocument doc = ConfigDocument::parse(model_yaml(spec), "model_test.yaml");
  return resolve_config(doc, registry());
}

std::unique_ptr<Transformer> build_model(const ModelSpec& spec, uint64_t seed, bool test_weights) {
  auto model = std::make_unique<Transformer>(resolve_spec(spec), registry(), cpu_backend());
  model->allocate(true);
  model->init_random(seed);
  if (test_weights) overwrite_with_test_weights(*model, seed);
  return model;
}

void overwrite_with_test_weights(Transformer& model, uint64_t seed) {
  std::mt19937_64 rng(seed * 7919 + 17);
  std::uniform_real_distribution<double> unit(-1.0, 1.0);
  for (Parameter* p : model.parameters()) {
    const size_t n = static_cast<size_t>(shape_numel(p->shape));
    const int64_t fan_in = p->shape.back();
    double center = 0.0;
    double scale = std::sqrt(3.0 / static_cast<double>(fan_in));
    if (p->shape.size() == 1) {  // norm scales
      center = 1.0;
      scale = 0.3;
    } else if (p->is_embedding) {
      scale = 1.0;
    } else if (ends_with(p->name, "block_sparse_moe.gate.weight")) {
      scale *= 3.0;
    }
    std::vector<float> values(n);
    for (float& v : values) v = static_cast<float>(center + scale * unit(rng));
    model.backend().copy_from_host(p->value, values.data());
  }
}

namespace {

HostWeights read_tensors(Transformer& model, bool grads) {
  HostWeights out;
  for (Parameter* p : model.parameters()) {
    const std::vector<float> values = to_vector(model.backend(), grads ? p->grad : p->value);
    out[p->name] = std::vector<double>(values.begin(), values.end());
  }
  return out;
}

}  // namespace

HostWeights read_weights(Transformer& model) {
  return read_tensors(model, false);
}
HostWeights read_grads(Transformer& model) {
  return read_tensors(model, true);
}

std::vector<float> host_values(Transformer& model, const Tensor& t) {
  return to_vector(model.backend(), t);
}

std::vector<int32_t> random_ids(size_t n, int64_t vocab, uint64_t seed, int32_t low) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> pick(low, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = pick(rng);
  return ids;
}

std::vector<int32_t> shifted_targets(const std::vector<int32_t>& ids, int64_t batch, int64_t seq,
                                     int64_t vocab, uint64_t seed) {
  const std::vector<int32_t> extra = random_ids(static_cast<size_t>(batch), vocab, seed);
  std::vector<int32_t> targets(ids.size());
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < seq; ++t) {
      const size_t at = static_cast<size_t>(b * seq + t);
      targets[at] = t + 1 < seq ? ids[at + 1] : extra[static_cast<size_t>(b)];
    }
  }
  return targets;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<double>& b) {
  double worst = a.size() == b.size() ? 0.0 : INFINITY;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    const double diff = std::abs(static_cast<double>(a[i]) - b[i]);
    if (std::isnan(diff)) return INFINITY;  // NaN must fail every "<= tolerance"
    worst = std::max(worst, diff);
  }
  return worst;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  return max_abs_diff(a, std::vector<double>(b.begin(), b.end()));
}

}  // namespace nnkit::test
