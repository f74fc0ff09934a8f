// Purpose: a straightforward double-precision transformer written from /work/shared/spec.md, the
// yardstick for the model tests: embedding; per block RMSNorm -> MQA attention with rotate-half
// RoPE (dimension i pairs with i + D/2, angle = pos * base'^(-2i/D), base' NTK-scaled) and causal
// softmax, o_proj -> residual; RMSNorm -> MoE (router softmax over all experts, top-k, optional
// renormalisation, optional capacity dropping in token-then-rank order, sum of gate * SwiGLU
// expert) or a dense SwiGLU FFN -> residual; final RMSNorm; LM head. Weights in HF layout
// (out, in), read by HF name from a HostWeights map. Auxiliary losses follow the topk router's
// documented definitions: L_aux = E * sum_i f_i P_i (f_i from the routed slots before dropping),
// L_z = mean_n logsumexp(router logits_n)^2, both summed over layers with their weights.
// Ownership: holds its own copy of the weights; weights() exposes them for finite differences.
#pragma once

#include <cstdint>
#include <vector>

#include "model/model_test_util.h"

namespace nnkit::test {

struct ReferenceLayerStats {
  double aux_loss = 0.0;
  double z_loss = 0.0;
  double dropped_fraction = 0.0;
  std::vector<double> expert_fraction;
};

struct ReferenceOutput {
  std::vector<double> logits;  // (B*T, V)
  // sum over layers of aux_weight * L_aux + z_weight * L_z (0 for a dense model)
  double weighted_aux = 0.0;
  std::vector<ReferenceLayerStats> layers;  // MoE layers only
  // Every layer's chosen expert per (token, rank) slot, -1 where dropped: equal signatures mean
  // the same discrete routing (finite differences must not straddle a routing change).
  std::vector<int32_t> routing_signature;
};

class ReferenceModel {
 public:
  ReferenceModel(const ModelSpec& spec, HostWeights weights);

  HostWeights& weights() { return weights_; }

  // ids: (B*T) batch-major; every sequence starts at position 0.
  ReferenceOutput forward(const std::vector<int32_t>& ids, int64_t batch, int64_t seq) const;
  // Mean cross-entropy of logits (N, V) over targets >= 0.
  double mean_cross_entropy(const std::vector<double>& logits,
                            const std::vector<int32_t>& targets) const;
  // The training objective: mean CE + weighted auxiliary losses.
  double objective(const std::vector<int32_t>& ids, const std::vector<int32_t>& targets,
                   int64_t batch, int64_t seq, std::vector<int32_t>* routing_signature) const;

 private:
  using Matrix = std::vector<double>;  // row-major

  const Matrix& weight(const std::string& name) const;
  Matrix rms_norm(const Matrix& x, int64_t rows, const std::string& weight_name) const;
  Matrix attention(const Matrix& x, int64_t batch, int64_t seq, const std::string& prefix) const;
  void rotate(Matrix& x, int64_t rows, int64_t seq, int64_t heads) const;
  Matrix swiglu(const Matrix& x, int64_t rows, const std::string& gate_name,
                const std::string& up_name, const std::string& down_name) const;
  Matrix moe(const Matrix& x, int64_t rows, const std::string& prefix, ReferenceOutput& out) const;

  ModelSpec spec_;
  HostWeights weights_;
};

// y (rows, out) = x (rows, in) W^T with W (out, in).
std::vector<double> linear(const std::vector<double>& x, const std::vector<double>& w, int64_t rows,
                           int64_t in, int64_t out);

}  // namespace nnkit::test
