// Purpose: backend/cuda, the fp32 CUDA implementation of nnkit::Backend: cuBLAS for matrix
// products, one kernel file per idea (elementwise, norm_activation, softmax_topk, rope,
// attention, gather_loss, optimizer) for the rest.
// Execution: every op is enqueued on the backend's own non-blocking stream and returns at once;
// copy_to_host and synchronize wait for the stream. Results are deterministic: no op uses
// floating-point atomics (scatter_add_rows sorts by destination first, reductions use fixed
// trees), so a run repeats bit for bit on the same GPU.
// Faults: index-carrying ops (gather_rows, scatter_add_rows, cross-entropy targets) cannot throw
// from a kernel. An out-of-range index is skipped and recorded in a device-side fault word; the
// next synchronize() or copy_to_host() reads it and throws a ShapeError naming the op, the index
// and the valid range, instead of corrupting memory.
// Ownership: tensors from empty() hold device memory from a per-backend cache of freed blocks
// (by size class, stream-ordered reuse, bounded); the cache is shared with the storage deleters,
// so tensors may outlive the backend object. The CUDA context, stream and cuBLAS handle live as
// long as the backend.
// Thread-safety: one thread drives a backend (the Backend contract).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_set>

#include "../common/op_checks.h"
#include "nnkit/backend.h"
#include "op_profiler.h"

typedef struct cublasContext* cublasHandle_t;

namespace nnkit::cuda {

class DeviceBlockCache;  // cuda_backend.cpp
class HostReadbacks;     // host_copies.cpp
class HostUploads;       // host_copies.cpp
class LtGemm;            // gemm_lt.cpp

// Where a kernel records the first out-of-range index it met (device memory, see above).
struct DeviceFault {
  int32_t op;  // FaultOp + 1; 0 = no fault
  int32_t pad;
  int64_t index;  // the offending value
  int64_t limit;  // valid range [0, limit)
  int64_t row;    // where it was found
};

// The kernel modules only decoding uses, loaded when the backend starts: CUDA's lazy loading
// would load each at its first launch, inside the first decode step (6.2 ms of the first step on
// the H200, bench/RESULTS.md session 17). One per .cu file; NNKIT_CUDA_PRELOAD=0 leaves them to
// lazy loading (to compare on one machine).
void load_attention_decode_kernels();
void load_route_decode_kernels();
void load_experts_decode_kernels();
void load_norm_gemm_decode_kernels();

// Zeroed arrival counters attention_decode's blocks count themselves on (the last one of a
// group combines and resets its counter): one per (sequence, KV-head tile) of one call.
inline constexpr int64_t kDecodeArrivalCounters = 4096;

// Properties of the backend's device that kernels size their launches by, queried once.
struct DeviceLimits {
  int sms = 0;                 // streaming multiprocessors
  int shared_optin_bytes = 0;  // dynamic shared memory one block may opt into
};

enum class FaultOp : int32_t {
  kGatherRows = 0,
  kScatterAddRows = 1,
  kCrossEntropy = 2,
  kMoeSort = 3,
  kKvCacheAppend = 4,  // index = cache_len + new rows, limit = capacity + 1
};

class CudaBackend final : public Backend {
 public:
  // `device` is the CUDA device index; `tf32` lets cuBLAS use TF32 tensor cores for fp32
  // products (faster, ~1e-3 relative error; off by default so results match the CPU backend).
  // `compute_dtype` (the `precision` option): kBF16, kF16 or kF32, what activations and the
  // weights' compute copies use (see docs/cuda.md).
  CudaBackend(int device, bool tf32, DType compute_dtype);
  ~CudaBackend() override;

  // ---- device and memory (cuda_backend.cpp) -------------------------------------------------
  Device device() const override { return Device{DeviceType::kCuda, device_}; }
  Tensor empty(const Shape& shape, DType dtype = DType::kF32) override;
  void copy_from_host(const Tensor& dst, const void* src) override;
  void copy_to_host(void* dst, const Tensor& src) override;
  void copy(const Tensor& dst, const Tensor& src) override;
  void synchronize() override;
  int threads() const override { return 1; }

