// Purpose: the compute backend interface: memory, copies, synchronisation and the op set that
// components compose. A backend is a plugin (`backend/cpu`, later `backend/cuda`).
// Contract: ops *enqueue* work on the backend's stream and return; nothing comes back to the host
// except through copy_to_host (which synchronises). All tensors are contiguous row-major and must
// live on this backend's device. Unless an op says "accumulates", outputs are overwritten.
// Shapes are written next to each argument; N = rows (tokens), C = channels.
// Ownership: tensors returned by empty() share storage released through this backend's allocator;
// that storage keeps the backend alive. The backend is not thread-safe: one thread drives it.
// Table discipline: new ops are appended at the end of the class (ABI version guards the rest).
#pragma once

#include <cstdint>

#include "nnkit/component.h"
#include "nnkit/tensor.h"

namespace nnkit {

// Geometry of one attention call. q: (B, Tq, H, D); k, v: (B, kv_capacity, Hkv, D).
// Query t of batch b sits at absolute position q_offset + t and sees keys j with
// kv_start[b] <= j <= q_offset + t (causal) and j < kv_len.
struct AttentionShape {
  int64_t batch = 0;
  int64_t q_len = 0;
  int64_t kv_len = 0;       // keys in use
  int64_t kv_capacity = 0;  // rows allocated per batch in k/v (>= kv_len)
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t q_offset = 0;
  float scale = 1.0f;  // usually 1/sqrt(head_dim)
};

// One AdamW step: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p), with bias corrections 1-b^step.
// `grad_scale` multiplies g first (gradient clipping / loss-scale removal).
struct AdamWStep {
  float lr = 1e-4f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  float grad_scale = 1.0f;
  int64_t step = 1;  // 1-based, for bias correction
};

class NNKIT_API Backend : public Component {
 public:
  ~Backend() override;

  // ---- device and memory -------------------------------------------------------------------
  virtual Device device() const = 0;
  // Uninitialised tensor on this device.
  virtual Tensor empty(const Shape& shape, DType dtype = DType::kF32) = 0;
  // dst <- bytes from host memory (dst.nbytes() bytes).
  virtual void copy_from_host(const Tensor& dst, const void* src) = 0;
  // host memory <- src (src.nbytes() bytes); waits for pending work first.
  virtual void copy_to_host(void* dst, const Tensor& src) = 0;
  // dst <- src, same device, same dtype and numel.
  virtual void copy(const Tensor& dst, const Tensor& src) = 0;
  // Waits until all enqueued work is done.
  virtual void synchronize() = 0;
  // Threads used by host-side parallel loops (0 = runtime default).
  virtual int threads() const = 0;

  // ---- initialisation and elementwise -------------------------------------------------------
  virtual void fill(const Tensor& t, float value) = 0;
  // Normal(mean, std) from a counter-based generator: element i depends only on (seed, i), so
  // every backend produces the same numbers for the same seed.
  virtual void fill_normal(const Tensor& t, float mean, float std, uint64_t seed) = 0;
  // out = a + b (out may alias a or b). All same shape.
  virtual void add(const Tensor& out, const Tensor& a, const Tensor& b) = 0;
  // y += alpha * x.
  virtual void axpy(const Tensor& y, float alpha, const Tensor& x) = 0;
  // t *= alpha.
  virtual void scale(const Tensor& t, float alpha) = 0;
  // x: (N, C), w: (N) -> x[n, :] *= w[n] in place.
  virtual void scale_rows(const Tensor& x, const Tensor& w) = 0;
  // a, b: (N, C) -> out: (N) = sum_c a[n, c] * b[n, c].
  virtual void row_dot(const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  // out: (1) += sum(x^2) (accumulates; used for the global gradient norm).
  virtual void sum_squares(const Tensor& x, const Tensor& out) = 0;

  // ---- matrix products ----------------------------------------------------------------------
  // c = alpha * op(a) @ op(b) + beta * c, 2-D tensors; op(x) = x^T when the flag is set.
  // beta = 1 accumulates (used for parameter gradients).
  virtual void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
                    float alpha = 1.0f, float beta = 0.0f) = 0;

