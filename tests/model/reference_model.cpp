// Purpose: see reference_model.h. Written for clarity, not speed: plain loops in double.
#include "model/reference_model.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

namespace nnkit::test {

std::vector<double> linear(const std::vector<double>& x, const std::vector<double>& w, int64_t rows,
                           int64_t in, int64_t out) {
  std::vector<double> y(static_cast<size_t>(rows * out), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double sum = 0.0;
      for (int64_t i = 0; i < in; ++i) sum += x[size_t(r * in + i)] * w[size_t(o * in + i)];
      y[size_t(r * out + o)] = sum;
    }
  }
  return y;
}

namespace {

double silu(double v) {
  return v / (1.0 + std::exp(-v));
}

// Softmax of values[0..n) in place.
void softmax(double* values, int64_t n) {
  const double top = *std::max_element(values, values + n);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += (values[i] = std::exp(values[i] - top));
  for (int64_t i = 0; i < n; ++i) values[i] /= sum;
}

}  // namespace

ReferenceModel::ReferenceModel(const ModelSpec& spec, HostWeights weights)
    : spec_(spec), weights_(std::move(weights)) {}

const ReferenceModel::Matrix& ReferenceModel::weight(const std::string& name) const {
  auto it = weights_.find(name);
  if (it == weights_.end()) throw std::runtime_error("reference: no parameter named " + name);
  return it->second;
}

ReferenceModel::Matrix ReferenceModel::rms_norm(const Matrix& x, int64_t rows,
                                                const std::string& weight_name) const {
  const int64_t c = spec_.hidden_dim;
  const Matrix& w = weight(weight_name);
  Matrix y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mean_square = 0.0;
    for (int64_t i = 0; i < c; ++i) mean_square += x[size_t(r * c + i)] * x[size_t(r * c + i)];
    mean_square /= static_cast<double>(c);
    const double inv_rms = 1.0 / std::sqrt(mean_square + spec_.norm_eps);
    for (int64_t i = 0; i < c; ++i)
      y[size_t(r * c + i)] = x[size_t(r * c + i)] * inv_rms * w[size_t(i)];
  }
  return y;
}

// Rotate-half RoPE: within each head, dimension i pairs with i + D/2 and both rotate by
// pos * base'^(-2i/D); the position of row r is r mod seq (every sequence starts at 0).
void ReferenceModel::rotate(Matrix& x, int64_t rows, int64_t seq, int64_t heads) const {
  const int64_t d = spec_.head_dim;
  const int64_t half = d / 2;
  const double base = spec_.scaled_rope_base();
  for (int64_t r = 0; r < rows; ++r) {
    const double pos = static_cast<double>(r % seq);
    for (int64_t h = 0; h < heads; ++h) {
      double* head = x.data() + r * heads * d + h * d;
      for (int64_t i = 0; i < half; ++i) {
        const double angle = pos * std::pow(base, -2.0 * static_cast<double>(i) / double(d));
        const double a = head[i];
        const double b = head[i + half];
        head[i] = a * std::cos(angle) - b * std::sin(angle);
        head[i + half] = b * std::cos(angle) + a * std::sin(angle);
      }
    }
  }
}

ReferenceModel::Matrix ReferenceModel::attention(const Matrix& x, int64_t batch, int64_t seq,
                                                 const std::string& prefix) const {
  const int64_t rows = batch * seq;
  const int64_t c = spec_.hidden_dim;
  const int64_t h = spec_.n_heads;
  const int64_t hkv = spec_.n_kv_heads;
  const int64_t d = spec_.head_dim;
  Matrix q = linear(x, weight(prefix + "q_proj.weight"), rows, c, h * d);
  Matrix k = linear(x, weight(prefix + "k_proj.weight"), rows, c, hkv * d);
  const Matrix v = linear(x, weight(prefix + "v_proj.weight"), rows, c, hkv * d);
  rotate(q, rows, seq, h);
  rotate(k, rows, seq, hkv);
  Matrix attended(static_cast<size_t>(rows * h * d), 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> p(static_cast<size_t>(seq));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t head = 0; head < h; ++head) {
      const int64_t kv_head = head / (h / hkv);
      for (int64_t t = 0; t < seq; ++t) {
        const double* qi = q.data() + (b * seq + t) * h * d + head * d;
        for (int64_t s = 0; s <= t; ++s) {  // causal: keys up to and including t
          const double* kj = k.data() + (b * seq + s) * hkv * d + kv_head * d;
          p[size_t(s)] = scale * std::inner_product(qi, qi + d, kj, 0.0);
        }
        softmax(p.data(), t + 1);
        double* out = attended.data() + (b * seq + t) * h * d + head * d;
        for (int64_t s = 0; s <= t; ++s) {
          const double* vj = v.data() + (b * seq + s) * hkv * d + kv_head * d;
          for (int64_t i = 0; i < d; ++i) out[i] += p[size_t(s)] * vj[i];
        }
      }
    }
  }
  return linear(attended, weight(prefix + "o_proj.weight"), rows, h * d, c);
}

