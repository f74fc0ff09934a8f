// Purpose: backend ops written once in terms of other Backend ops, for every backend that has no
// fused kernel for a case (backend/cpu always; backend/cuda outside its kernels' shapes). They
// validate nothing: the calling op has checked its arguments. Ownership: stateless functions;
// the sources are compiled into each backend plugin (not part of the installed SDK).
#pragma once

#include <cstdint>

#include "nnkit/backend.h"

namespace nnkit::backend_common {

// Backend::moe_route_padded as gemm, topk_rows and softmax_rows, then moe_sort_by_expert_padded.
// expert_index and gate: (N, k) views of the outputs.
void moe_route_padded_by_ops(Backend& backend, const Tensor& x, const Tensor& weight, int64_t top_k,
                             bool renormalize, int64_t capacity, const Tensor& expert_index,
                             const Tensor& gate, const Tensor& token, const Tensor& slot,
                             const Tensor& offsets, const Tensor& load);

}  // namespace nnkit::backend_common
