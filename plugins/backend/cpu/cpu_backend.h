// Purpose: backend/cpu, the fp32 host implementation of nnkit::Backend. Host loops run under
// OpenMP (parallel over rows, heads or columns), matrix products go to OpenBLAS sgemm (the OpenMP
// build, so both share one thread pool). Ops run synchronously: "enqueue" means "run now".
// Ownership: tensors from empty() own 64-byte aligned malloc memory. Released blocks go back to a
// per-backend cache of free blocks (by size class, bounded), so the steady state of a training
// step or a decode step allocates nothing from the system; the cache is shared with the storage
// deleters, so tensors stay valid after the backend object is destroyed (the registry keeps the
// library mapped).
// Thread-safety: one thread drives a backend (the Backend contract); the rope table cache is the
// only mutable state besides the thread setting.
// The op bodies live in one file per idea: elementwise, gemm, norm_activation, softmax_topk, rope,
// attention, gather_loss, optimizer.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "nnkit/backend.h"

namespace nnkit::cpu {

class BlockCache;  // cpu_backend.cpp

class CpuBackend final : public Backend {
 public:
  // threads > 0 pins OpenMP and OpenBLAS to that many threads; 0 keeps the runtime default
  // (OMP_NUM_THREADS or the core count).
  explicit CpuBackend(int threads);

  // ---- device and memory -------------------------------------------------------------------
  Device device() const override { return Device{DeviceType::kCpu, 0}; }
  Tensor empty(const Shape& shape, DType dtype = DType::kF32) override;
  void copy_from_host(const Tensor& dst, const void* src) override;
  void copy_to_host(void* dst, const Tensor& src) override;
  void copy(const Tensor& dst, const Tensor& src) override;
  void synchronize() override {}
  int threads() const override;

  // ---- initialisation and elementwise (elementwise.cpp) -------------------------------------
  void fill(const Tensor& t, float value) override;
  void fill_normal(const Tensor& t, float mean, float std, uint64_t seed) override;
  void add(const Tensor& out, const Tensor& a, const Tensor& b) override;
  void axpy(const Tensor& y, float alpha, const Tensor& x) override;
  void scale(const Tensor& t, float alpha) override;
  void scale_rows(const Tensor& x, const Tensor& w) override;
  void row_dot(const Tensor& a, const Tensor& b, const Tensor& out) override;
  void sum_squares(const Tensor& x, const Tensor& out) override;

  // ---- matrix products (gemm.cpp) -----------------------------------------------------------
  void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
            float alpha = 1.0f, float beta = 0.0f) override;