// down(silu(gate x) * up x)
ReferenceModel::Matrix ReferenceModel::swiglu(const Matrix& x, int64_t rows,
                                              const std::string& gate_name,
                                              const std::string& up_name,
                                              const std::string& down_name) const {
  const int64_t c = spec_.hidden_dim;
  const int64_t f = spec_.ffn_dim;
  const Matrix gate = linear(x, weight(gate_name), rows, c, f);
  const Matrix up = linear(x, weight(up_name), rows, c, f);
  Matrix activated(gate.size());
  for (size_t i = 0; i < gate.size(); ++i) activated[i] = silu(gate[i]) * up[i];
  return linear(activated, weight(down_name), rows, f, c);
}

ReferenceModel::Matrix ReferenceModel::moe(const Matrix& x, int64_t rows, const std::string& prefix,
                                           ReferenceOutput& out) const {
  const int64_t c = spec_.hidden_dim;
  const int64_t e_count = spec_.n_experts;
  const int64_t k = spec_.top_k;
  const Matrix logits = linear(x, weight(prefix + "gate.weight"), rows, c, e_count);
  ReferenceLayerStats stats;
  stats.expert_fraction.assign(size_t(e_count), 0.0);
  std::vector<double> mean_prob(size_t(e_count), 0.0);

  // Routing per token: probabilities over all experts, k best by probability (ties: lower id).
  std::vector<int32_t> chosen(size_t(rows * k));
  std::vector<double> gates(size_t(rows * k));
  for (int64_t n = 0; n < rows; ++n) {
    std::vector<double> probs(logits.begin() + n * e_count, logits.begin() + (n + 1) * e_count);
    const double top = *std::max_element(probs.begin(), probs.end());
    double sum = 0.0;
    for (double l : probs) sum += std::exp(l - top);
    const double lse = top + std::log(sum);
    stats.z_loss += lse * lse / static_cast<double>(rows);
    softmax(probs.data(), e_count);
    for (int64_t e = 0; e < e_count; ++e) mean_prob[size_t(e)] += probs[size_t(e)] / double(rows);
    std::vector<int32_t> order(static_cast<size_t>(e_count));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return probs[size_t(a)] > probs[size_t(b)]; });
    double kept_sum = 0.0;
    for (int64_t j = 0; j < k; ++j) kept_sum += probs[size_t(order[size_t(j)])];
    for (int64_t j = 0; j < k; ++j) {
      const int32_t expert = order[size_t(j)];
      chosen[size_t(n * k + j)] = expert;
      gates[size_t(n * k + j)] =
          spec_.renormalize ? probs[size_t(expert)] / kept_sum : probs[size_t(expert)];
      stats.expert_fraction[size_t(expert)] += 1.0 / static_cast<double>(rows * k);
    }
  }
  // Load balancing from the full softmax and the slots before any dropping.
  for (int64_t e = 0; e < e_count; ++e) {
    stats.aux_loss +=
        static_cast<double>(e_count) * stats.expert_fraction[size_t(e)] * mean_prob[size_t(e)];
  }

  // Capacity: slots in token order, rank order within a token; an expert takes at most
  // ceil(factor * N * k / E) of them, later ones are dropped (the residual carries the token).
  std::vector<int32_t> routed = chosen;
  if (spec_.capacity_factor) {
    const auto capacity = static_cast<int64_t>(
        std::ceil(*spec_.capacity_factor * double(rows * k) / static_cast<double>(e_count)));
    std::vector<int64_t> taken(size_t(e_count), 0);
    int64_t dropped = 0;
    for (int32_t& expert : routed) {
      if (taken[size_t(expert)]++ < capacity) continue;
      expert = -1;
      ++dropped;
    }
    stats.dropped_fraction = static_cast<double>(dropped) / double(rows * k);
  }

  Matrix y(x.size(), 0.0);
  for (int64_t n = 0; n < rows; ++n) {
    const Matrix xn(x.begin() + n * c, x.begin() + (n + 1) * c);
    for (int64_t j = 0; j < k; ++j) {
      const int32_t expert = routed[size_t(n * k + j)];
      if (expert < 0) continue;
      const std::string e = prefix + "experts." + std::to_string(expert) + ".";
      const Matrix expert_out = swiglu(xn, 1, e + "w1.weight", e + "w3.weight", e + "w2.weight");
      for (int64_t i = 0; i < c; ++i)
        y[size_t(n * c + i)] += gates[size_t(n * k + j)] * expert_out[size_t(i)];
    }
  }
  out.weighted_aux += spec_.aux_loss_weight * stats.aux_loss + spec_.z_loss_weight * stats.z_loss;
  out.routing_signature.insert(out.routing_signature.end(), routed.begin(), routed.end());
  out.layers.push_back(std::move(stats));
  return y;
}

