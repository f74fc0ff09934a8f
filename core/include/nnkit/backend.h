// Purpose: the compute backend interface: memory, copies, synchronisation and the op set that
// components compose. A backend is a plugin (`backend/cpu`, later `backend/cuda`).
// Contract: ops *enqueue* work on the backend's stream and return; nothing comes back to the host
// except through copy_to_host (which synchronises). All tensors are contiguous row-major and must
// live on this backend's device. Unless an op says "accumulates", outputs are overwritten.
// Shapes are written next to each argument; N = rows (tokens), C = channels.
// Dtypes: "float" means f32 or the backend's compute_dtype() (bf16/f16 on a CUDA backend run at
// that precision; the CPU backend computes in f32 only). Low-precision inputs are widened to f32
// inside the op, all arithmetic and accumulation is f32, results are rounded once when stored.
// Unless an op names other dtypes, its tensors share one float dtype. An op given a dtype it does
// not support throws a ShapeError naming the op, the tensor and the dtypes it takes.
// Ownership: tensors returned by empty() share storage released through this backend's allocator;
// that storage keeps the backend alive. The backend is not thread-safe: one thread drives it.
// Table discipline: new ops are appended at the end of the class (ABI version guards the rest).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "nnkit/component.h"
#include "nnkit/tensor.h"

namespace nnkit {

// Geometry of one attention call. q: (B, Tq, H, D); k, v: (B, kv_capacity, Hkv, D).
// Query t of batch b sits at absolute position q_offset + t and sees keys j with
// kv_start[b] <= j <= q_offset + t (causal) and j < kv_len.
// A device's memory in bytes, as Backend::device_memory() reports it.
struct DeviceMemory {
  int64_t free = 0;   // what new allocations can still take
  int64_t total = 0;  // the device's capacity
};

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
  // Optional (4) f32 on the device: {lr, 1 / (1 - beta1^step), 1 / (1 - beta2^step),
  // grad_scale}, which adamw_update_multi then reads at run time instead of the fields above (the
  // fields must hold the same values): a CUDA Graph that captured the update replays it with the
  // values uploaded before each replay. Backends that do not capture may ignore it.
  Tensor scalars;
};

// Unary activations of activation_forward / activation_backward (appended in ABI 3).
//   kRelu: max(x, 0) (derivative 0 at 0);  kGelu: x * Phi(x), the exact erf form
//   (0.5 x (1 + erf(x / sqrt 2)), torch's default);  kSilu: x * sigmoid(x);
//   kReluSquared: max(x, 0)^2 (Primer's squared ReLU).
enum class Activation : uint8_t { kRelu = 0, kGelu = 1, kSilu = 2, kReluSquared = 3 };

// The scalars of sgd_momentum_update and lion_update (appended in ABI 3).
struct MomentumStep {
  float lr = 1e-4f;
  float beta1 = 0.9f;   // momentum (SGD) / interpolation (Lion)
  float beta2 = 0.99f;  // Lion's moment decay; unused by SGD
  float weight_decay = 0.0f;
  float grad_scale = 1.0f;  // multiplies grad first (clipping, loss-scale removal)
};

// One tensor of a multi-tensor AdamW update (adamw_update_multi).
struct AdamWTensor {
  Tensor param;       // f32 master weights, updated in place
  Tensor grad;        // f32, read then zeroed
  Tensor exp_avg;     // f32 m
  Tensor exp_avg_sq;  // f32 v
  Tensor
      compute_copy;  // compute_dtype() copy of param, rewritten after the update; may be undefined
  float weight_decay = 0.0f;
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
  // x: (N, C) float, w: (N) f32 -> x[n, :] *= w[n] in place.
  virtual void scale_rows(const Tensor& x, const Tensor& w) = 0;
  // a, b: (N, C) float -> out: (N) f32 = sum_c a[n, c] * b[n, c].
  virtual void row_dot(const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  // out: (1) f32 += sum(x^2) (accumulates; used for the global gradient norm). x: float.
  virtual void sum_squares(const Tensor& x, const Tensor& out) = 0;

  // ---- matrix products ----------------------------------------------------------------------
  // c = alpha * op(a) @ op(b) + beta * c, 2-D tensors; op(x) = x^T when the flag is set.
  // beta = 1 accumulates (used for parameter gradients). a and b share a float dtype; c is f32 or
  // that dtype (bf16 x bf16 -> f32 is how low-precision products accumulate into f32 gradients).
  virtual void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
                    float alpha = 1.0f, float beta = 0.0f) = 0;

