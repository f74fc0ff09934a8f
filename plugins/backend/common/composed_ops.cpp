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

}  // namespace nnkit::backend_common