ReferenceOutput ReferenceModel::forward(const std::vector<int32_t>& ids, int64_t batch,
                                        int64_t seq) const {
  const int64_t rows = batch * seq;
  const int64_t c = spec_.hidden_dim;
  ReferenceOutput out;
  const Matrix& embedding = weight("model.embed_tokens.weight");
  Matrix x(static_cast<size_t>(rows * c));
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(embedding.begin() + ids[size_t(r)] * c, c, x.begin() + r * c);
  }
  for (int64_t layer = 0; layer < spec_.n_layers; ++layer) {
    const std::string prefix = "model.layers." + std::to_string(layer) + ".";
    const Matrix attn = attention(rms_norm(x, rows, prefix + "input_layernorm.weight"), batch, seq,
                                  prefix + "self_attn.");
    for (size_t i = 0; i < x.size(); ++i) x[i] += attn[i];
    const Matrix normed = rms_norm(x, rows, prefix + "post_attention_layernorm.weight");
    const Matrix ffn = spec_.moe
                           ? moe(normed, rows, prefix + "block_sparse_moe.", out)
                           : swiglu(normed, rows, prefix + "mlp.gate_proj.weight",
                                    prefix + "mlp.up_proj.weight", prefix + "mlp.down_proj.weight");
    for (size_t i = 0; i < x.size(); ++i) x[i] += ffn[i];
  }
  out.logits = linear(rms_norm(x, rows, "model.norm.weight"), weight("lm_head.weight"), rows, c,
                      spec_.vocab_size);
  return out;
}

double ReferenceModel::mean_cross_entropy(const std::vector<double>& logits,
                                          const std::vector<int32_t>& targets) const {
  const int64_t v = spec_.vocab_size;
  double total = 0.0;
  int64_t counted = 0;
  for (size_t n = 0; n < targets.size(); ++n) {
    if (targets[n] < 0) continue;
    const double* row = logits.data() + n * size_t(v);
    const double top = *std::max_element(row, row + v);
    double sum = 0.0;
    for (int64_t i = 0; i < v; ++i) sum += std::exp(row[i] - top);
    total += top + std::log(sum) - row[targets[n]];
    ++counted;
  }
  return counted > 0 ? total / static_cast<double>(counted) : 0.0;
}

double ReferenceModel::objective(const std::vector<int32_t>& ids,
                                 const std::vector<int32_t>& targets, int64_t batch, int64_t seq,
                                 std::vector<int32_t>* routing_signature) const {
  const ReferenceOutput out = forward(ids, batch, seq);
  if (routing_signature != nullptr) *routing_signature = out.routing_signature;
  return mean_cross_entropy(out.logits, targets) + out.weighted_aux;
}

}  // namespace nnkit::test