  // ---- initialisation and elementwise (elementwise.cu) --------------------------------------
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

  // ---- normalisation and activations (norm_activation.cu, softmax_topk.cu) ------------------
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

  // ---- positions and attention (rope.cu, attention.cu) --------------------------------------
  void rope(const Tensor& x, const Tensor& positions, int64_t n_heads, int64_t head_dim, float base,
            bool inverse) override;
  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& kv_start,
                         const Tensor& out, const Tensor& lse,
                         const AttentionShape& shape) override;
  void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& kv_start, const Tensor& out, const Tensor& lse,
                          const Tensor& dq, const Tensor& dk, const Tensor& dv,
                          const AttentionShape& shape) override;

  // ---- gather / scatter and losses (gather_loss.cu) -----------------------------------------
  void gather_rows(const Tensor& src, const Tensor& index, const Tensor& dst) override;
  void scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& weight,
                        const Tensor& dst) override;
  void cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                             const Tensor& losses) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, float scale,
                              const Tensor& dlogits) override;

  // ---- optimizer (optimizer.cu) -------------------------------------------------------------
  void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                    const AdamWStep& step) override;

  // ---- appended in ABI 2 (compute dtype, conversions, host reads, MoE dispatch, fused AdamW) ---
  DType compute_dtype() const override { return compute_dtype_; }
  void convert(const Tensor& dst, const Tensor& src) override;     // elementwise.cu
  void copy_to_host_async(void* dst, const Tensor& src) override;  // host_copies.cpp
  void await_host_copies() override;                               // host_copies.cpp
  void moe_sort_by_expert(const Tensor& expert_index, int64_t n_experts, int64_t top_k,
                          int64_t capacity, const Tensor& gate, const Tensor& token,
                          const Tensor& slot, const Tensor& offsets,
                          const Tensor& load) override;  // moe_dispatch.cu
  void sum_squares_multi(const std::vector<Tensor>& xs,
                         const Tensor& out) override;  // optimizer.cu
  void adamw_update_multi(const std::vector<AdamWTensor>& tensors, const AdamWStep& step,
                          const Tensor& grad_sum_squares,
                          float max_grad_norm) override;  // optimizer.cu
  void scatter_add_columns(const Tensor& src, const Tensor& index,
                           const Tensor& dst) override;  // scatter_columns.cu
  bool begin_capture() override;                         // cuda_backend.cpp
  int64_t end_capture() override;                        // cuda_backend.cpp
  void abort_capture() override;                         // cuda_backend.cpp
  void replay(int64_t graph) override;                   // cuda_backend.cpp
  void release_graph(int64_t graph) override;            // cuda_backend.cpp
  // The `cuda_graphs` option (profiling with NNKIT_CUDA_PROFILE=1 turns capture off: the
  // per-op events cannot be recorded inside a graph).
  void set_graphs_enabled(bool enabled) { graphs_enabled_ = enabled && profiler_ == nullptr; }

  // ---- appended in ABI 3: static-shape MoE --------------------------------------------------
  bool captures() const override { return graphs_enabled_; }
  void moe_sort_by_expert_padded(const Tensor& expert_index, int64_t n_experts, int64_t top_k,
                                 int64_t capacity, const Tensor& gate, const Tensor& token,
                                 const Tensor& slot, const Tensor& offsets,
                                 const Tensor& load) override;       // moe_dispatch.cu
  void logsumexp_rows(const Tensor& x, const Tensor& out) override;  // softmax_topk.cu
  // device-resident decoding (decode_ops.cu)
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

  // ---- appended in ABI 3: the author op set (issue 11); author_ops.cu
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

  // ---- appended in ABI 3: device sampling (issue 10); sampling.cu
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
  // ABI 4 (device_memory in cuda_backend.cpp, rope_kv_append in rope.cu, moe_combine_rows in
  // gather_loss.cu)
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
                        const Tensor& load) override;  // moe_route_decode.cu
  // ABI 6 (moe_experts_decode.cu)
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
                           const Tensor& out) override;  // norm_gemm_decode.cu
  void attention_decode_rope(const Tensor& qkv, const Tensor& positions, float base,
                             const Tensor& k_cache, const Tensor& v_cache,
                             const Tensor& cache_len_device, const Tensor& kv_start,
                             const Tensor& kv_len_device, const Tensor& out,
                             const AttentionShape& shape) override;  // attention_decode.cu

  // ---- for the kernel files -----------------------------------------------------------------
  cudaStream_t stream() const { return stream_; }
  DeviceFault* fault() const { return fault_; }
  const DeviceLimits& limits() const { return limits_; }
  // True the first time it is asked about `kernel` (per backend, hence per device): kernels that
  // opt into more than 48 KB of shared memory set that attribute once, not on every launch.
  bool first_launch_of(const void* kernel) { return configured_kernels_.insert(kernel).second; }
  // Scratch device memory of at least `bytes`, valid until the next op (stream-ordered reuse).
  Tensor scratch(size_t bytes) { return empty({static_cast<int64_t>(bytes)}, DType::kU8); }

 private:
  // Throws the fault copied to fault_host_ by the last drain, if any, and clears it.
  void raise_fault();
  // moe_route_padded, and add_rmsnorm_moe_route_padded when `norm` is set (moe_route_decode.cu).
  struct RouteNorm {
    const Tensor& residual;
    const Tensor& weight;
    float eps;
    const Tensor& sum;
    const Tensor& normed;
  };
  void route_padded(const char* op, const Tensor& x, const RouteNorm* norm, const Tensor& weight,
                    int64_t top_k, bool renormalize, int64_t capacity, const Tensor& expert_index,
                    const Tensor& gate, const Tensor& token, const Tensor& slot,
                    const Tensor& offsets, const Tensor& load);

  int device_ = 0;
  DType compute_dtype_ = DType::kF32;
  void* cublas_workspace_ = nullptr;  // device memory cuBLAS(Lt) may use for split-K
  bool graphs_enabled_ = false;
  bool capturing_ = false;               // between begin_capture and end/abort_capture
  std::vector<cudaGraphExec_t> graphs_;  // by id; null once released
  // Throws when called while recording a graph (ops that wait for or copy from the host).
  void refuse_while_capturing(const char* op) const;
  std::unique_ptr<LtGemm> lt_gemm_;           // bf16/fp16 products (gemm_lt.cpp)
  std::unique_ptr<HostReadbacks> readbacks_;  // copy_to_host_async staging (host_copies.cpp)
  std::unique_ptr<HostUploads> uploads_;      // copy_from_host staging (host_copies.cpp)
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  DeviceFault* fault_ = nullptr;       // device memory, one record
  DeviceFault* fault_host_ = nullptr;  // pinned host copy, refreshed by every synchronize()
  // 2 x kDecodeArrivalCounters zeroed counters: attention_decode's, then the expert block's
  // folded combine (moe_swiglu_experts_padded).
  int32_t* decode_arrivals_ = nullptr;
  DeviceLimits limits_;
  std::unordered_set<const void*> configured_kernels_;
  std::unique_ptr<OpProfiler> profiler_;  // null unless NNKIT_CUDA_PROFILE=1
  std::shared_ptr<DeviceBlockCache> cache_;
};

inline constexpr backend_common::OpChecks kChecks{"backend/cuda", DeviceType::kCuda};

// The first element as a typed device pointer (the tensor has been checked).
template <typename T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.raw());
}

}  // namespace nnkit::cuda
