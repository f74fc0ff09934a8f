// Purpose: see composed_ops.h. Owned by the backend plugins (compiled into each).
#include "composed_ops.h"

namespace nnkit::backend_common {

void moe_route_padded_by_ops(Backend& backend, const Tensor& x, const Tensor& weight, int64_t top_k,
                             bool renormalize, int64_t capacity, const Tensor& expert_index,
                             const Tensor& gate, const Tensor& token, const Tensor& slot,
                             const Tensor& offsets, const Tensor& load) {
  const int64_t n = x.dim(0), experts = weight.dim(0);
  Tensor logits = backend.empty({n, experts});
  backend.gemm(x, false, weight, true, logits);
  if (renormalize) {
    // Renormalised gates p_i / sum_kept p_j are a softmax over the kept logits.
    Tensor top_logits = backend.empty({n, top_k});
    backend.topk_rows(logits, top_k, top_logits, expert_index);
    backend.softmax_rows(top_logits, gate);
  } else {
    Tensor probs = backend.empty({n, experts});
    backend.softmax_rows(logits, probs);
    backend.topk_rows(probs, top_k, gate, expert_index);
  }
  backend.moe_sort_by_expert_padded(expert_index.view({n * top_k}), experts, top_k, capacity,
                                    gate.view({n * top_k}), token, slot, offsets, load);
}

void moe_swiglu_experts_padded_by_ops(Backend& backend, const Tensor& x, const Tensor& token,
                                      const Tensor& slot, const Tensor& gate,
                                      const std::vector<Tensor>& gate_w,
                                      const std::vector<Tensor>& up_w,
                                      const std::vector<Tensor>& down_w, const Tensor& kept_offsets,
                                      int64_t capacity, const Tensor& y) {
  const int64_t rows = token.dim(0), hidden = x.dim(1), ffn = gate_w.front().dim(0);
  Tensor x_routed = backend.empty({rows, hidden}, x.dtype());
  backend.gather_rows(x, token, x_routed);
  Tensor activated = backend.empty({rows, ffn}, x.dtype());
  backend.moe_grouped_swiglu_nt(x_routed, gate_w, up_w, kept_offsets, capacity, activated);
  Tensor y_routed = backend.empty({rows, hidden}, x.dtype());
  backend.moe_grouped_gemm_nt(activated, down_w, kept_offsets, capacity, y_routed);
  backend.moe_combine_rows(y_routed, token, slot, gate, y);
}

void attention_decode_rope_by_ops(Backend& backend, const Tensor& qkv, const Tensor& positions,
                                  float base, const Tensor& k_cache, const Tensor& v_cache,
                                  const Tensor& cache_len_device, const Tensor& kv_start,
                                  const Tensor& kv_len_device, const Tensor& out,
                                  const AttentionShape& shape) {
  Tensor q = backend.empty({qkv.rank() == 2 ? qkv.dim(0) : 0, shape.n_heads * shape.head_dim},
                           qkv.dtype());
  backend.rope_kv_append(qkv, positions, shape.n_heads, shape.n_kv_heads, shape.head_dim, base,
                         k_cache, v_cache, shape.kv_capacity, cache_len_device, q);
  backend.attention_decode(q, k_cache, v_cache, kv_start, kv_len_device, out, shape);
}

void add_rmsnorm_gemm_nt_by_ops(Backend& backend, const Tensor& x, const Tensor& residual,
                                const Tensor& norm_weight, float eps, const Tensor& w,
                                const Tensor& sum, const Tensor& out) {
  Tensor h = backend.empty(x.shape(), x.dtype());
  backend.add_rmsnorm(x, residual, norm_weight, eps, sum, h);
  backend.gemm(h, false, w, true, out);
}

void add_rmsnorm_moe_route_padded_by_ops(Backend& backend, const Tensor& x, const Tensor& residual,
                                         const Tensor& norm_weight, float eps, const Tensor& sum,
                                         const Tensor& normed, const Tensor& weight, int64_t top_k,
                                         bool renormalize, int64_t capacity,
                                         const Tensor& expert_index, const Tensor& gate,
                                         const Tensor& token, const Tensor& slot,
                                         const Tensor& offsets, const Tensor& load) {
  backend.add_rmsnorm(x, residual, norm_weight, eps, sum, normed);
  backend.moe_route_padded(normed, weight, top_k, renormalize, capacity, expert_index, gate, token,
                           slot, offsets, load);
}

ExpertsShape check_swiglu_experts_padded(const OpChecks& checks, DTypes dtypes, const Tensor& x,
                                         const Tensor& token, const Tensor& slot,
                                         const Tensor& gate, const std::vector<Tensor>& gate_w,
                                         const std::vector<Tensor>& up_w,
                                         const std::vector<Tensor>& down_w,
                                         const Tensor& kept_offsets, int64_t capacity,
                                         const Tensor& y) {
  const char* op = "moe_swiglu_experts_padded";
  ExpertsShape s;
  s.experts = static_cast<int64_t>(gate_w.size());
  if (s.experts < 1 || static_cast<int64_t>(up_w.size()) != s.experts ||
      static_cast<int64_t>(down_w.size()) != s.experts || capacity < 1) {
    checks.fail(op, std::to_string(gate_w.size()) + " gate, " + std::to_string(up_w.size()) +
                        " up and " + std::to_string(down_w.size()) + " down weights, capacity " +
                        std::to_string(capacity) +
                        "; expected one of each per expert (at least one) and capacity >= 1");
  }
  const RowShape xs = checks.float_rows(op, "x", x, dtypes);
  s.hidden = xs.cols;
  checks.dtype_as(op, "gate_w[0]", gate_w.front(), "x", x);
  s.ffn = gate_w.front().rank() == 2 ? gate_w.front().dim(0) : -1;
  for (int64_t e = 0; e < s.experts; ++e) {
    const auto i = static_cast<size_t>(e);
    const std::string at = "[" + std::to_string(e) + "]";
    checks.tensor(op, ("gate_w" + at).c_str(), gate_w[i], x.dtype(), {s.ffn, s.hidden});
    checks.tensor(op, ("up_w" + at).c_str(), up_w[i], x.dtype(), {s.ffn, s.hidden});
    checks.tensor(op, ("down_w" + at).c_str(), down_w[i], x.dtype(), {s.hidden, s.ffn});
  }
  const int64_t rows = s.experts * capacity;
  checks.tensor(op, "token", token, DType::kI32, {rows});
  checks.tensor(op, "slot", slot, DType::kI32, {rows});
  checks.dtype(op, "gate", gate, DType::kF32);
  checks.tensor(op, "kept_offsets", kept_offsets, DType::kI32, {s.experts + 1});
  checks.tensor(op, "y", y, x.dtype(), {xs.rows, s.hidden});
  return s;
}

}  // namespace nnkit::backend_common