  // ---- normalisation and activations (norm_activation.cpp, softmax_topk.cpp) ----------------
  void rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, const Tensor& y,
                       const Tensor& rstd) override;
  void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                        const Tensor& dx, const Tensor& dweight) override;
  void swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out) override;
  void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up,
                       const Tensor& dgate, const Tensor& dup) override;
  void softmax_rows(const Tensor& x, const Tensor& y) override;
  void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) override;
  void topk_rows(const Tensor& x, int64_t k, const Tensor& values, const Tensor& indices) override;

  // ---- positions and attention (rope.cpp, attention.cpp) ------------------------------------
  void rope(const Tensor& x, const Tensor& positions, int64_t n_heads, int64_t head_dim, float base,
            bool inverse) override;
  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& kv_start,
                         const Tensor& out, const Tensor& lse,
                         const AttentionShape& shape) override;
  void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& kv_start, const Tensor& out, const Tensor& lse,
                          const Tensor& dq, const Tensor& dk, const Tensor& dv,
                          const AttentionShape& shape) override;

  // ---- gather / scatter and losses (gather_loss.cpp) ----------------------------------------
  void gather_rows(const Tensor& src, const Tensor& index, const Tensor& dst) override;
  void scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& weight,
                        const Tensor& dst) override;
  void cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                             const Tensor& losses) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, float scale,
                              const Tensor& dlogits) override;

  // ---- optimizer (optimizer.cpp) ------------------------------------------------------------
  void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                    const AdamWStep& step) override;

  // ---- appended in ABI 2 (compute dtype, conversions, host reads, MoE dispatch, fused AdamW) ---
  DType compute_dtype() const override { return DType::kF32; }
  void convert(const Tensor& dst, const Tensor& src) override;     // elementwise.cpp
  void copy_to_host_async(void* dst, const Tensor& src) override;  // cpu_backend.cpp
  void await_host_copies() override;                               // cpu_backend.cpp
  void moe_sort_by_expert(const Tensor& expert_index, int64_t n_experts, int64_t top_k,
                          int64_t capacity, const Tensor& gate, const Tensor& token,
                          const Tensor& slot, const Tensor& offsets,
                          const Tensor& load) override;  // moe_dispatch.cpp
  // ABI 6 (moe_dispatch.cpp)
  void moe_swiglu_experts_padded(const Tensor& x, const Tensor& token, const Tensor& slot,
                                 const Tensor& gate, const std::vector<Tensor>& gate_w,
                                 const std::vector<Tensor>& up_w, const std::vector<Tensor>& down_w,
                                 const Tensor& kept_offsets, int64_t capacity,
                                 const Tensor& y) override;
  void add_rmsnorm_moe_route_padded(const Tensor& x, const Tensor& residual,
                                    const Tensor& norm_weight, float eps, const Tensor& sum,
                                    const Tensor& normed, const Tensor& weight, int64_t top_k,
                                    bool renormalize, int64_t capacity, const Tensor& expert_index,
                                    const Tensor& gate, const Tensor& token, const Tensor& slot,
                                    const Tensor& offsets, const Tensor& load) override;
  void add_rmsnorm_gemm_nt(const Tensor& x, const Tensor& residual, const Tensor& norm_weight,
                           float eps, const Tensor& w, const Tensor& sum,
                           const Tensor& out) override;  // decode_ops.cpp
  void attention_decode_rope(const Tensor& qkv, const Tensor& positions, float base,
                             const Tensor& k_cache, const Tensor& v_cache,
                             const Tensor& cache_len_device, const Tensor& kv_start,
                             const Tensor& kv_len_device, const Tensor& out,
                             const AttentionShape& shape) override;  // decode_ops.cpp
  void sum_squares_multi(const std::vector<Tensor>& xs,
                         const Tensor& out) override;  // optimizer.cpp
  void adamw_update_multi(const std::vector<AdamWTensor>& tensors, const AdamWStep& step,
                          const Tensor& grad_sum_squares,
                          float max_grad_norm) override;  // optimizer.cpp
  void scatter_add_columns(const Tensor& src, const Tensor& index,
                           const Tensor& dst) override;  // softmax_topk.cpp
  // The CPU runs every op at once: there is nothing to record (begin_capture() is false).
  bool begin_capture() override { return false; }
  int64_t end_capture() override;
  void abort_capture() override {}
  void replay(int64_t graph) override;
  void release_graph(int64_t) override {}

  // ---- appended in ABI 3: static-shape MoE --------------------------------------------------
  bool captures() const override { return false; }
  void moe_sort_by_expert_padded(const Tensor& expert_index, int64_t n_experts, int64_t top_k,
                                 int64_t capacity, const Tensor& gate, const Tensor& token,
                                 const Tensor& slot, const Tensor& offsets,
                                 const Tensor& load) override;       // moe_dispatch.cpp
  void logsumexp_rows(const Tensor& x, const Tensor& out) override;  // softmax_topk.cpp
  // device-resident decoding (decode_ops.cpp)
  void kv_cache_append(const Tensor& cache, const Tensor& rows, int64_t batch, int64_t capacity,
                       const Tensor& cache_len_device) override;
  void attention_decode(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& kv_start,
                        const Tensor& kv_len_device, const Tensor& out,
                        const AttentionShape& shape) override;
  void moe_grouped_gemm_nt(const Tensor& x, const std::vector<Tensor>& weights,
                           const Tensor& kept_offsets, int64_t capacity, const Tensor& y) override;
  void moe_grouped_swiglu_nt(const Tensor& x, const std::vector<Tensor>& gate_weights,
                             const std::vector<Tensor>& up_weights, const Tensor& kept_offsets,
                             int64_t capacity, const Tensor& y) override;

  // ---- appended in ABI 3: the author op set (issue 11); author_ops.cpp
  void mul(const Tensor& out, const Tensor& a, const Tensor& b) override;
  void sign(const Tensor& out, const Tensor& x) override;
  void clamp(const Tensor& out, const Tensor& x, float lo, float hi) override;
  void add_scalar(const Tensor& out, const Tensor& x, float alpha) override;
  void activation_forward(Activation act, const Tensor& x, const Tensor& y) override;
  void activation_backward(Activation act, const Tensor& dy, const Tensor& x,
                           const Tensor& dx) override;
  void sgd_momentum_update(const Tensor& param, const Tensor& grad, const Tensor& momentum,
                           const MomentumStep& step) override;
  void lion_update(const Tensor& param, const Tensor& grad, const Tensor& m,
                   const MomentumStep& step) override;

  // ---- appended in ABI 3: device sampling (issue 10); sampling.cpp
  void temperature_rows(const Tensor& logits, double temperature) override;
  void top_k_filter_rows(const Tensor& logits, int64_t k) override;
  void top_p_filter_rows(const Tensor& logits, double p) override;
  void min_p_filter_rows(const Tensor& logits, double p) override;
  void repetition_penalty_rows(const Tensor& logits, const Tensor& history, const Tensor& lengths,
                               float penalty) override;
  void sample_rows(const Tensor& logits, uint64_t seed, int64_t step, const Tensor& step_device,
                   bool argmax, const Tensor& ids) override;
  void append_tokens(const Tensor& history, const Tensor& lengths, const Tensor& ids,
                     const Tensor& step) override;
  // ABI 4 (device_memory in cpu_backend.cpp, rope_kv_append in decode_ops.cpp, moe_combine_rows in
  // gather_loss.cpp)
  std::optional<DeviceMemory> device_memory() const override;
  void rope_kv_append(const Tensor& qkv, const Tensor& positions, int64_t n_heads,
                      int64_t n_kv_heads, int64_t head_dim, float base, const Tensor& k_cache,
                      const Tensor& v_cache, int64_t capacity, const Tensor& cache_len_device,
                      const Tensor& q_out) override;
  void moe_combine_rows(const Tensor& src, const Tensor& token, const Tensor& slot,
                        const Tensor& gate, const Tensor& dst) override;
  void add_rmsnorm(const Tensor& x, const Tensor& residual, const Tensor& weight, float eps,
                   const Tensor& sum, const Tensor& y) override;
  void moe_route_padded(const Tensor& x, const Tensor& weight, int64_t top_k, bool renormalize,
                        int64_t capacity, const Tensor& expert_index, const Tensor& gate,
                        const Tensor& token, const Tensor& slot, const Tensor& offsets,
                        const Tensor& load) override;  // moe_dispatch.cpp

 private:
  // cos/sin of pos * base^(-2i/D) for pos in [0, positions), i in [0, D/2), computed in double
  // and kept across calls: training re-uses the same few hundred positions every step.
  struct RopeTable {
    int64_t head_dim = 0;
    float base = 0.0f;
    int64_t positions = 0;
    std::vector<float> cos;  // (positions, D/2)
    std::vector<float> sin;  // (positions, D/2)
  };
  // The table for (head_dim, base) covering [0, max_position]; null when that is too large to
  // cache (callers then compute the angles directly).
  const RopeTable* rope_table(int64_t head_dim, float base, int64_t max_position);

  int threads_ = 0;  // the option as given; 0 = runtime default
  std::vector<RopeTable> rope_tables_;
  // Freed blocks kept for reuse by size class (see cpu_backend.cpp); shared with the deleters of
  // the storage it hands out, so it outlives the backend while tensors do.
  std::shared_ptr<BlockCache> cache_;
};

}  // namespace nnkit::cpu