  // ---- normalisation and activations --------------------------------------------------------
  // x, y: (N, C); weight: (C); rstd: (N) = 1 / sqrt(mean(x^2) + eps); y = x * rstd * weight.
  // x, y, dy, dx share a float dtype; weight is f32 or that dtype; rstd and dweight are f32.
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
  // x, y: (N, C); softmax over C (y may alias x). x and y: float, independently.
  virtual void softmax_rows(const Tensor& x, const Tensor& y) = 0;
  // y = softmax output, dy: (N, C) -> dx = y * (dy - sum(dy * y)) (dx may alias dy).
  virtual void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) = 0;
  // x: (N, C) f32 -> values (N, k) f32 descending, indices (N, k) i32. Ties: lower index first.
  virtual void topk_rows(const Tensor& x, int64_t k, const Tensor& values,
                         const Tensor& indices) = 0;

  // ---- positions and attention --------------------------------------------------------------
  // x: (N, H * D) in place, positions: (N) i32. Rotate-half pairing (i with i + D/2, HF layout),
  // angle = pos * base^(-2i/D). inverse = true rotates by -angle (the backward of rope).
  virtual void rope(const Tensor& x, const Tensor& positions, int64_t n_heads, int64_t head_dim,
                    float base, bool inverse) = 0;
  // q: (B*Tq, H*D); k, v: (B*kv_capacity, Hkv*D); out: (B*Tq, H*D); lse: (B*Tq, H) f32
  // log-sum-exp of the scaled scores (kept for backward). kv_start: (B) i32 or undefined.
  // q, k, v, out (and dout, dq, dk, dv) share a float dtype; lse is f32.
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
  // index -1 gives a zero row (the padding of a static MoE layout); other indices outside
  // [0, R) are an error. src and dst share a dtype: f32 on the CPU; f32, bf16, f16 or i32 on CUDA.
  virtual void gather_rows(const Tensor& src, const Tensor& index, const Tensor& dst) = 0;
  // dst[index[n], :] += weight[n] * src[n, :] (accumulates; weight (N) may be undefined = 1).
  // Rows with index -1 are skipped (static MoE padding).
  // Deterministic: rows are added in order of n. (Embedding backward, MoE combine.)
  // src and dst: float, independently (bf16 rows accumulate into an f32 gradient); weight f32.
  // Each destination row is summed in f32 and rounded once.
  virtual void scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& weight,
                                const Tensor& dst) = 0;

  // ---- losses -------------------------------------------------------------------------------
  // logits: (N, V) float, targets: (N) i32 -> losses: (N) f32 = -log softmax(logits)[target];
  // target < 0 is ignored (loss 0).
  virtual void cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                     const Tensor& losses) = 0;
  // dlogits: (N, V) = scale * (softmax(logits) - onehot(target)); ignored rows are 0.
  // logits and dlogits: float, independently.
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& targets, float scale,
                                      const Tensor& dlogits) = 0;

  // ---- optimizer ----------------------------------------------------------------------------
  // In place on param, m, v (all same shape, f32); grad read only.
  virtual void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m,
                            const Tensor& v, const AdamWStep& step) = 0;

  // ---- appended in ABI 2: mixed precision, device-resident MoE and fused optimizer -----------
  // The dtype activations and compute copies of the weights use on this backend: f32 on the CPU,
  // the `precision` option on CUDA (bf16 by default). Master weights, gradients and optimizer
  // state are always f32.
  virtual DType compute_dtype() const = 0;
  // dst <- src converted (same numel; any float dtypes; rounding to nearest even).
  virtual void convert(const Tensor& dst, const Tensor& src) = 0;
  // Enqueues a copy of src to host memory at dst and returns at once; dst holds the data after
  // the next await_host_copies(), which waits for the copies enqueued so far only (work enqueued
  // after them keeps running). For small reads (per-expert counts) inside a step.
  virtual void copy_to_host_async(void* dst, const Tensor& src) = 0;
  virtual void await_host_copies() = 0;

  // MoE dispatch: a stable sort of the N*k routed slots by expert, on the device.
  // expert_index: (N*k) i32 in [0, E) (or -1 = already dropped), modified in place when the
  // capacity drops slots. capacity >= 0 keeps only an expert's first `capacity` slots in slot
  // order (token-major, rank order within a token); the dropped ones get index -1 and gate 0.
  // Outputs: token, slot: (N*k) i32; rows [offsets[e], offsets[e+1]) are expert e's routed
  // slots in ascending slot order, token = slot / k; rows past offsets[E] hold token 0, slot -1.
  // offsets: (E + 1) i32. load: (E) f32 = slots that chose expert e BEFORE dropping, divided by
  // N*k (the f_i of the load-balancing loss). gate: (N*k) f32, zeroed at dropped slots (may be
  // undefined when capacity < 0).
  virtual void moe_sort_by_expert(const Tensor& expert_index, int64_t n_experts, int64_t top_k,
                                  int64_t capacity, const Tensor& gate, const Tensor& token,
                                  const Tensor& slot, const Tensor& offsets,
                                  const Tensor& load) = 0;

  // out: (1) f32 += sum over every tensor of sum(x^2) (float tensors); one pass, few launches.
  virtual void sum_squares_multi(const std::vector<Tensor>& xs, const Tensor& out) = 0;
  // AdamW over many tensors in few launches. Each element's gradient is
  //   g = grad * step.grad_scale * clip,  clip = min(1, max_grad_norm / norm),
  //   norm = sqrt(grad_sum_squares) * step.grad_scale
  // (max_grad_norm <= 0: clip = 1). grad_sum_squares: (1) f32 on the device (sum_squares_multi
  // of the grads as stored). When it is not finite the whole update is skipped on the device:
  // params, moments, compute copies AND grads are left untouched (so the caller can find the
  // offending parameter, then zero the grads itself). Otherwise every grad is zeroed afterwards
  // (ready for the next step's accumulation). The compute copy, when defined, is
  // rewritten from the updated f32 value (the low-precision weights the next forward reads).
  // step.weight_decay is not used: each tensor carries its own.
  virtual void adamw_update_multi(const std::vector<AdamWTensor>& tensors, const AdamWStep& step,
                                  const Tensor& grad_sum_squares, float max_grad_norm) = 0;
  // src: (N, k) f32, index: (N, k) i32 column of each entry (-1 = skip) -> dst: (N, C) f32,
  // dst[n, index[n, j]] += src[n, j] (accumulates, in order of j). The transpose of picking k
  // columns per row: how top-k gate gradients reach the router's (N, E) scores on the device.
  virtual void scatter_add_columns(const Tensor& src, const Tensor& index, const Tensor& dst) = 0;

  // ---- CUDA Graphs: recording a stretch of ops once and replaying it ------------------------
  // begin_capture(): from now on ops are recorded, not run; returns false (recording nothing)
  // when the backend cannot or is told not to capture (the caller then runs the work normally).
  // While recording, nothing may wait for or read from the device, and copy_from_host is
  // refused: inputs go into tensors allocated before the capture. Memory allocated while
  // recording is reserved for the recorded work from then on.
  virtual bool begin_capture() = 0;
  // Ends the recording and returns the graph's id (the recorded work has not run yet).
  virtual int64_t end_capture() = 0;
  // Ends a recording that went wrong (an exception between begin and end) and drops it.
  virtual void abort_capture() = 0;
  // Enqueues the recorded work, like any op.
  virtual void replay(int64_t graph) = 0;
  virtual void release_graph(int64_t graph) = 0;

  // ---- appended in ABI 3: static-shape MoE (CUDA Graphs of capacity-limited MoE steps) -------
  // True when begin_capture() would record (a CUDA backend with cuda_graphs on). Lets callers
  // choose static-shape layouts (padded expert blocks) only where a graph will use them.
  virtual bool captures() const = 0;
  // moe_sort_by_expert with a static layout: token and slot have E * capacity rows and expert e
  // owns rows [e * capacity, (e + 1) * capacity). Its kept slots (at most capacity, dropping as
  // moe_sort_by_expert does) fill the first rows of its block in ascending slot order; the other
  // rows are padding: token -1 and slot -1, which gather_rows reads as zero rows and
  // scatter_add_rows skips. offsets: (E + 1) i32 = the compact offsets of the kept slots
  // (offsets[e + 1] - offsets[e] = expert e's kept count; offsets[E] = kept slots), for
  // statistics only: nothing on the host needs to read it. gate and load as in
  // moe_sort_by_expert; capacity >= 1 and gate defined.
  virtual void moe_sort_by_expert_padded(const Tensor& expert_index, int64_t n_experts,
                                         int64_t top_k, int64_t capacity, const Tensor& gate,
                                         const Tensor& token, const Tensor& slot,
                                         const Tensor& offsets, const Tensor& load) = 0;
  // x: (N, C) f32 -> out: (N) f32 = log(sum_c exp(x[n, c])), computed stably (max subtracted).
  // (The router z-loss on the device.)
  virtual void logsumexp_rows(const Tensor& x, const Tensor& out) = 0;

  // ---- appended in ABI 3: device-resident decoding (lengths read from device memory) --------
  // A decode step recorded once in a CUDA Graph and replayed for every token cannot carry the
  // cache length as a host number; these ops read it from a (1) i32 device tensor instead.
  // cache: (B * capacity, W) rows of B sequences, sequence b's block starting at b * capacity;
  // rows: (B * T, W), sequence b's T rows in order. Writes rows[b * T + t] to cache row
  // b * capacity + cache_len + t, cache_len = *cache_len_device. One dtype. A length that does
  // not fit (cache_len + T > capacity) writes nothing and is reported as a fault (CUDA: by the
  // next synchronisation; CPU: a ShapeError).
  virtual void kv_cache_append(const Tensor& cache, const Tensor& rows, int64_t batch,
                               int64_t capacity, const Tensor& cache_len_device) = 0;
  // One new query per sequence against its cache (decoding): q: (B, H*D), k, v: (B *
  // kv_capacity, Hkv*D) caches, out: (B, H*D), one float dtype. kv_len = *kv_len_device keys
  // are in use; the query sits at position kv_len - 1 and sees keys kv_start[b] <= j < kv_len
  // (kv_start (B) i32 or undefined = 0). shape.batch, n_heads, n_kv_heads, head_dim,
  // kv_capacity and scale are used; q_len must be 1, kv_len and q_offset are ignored. Long
  // caches are split across thread blocks and combined (f32 statistics).
  virtual void attention_decode(const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& kv_start, const Tensor& kv_len_device,
                                const Tensor& out, const AttentionShape& shape) = 0;
  // The experts' x W^T for the padded MoE layout with few rows per expert (decoding):
  // x: (E * capacity, K), weights: E tensors (N, K) of x's dtype (one per expert), y: (E *
  // capacity, N) of x's dtype. kept_offsets: (E + 1) i32 device, the compact offsets of
  // moe_sort_by_expert_padded: expert e's first kept_e = kept_offsets[e + 1] - kept_offsets[e]
  // rows of its block are computed, y[e * capacity + r] = x[e * capacity + r] W_e^T; its other
  // rows of y are set to 0. An expert nobody chose costs no read of its weights.
  // capacity <= 16 (the products are reads of the weights, not compute).
  virtual void moe_grouped_gemm_nt(const Tensor& x, const std::vector<Tensor>& weights,
                                   const Tensor& kept_offsets, int64_t capacity,
                                   const Tensor& y) = 0;
  // The experts' first two products and their SwiGLU in one pass (decoding): y = silu(x Wg^T)
  // * (x Wu^T) per expert, from the f32 sums (no rounding of the two products in between), with
  // moe_grouped_gemm_nt's layout and padding rule; y: (E * capacity, F).
  virtual void moe_grouped_swiglu_nt(const Tensor& x, const std::vector<Tensor>& gate_weights,
                                     const std::vector<Tensor>& up_weights,
                                     const Tensor& kept_offsets, int64_t capacity,
                                     const Tensor& y) = 0;

  // ---- appended in ABI 3: the author op set (issue 11) --------------------------------------
  // Elementwise building blocks, so that a plugin never emulates one op with another. Unless
  // said otherwise: all tensors share one float dtype (f32, or compute_dtype() on CUDA) and one
  // shape; out may alias an input; arithmetic is f32, rounded once on store.
  // out = a * b.
  virtual void mul(const Tensor& out, const Tensor& a, const Tensor& b) = 0;
  // out = sign(x): -1, 0 or +1 (sign(-0) = 0; NaN stays NaN).
  virtual void sign(const Tensor& out, const Tensor& x) = 0;
  // out = min(max(x, lo), hi); lo <= hi (else a ShapeError). NaN stays NaN.
  virtual void clamp(const Tensor& out, const Tensor& x, float lo, float hi) = 0;
  // out = x + alpha.
  virtual void add_scalar(const Tensor& out, const Tensor& x, float alpha) = 0;
  // y = act(x) for act in Activation (x, y: same shape and float dtype; y may alias x).
  virtual void activation_forward(Activation act, const Tensor& x, const Tensor& y) = 0;
  // dx = dy * act'(x), from the forward's input x (dx may alias dy, not x).
  virtual void activation_backward(Activation act, const Tensor& dy, const Tensor& x,
                                   const Tensor& dx) = 0;
  // One SGD-with-momentum step (decoupled weight decay), f32 tensors of one shape:
  //   g = step.grad_scale * grad;  m = step.beta1 * m + g;
  //   param -= step.lr * (m + step.weight_decay * param).
  // param and momentum in place; grad read only. step.beta2 is not used.
  virtual void sgd_momentum_update(const Tensor& param, const Tensor& grad, const Tensor& momentum,
                                   const MomentumStep& step) = 0;
  // One Lion step (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), f32:
  //   g = step.grad_scale * grad;  c = step.beta1 * m + (1 - step.beta1) * g;
  //   param -= step.lr * (sign(c) + step.weight_decay * param);
  //   m = step.beta2 * m + (1 - step.beta2) * g.
  virtual void lion_update(const Tensor& param, const Tensor& grad, const Tensor& m,
                           const MomentumStep& step) = 0;

  // ---- appended in ABI 3: device sampling (issue 10) ----
  // The sampler chain on the device (Sampler::apply_device, nnkit/device_sampling.h). logits:
  // (B, V) f32, transformed in place, one row per sequence; every op is row-independent and
  // enqueues only (nothing is read on the host). Filters set excluded entries to -inf. Ranking
  // is the host samplers': larger logit first, ties to the lower index, NaN last; -0 ties +0.
  // A token's weight is exp(logit - row max) (0 for -inf and NaN; with a +inf max the +inf
  // tokens share the mass). Sums are in double in a fixed order, so every backend keeps the
  // same tokens and draws the same ids from the same logits (plugins/backend/common/
  // sampling_math.h holds the shared arithmetic).
  // logits / temperature, each finite entry, computed in double; when that leaves the float
  // range the row is first shifted by its largest finite logit (decode/temperature's rule).
  // Non-finite entries stay. temperature > 0.
  virtual void temperature_rows(const Tensor& logits, double temperature) = 0;
  // Keeps the k first-ranked tokens of each row (exactly min(k, V)); k >= 1.
  virtual void top_k_filter_rows(const Tensor& logits, int64_t k) = 0;
  // Keeps the smallest ranked prefix whose weight reaches (p - 1e-6) of the row's total (at
  // least one token; ties at the boundary to the lower index); p >= 1 or a row without weight
  // keeps everything.
  virtual void top_p_filter_rows(const Tensor& logits, double p) = 0;
  // Drops the tokens whose weight (probability relative to the most likely) is below p; p <= 0
  // keeps everything.
  virtual void min_p_filter_rows(const Tensor& logits, double p) = 0;
  // history: (B, L) i32, lengths: (B) i32 (nnkit::DeviceSamplingContext). Every distinct id in
  // history[b, 0 : lengths[b]] inside [0, V) has its logit divided by penalty when positive,
  // multiplied otherwise, once however often it occurs. penalty > 0.
  virtual void repetition_penalty_rows(const Tensor& logits, const Tensor& history,
                                       const Tensor& lengths, float penalty) = 0;
  // ids: (B) i32 = the argmax of each row (argmax = true, or a row whose largest logit is not
  // finite), else a draw from softmax(row) with the uniform of nnkit/philox.h keyed by
  // (seed, b, s): s = step_device[0] when that (1) i32 tensor is defined (read at run time),
  // `step` otherwise. logits is only read.
  virtual void sample_rows(const Tensor& logits, uint64_t seed, int64_t step,
                           const Tensor& step_device, bool argmax, const Tensor& ids) = 0;
  // history: (B, L) i32, lengths: (B) i32, ids: (B) i32: history[b, lengths[b]] = ids[b] and
  // lengths[b] += 1 for every row with lengths[b] < L (a full row is left as it is). step: (1)
  // i32 or undefined, += 1. history and lengths may be undefined (only step advances).
  virtual void append_tokens(const Tensor& history, const Tensor& lengths, const Tensor& ids,
                             const Tensor& step) = 0;

  // ---- appended in ABI 4: device memory, fused decode-step ops ----------------------------------
  // The device's free and total memory right now (CUDA: cudaMemGetInfo, plus what this backend's
  // block cache holds ready for reuse), so callers compare an estimate with it before they
  // allocate; nullopt for host backends (the host's memory is read from /proc instead).
  virtual std::optional<DeviceMemory> device_memory() const = 0;
  // One decode position per sequence: qkv: (B, (H + 2 * Hkv) * D) = [q heads | k heads | v heads]
  // (one product with the three projections stacked), positions: (B) i32. Writes q_out: (B, H *
  // D) = rope(q), and appends rope(k) and v to the caches k_cache, v_cache: (B * capacity, Hkv *
  // D) at row b * capacity + *cache_len_device, exactly as rope() then kv_cache_append() would
  // (same angles, same rounding, same full-cache fault). One float dtype throughout.
  virtual void rope_kv_append(const Tensor& qkv, const Tensor& positions, int64_t n_heads,
                              int64_t n_kv_heads, int64_t head_dim, float base,
                              const Tensor& k_cache, const Tensor& v_cache, int64_t capacity,
                              const Tensor& cache_len_device, const Tensor& q_out) = 0;
  // The MoE combine of a decode step in one op: dst[t, :] = sum over the rows n with token[n] = t,
  // in ascending n, of gate[slot[n]] * src[n, :]; rows of dst without a source are set to 0 and
  // token -1 (padding) is skipped. src: (N, C), dst: (R, C) float dtypes, token and slot: (N)
  // i32, gate: (S) f32 (the router's flat (tokens * top_k) gates). Equals fill(dst, 0), a
  // gather of the gates by slot and scatter_add_rows, bit for bit.
  virtual void moe_combine_rows(const Tensor& src, const Tensor& token, const Tensor& slot,
                                const Tensor& gate, const Tensor& dst) = 0;
  // The residual add and RMSNorm of an inference pass in one op: sum = x + residual (rounded to
  // the dtype), y = sum * rstd * weight with rstd = 1 / sqrt(mean(sum^2) + eps) from the rounded
  // sum: add() then rmsnorm_forward(), without the statistics. x, residual, sum, y: (N, C) of one
  // float dtype (sum may alias x); weight: (C) f32 or that dtype.
  virtual void add_rmsnorm(const Tensor& x, const Tensor& residual, const Tensor& weight, float eps,
                           const Tensor& sum, const Tensor& y) = 0;

  // ---- appended in ABI 5: the router of a decode step in one op ------------------------------
  // logits = x weight^T accumulated in f32 (x: (N, C), weight: (E, C), one float dtype); each
  // token keeps its top_k experts by logit (ties: lower index first; expert_index (N, k) i32);
  // gate (N, k) f32 = softmax over the kept logits when `renormalize`, else the kept entries of
  // softmax(logits); then moe_sort_by_expert_padded of those choices into blocks of `capacity`
  // rows (token, slot, offsets, load as there; dropped slots get expert -1 and gate 0).
  // Equals gemm + topk_rows (+ softmax_rows) + moe_sort_by_expert_padded up to the rounding of
  // the logits' summation order (a near-tie may then choose the other expert).
  virtual void moe_route_padded(const Tensor& x, const Tensor& weight, int64_t top_k,
                                bool renormalize, int64_t capacity, const Tensor& expert_index,
                                const Tensor& gate, const Tensor& token, const Tensor& slot,
                                const Tensor& offsets, const Tensor& load) = 0;

  // ---- appended in ABI 6: a decode step's SwiGLU experts in one op ---------------------------
  // The padded layout's whole expert block (gather, SwiGLU products, down product and combine):
  // for each padded row n of expert e = n / capacity with token[n] >= 0,
  //   a_n = round(silu(x[token[n]] gate_w[e]^T) * (x[token[n]] up_w[e]^T))  (rounded to the dtype)
  //   y[t, :] = sum over the rows n with token[n] = t, in ascending n, of
  //             gate[slot[n]] * (a_n down_w[e]^T)
  // rows of y without a source are 0. x: (N, C), y: (N, C), gate_w/up_w[e]: (F, C), down_w[e]:
  // (C, F), all one 16-bit or f32 float dtype; token, slot: (E * capacity) i32 (-1 = padding);
  // gate: (S) f32 (the router's flat gates); kept_offsets: (E + 1) i32 on the device as
  // moe_route_padded writes them (only expert e's first kept_offsets[e + 1] - kept_offsets[e]
  // rows are read). Equals gather_rows, moe_grouped_swiglu_nt, moe_grouped_gemm_nt and
  // moe_combine_rows up to the rounding of the products' summation order (a backend may sum k
  // in another order, e.g. for single-token steps) and of the down product (a backend may keep
  // it in f32 until the combine's sum is rounded once).
  virtual void moe_swiglu_experts_padded(const Tensor& x, const Tensor& token, const Tensor& slot,
                                         const Tensor& gate, const std::vector<Tensor>& gate_w,
                                         const std::vector<Tensor>& up_w,
                                         const std::vector<Tensor>& down_w,
                                         const Tensor& kept_offsets, int64_t capacity,
                                         const Tensor& y) = 0;

  // ---- appended in ABI 7: a decode step's norm + qkv product, and its attention, in one op each
  // rope_kv_append(qkv, positions, shape.n_heads, shape.n_kv_heads, shape.head_dim, base,
  // k_cache, v_cache, shape.kv_capacity, cache_len_device, q) followed by attention_decode(q,
  // k_cache, v_cache, kv_start, kv_len_device, out, shape), bit for bit, without q as an output:
  // the caches gain the step's rotated keys and values at row b * kv_capacity +
  // *cache_len_device (the same full-cache fault), and out (B, H * D) is the attention of the
  // rotated queries. A backend without a fused kernel runs the two ops
  // (backend_common::attention_decode_rope_by_ops).
  virtual void attention_decode_rope(const Tensor& qkv, const Tensor& positions, float base,
                                     const Tensor& k_cache, const Tensor& v_cache,
                                     const Tensor& cache_len_device, const Tensor& kv_start,
                                     const Tensor& kv_len_device, const Tensor& out,
                                     const AttentionShape& shape) = 0;

  // add_rmsnorm(x, residual, norm_weight, eps, sum, h) followed by gemm(h, false, w, true, out)
  // (out = h w^T), bit for bit, without h as an output: x, residual, sum (N, C) one float dtype;
  // norm_weight (C) f32 or x's dtype; w (M, C) and out (N, M) in x's dtype. For the norm in
  // front of a decode step's first product (attention/mqa's qkv). A backend without a fused
  // kernel runs the two ops (backend_common::add_rmsnorm_gemm_nt_by_ops).
  virtual void add_rmsnorm_gemm_nt(const Tensor& x, const Tensor& residual,
                                   const Tensor& norm_weight, float eps, const Tensor& w,
                                   const Tensor& sum, const Tensor& out) = 0;

  // ---- appended in ABI 8: a decode step's norm in front of the router, in the router's op -----
  // add_rmsnorm(x, residual, norm_weight, eps, sum, normed) followed by moe_route_padded(normed,
  // weight, top_k, renormalize, capacity, expert_index, gate, token, slot, offsets, load), bit
  // for bit, with normed as an output (the experts read it). Shapes and dtypes as the two ops
  // state them. For the norm between a decode step's attention and its MoE layer (moe/topk). A
  // backend without a fused kernel runs the two ops
  // (backend_common::add_rmsnorm_moe_route_padded_by_ops).
  virtual void add_rmsnorm_moe_route_padded(const Tensor& x, const Tensor& residual,
                                            const Tensor& norm_weight, float eps, const Tensor& sum,
                                            const Tensor& normed, const Tensor& weight,
                                            int64_t top_k, bool renormalize, int64_t capacity,
                                            const Tensor& expert_index, const Tensor& gate,
                                            const Tensor& token, const Tensor& slot,
                                            const Tensor& offsets, const Tensor& load) = 0;

  // ---- conveniences (non-virtual) -----------------------------------------------------------
  Tensor zeros(const Shape& shape, DType dtype = DType::kF32);
  // x: (N, C) f32 -> out: (1, C) f32 = alpha * sum_n x[n, :] + beta * out, as products with
  // ones. Long sums are split in two stages (a product with N = 16384 rows and one output row
  // ran at ~0.8 ms in cuBLAS's pedantic fp32 mode on an H200; two stages take microseconds).
  void sum_rows(const Tensor& x, const Tensor& out, float alpha = 1.0f, float beta = 0.0f);
  // A new device tensor holding a copy of host data.
  Tensor from_host(const void* src, const Shape& shape, DType dtype);
};

}  // namespace nnkit