  // ---- normalisation and activations --------------------------------------------------------
  // x, y: (N, C); weight: (C); rstd: (N) = 1 / sqrt(mean(x^2) + eps); y = x * rstd * weight.
  virtual void rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, const Tensor& y,
                               const Tensor& rstd) = 0;
  // dx: (N, C) overwritten; dweight: (C) accumulates.
  virtual void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                const Tensor& rstd, const Tensor& dx, const Tensor& dweight) = 0;
  // gate, up, out: (N, F); out = silu(gate) * up.
  virtual void swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out) = 0;
  // dgate, dup overwritten (may not alias inputs).
  virtual void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up,
                               const Tensor& dgate, const Tensor& dup) = 0;
  // x, y: (N, C); softmax over C (y may alias x).
  virtual void softmax_rows(const Tensor& x, const Tensor& y) = 0;
  // y = softmax output, dy: (N, C) -> dx = y * (dy - sum(dy * y)) (dx may alias dy).
  virtual void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) = 0;
  // x: (N, C) -> values (N, k) descending, indices (N, k) i32. Ties: lower index first.
  virtual void topk_rows(const Tensor& x, int64_t k, const Tensor& values,
                         const Tensor& indices) = 0;

  // ---- positions and attention --------------------------------------------------------------
  // x: (N, H * D) in place, positions: (N) i32. Rotate-half pairing (i with i + D/2, HF layout),
  // angle = pos * base^(-2i/D). inverse = true rotates by -angle (the backward of rope).
  virtual void rope(const Tensor& x, const Tensor& positions, int64_t n_heads, int64_t head_dim,
                    float base, bool inverse) = 0;
  // q: (B*Tq, H*D); k, v: (B*kv_capacity, Hkv*D); out: (B*Tq, H*D); lse: (B*Tq, H) f32
  // log-sum-exp of the scaled scores (kept for backward). kv_start: (B) i32 or undefined.
  virtual void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Tensor& kv_start, const Tensor& out, const Tensor& lse,
                                 const AttentionShape& shape) = 0;
  // dq overwritten; dk, dv overwritten (MQA: summed over the query heads sharing a KV head).
  virtual void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& kv_start, const Tensor& out,
                                  const Tensor& lse, const Tensor& dq, const Tensor& dk,
                                  const Tensor& dv, const AttentionShape& shape) = 0;

  // ---- gather / scatter ---------------------------------------------------------------------
  // src: (R, C), index: (N) i32 -> dst: (N, C) = src[index[n]]. (Embedding lookup, MoE dispatch.)
  virtual void gather_rows(const Tensor& src, const Tensor& index, const Tensor& dst) = 0;
  // dst[index[n], :] += weight[n] * src[n, :] (accumulates; weight (N) may be undefined = 1).
  // Deterministic: rows are added in order of n. (Embedding backward, MoE combine.)
  virtual void scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& weight,
                                const Tensor& dst) = 0;

  // ---- losses -------------------------------------------------------------------------------
  // logits: (N, V), targets: (N) i32 -> losses: (N) = -log softmax(logits)[target]; target < 0
  // is ignored (loss 0).
  virtual void cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                     const Tensor& losses) = 0;
  // dlogits: (N, V) = scale * (softmax(logits) - onehot(target)); ignored rows are 0.
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& targets, float scale,
                                      const Tensor& dlogits) = 0;

  // ---- optimizer ----------------------------------------------------------------------------
  // In place on param, m, v (all same shape); grad read only.
  virtual void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m,
                            const Tensor& v, const AdamWStep& step) = 0;

  // ---- conveniences (non-virtual) -----------------------------------------------------------
  Tensor zeros(const Shape& shape, DType dtype = DType::kF32);
  // A new device tensor holding a copy of host data.
  Tensor from_host(const void* src, const Shape& shape, DType dtype);
};

}  // namespace nnkit
