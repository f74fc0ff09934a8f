// Purpose: the entry points of backend/cuda's tensor-core attention for bf16 and f16
// (attention_lowp_forward.cu, attention_lowp_backward.cu) and the rule that decides which calls
// they take; attention_forward.cu and attention_backward.cu dispatch through these. Owned by
// backend/cuda.
//
// Strategy (flash-attention 2 on mma.sync m16n8k16, f32 accumulators): a block of 4 warps owns a
// tile of folded query rows (the same row folding as the f32 kernels, so a (batch, KV head)'s
// group of query heads shares every K/V tile): 16 rows per warp, or 32 in the forward at
// head_dim <= 64, where the two row groups share every K/V fragment. K/V tiles of 64 keys are
// double-buffered in shared memory with cp.async; S = Q K^T, the online softmax (log2 domain) and
// O += P V stay in registers, P going from the accumulator layout straight into the next
// product's operand layout. Backward recomputes P from lse: one kernel owns dq per query tile
// (dS = P (dO V^T - delta), dq += dS K), another owns dk/dv per tile of 64 keys (16 per warp),
// looping over the query positions of every head of its group in a fixed order. When the key
// tiles alone give too few blocks (MQA: one KV head), the heads of a group are split into chunks
// whose f32 dk/dv partials a last kernel sums in chunk order. No atomics anywhere: every result
// repeats bit for bit.
#pragma once

#include <cstdint>

#include "attention_common.cuh"

namespace nnkit::cuda {

// True when the tensor-core kernels take a call: head_dim a multiple of 8 up to 128 (rows are
// copied in 16-byte pieces and zero-padded to 64 or 128), more query rows per (batch, KV head)
// than the decode tile (decoding stays on the split-key kernels), and 16-byte aligned tensors.
template <typename T>
bool tensor_cores_take(const AttentionArgsOf<T>& a) {
  const auto aligned = [](const void* p) {
    return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0;
  };
  return a.dim % 8 == 0 && a.dim <= 128 && a.rows > kDecodeRows && aligned(a.q) && aligned(a.k) &&
         aligned(a.v) && aligned(a.out) && aligned(a.dout) && aligned(a.dq) && aligned(a.dk) &&
         aligned(a.dv);
}

// out, lse from q, k, v (a.q, a.k, a.v, a.out, a.lse set). T: __nv_bfloat16 or __half.
template <typename T>
void attention_forward_tensor_cores(CudaBackend& backend, const char* op,
                                    const AttentionArgsOf<T>& a);

// dq, dk, dv (overwritten) from dout, q, k, v, lse and delta = rowsum(dout * out), which the
// caller has already computed into a.delta.
template <typename T>
void attention_backward_tensor_cores(CudaBackend& backend, const char* op,
                                     const AttentionArgsOf<T>& a);

}  // namespace nnkit::cuda
