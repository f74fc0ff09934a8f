// Purpose: backend ops written once in terms of other Backend ops, for every backend that has no
// fused kernel for a case (backend/cpu always; backend/cuda outside its kernels' shapes). They
// validate nothing (the calling op has checked its arguments), except the check_* helpers.
// Ownership: stateless functions; the sources are compiled into each backend plugin (not part of
// the installed SDK).
#pragma once

#include <cstdint>
#include <vector>

#include "nnkit/backend.h"
#include "op_checks.h"

namespace nnkit::backend_common {

// Backend::moe_route_padded as gemm, topk_rows and softmax_rows, then moe_sort_by_expert_padded.
// expert_index and gate: (N, k) views of the outputs.
void moe_route_padded_by_ops(Backend& backend, const Tensor& x, const Tensor& weight, int64_t top_k,
                             bool renormalize, int64_t capacity, const Tensor& expert_index,
                             const Tensor& gate, const Tensor& token, const Tensor& slot,
                             const Tensor& offsets, const Tensor& load);

// Backend::moe_swiglu_experts_padded as gather_rows, moe_grouped_swiglu_nt, moe_grouped_gemm_nt
// and moe_combine_rows (the down product rounded to the dtype before the combine).
void moe_swiglu_experts_padded_by_ops(Backend& backend, const Tensor& x, const Tensor& token,
                                      const Tensor& slot, const Tensor& gate,
                                      const std::vector<Tensor>& gate_w,
                                      const std::vector<Tensor>& up_w,
                                      const std::vector<Tensor>& down_w, const Tensor& kept_offsets,
                                      int64_t capacity, const Tensor& y);

// Backend::attention_decode_rope as rope_kv_append (into a temporary q) and attention_decode.
void attention_decode_rope_by_ops(Backend& backend, const Tensor& qkv, const Tensor& positions,
                                  float base, const Tensor& k_cache, const Tensor& v_cache,
                                  const Tensor& cache_len_device, const Tensor& kv_start,
                                  const Tensor& kv_len_device, const Tensor& out,
                                  const AttentionShape& shape);

// Backend::add_rmsnorm_moe_route_padded as add_rmsnorm and moe_route_padded.
void add_rmsnorm_moe_route_padded_by_ops(Backend& backend, const Tensor& x, const Tensor& residual,
                                         const Tensor& norm_weight, float eps, const Tensor& sum,
                                         const Tensor& normed, const Tensor& weight, int64_t top_k,
                                         bool renormalize, int64_t capacity,
                                         const Tensor& expert_index, const Tensor& gate,
                                         const Tensor& token, const Tensor& slot,
                                         const Tensor& offsets, const Tensor& load);

// Backend::add_rmsnorm_gemm_nt as add_rmsnorm (into a temporary h) and gemm.
void add_rmsnorm_gemm_nt_by_ops(Backend& backend, const Tensor& x, const Tensor& residual,
                                const Tensor& norm_weight, float eps, const Tensor& w,
                                const Tensor& sum, const Tensor& out);

// The argument checks of Backend::moe_swiglu_experts_padded shared by the backends; throws an
// Error naming the op and the offending argument. Returns the hidden and ffn sizes.
struct ExpertsShape {
  int64_t experts = 0, hidden = 0, ffn = 0;
};
ExpertsShape check_swiglu_experts_padded(const OpChecks& checks, DTypes dtypes, const Tensor& x,
                                         const Tensor& token, const Tensor& slot,
                                         const Tensor& gate, const std::vector<Tensor>& gate_w,
                                         const std::vector<Tensor>& up_w,
                                         const std::vector<Tensor>& down_w,
                                         const Tensor& kept_offsets, int64_t capacity,
                                         const Tensor& y);

}  // namespace nnkit::backend_common
