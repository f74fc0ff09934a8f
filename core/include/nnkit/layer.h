// Purpose: the Module contract shared by every trainable component (norms, attention, FFNs, MoE
// routers and experts): named parameters, forward that saves what backward needs, backward that
// returns dx and *accumulates* (+=) parameter gradients, and an incremental (KV-cache) mode.
// Ownership: a layer owns its Parameter descriptors and, after forward(training), the activations
// it saved; it does not own the Backend (ForwardContext points to it). Parameter tensors are
// allocated by the model builder after construction, so a 6.9B model can be described (and its
// parameters counted) without allocating anything.
// Thread-safety: none; one thread drives a layer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nnkit/backend.h"
#include "nnkit/component.h"
#include "nnkit/tensor.h"

namespace nnkit {

class Communicator;

struct Parameter {
  std::string name;  // relative to the owner, HF style: "q_proj.weight"
  Shape shape;
  float init_std = 0.02f;   // Normal(0, init_std) when > 0 ...
  float init_value = 0.0f;  // ... else filled with init_value (norm weights: 1)
  bool decay = true;        // AdamW weight decay applies (false for norms/embeddings by default)
  bool is_embedding = false;
  Tensor value;    // (shape) f32 master weights, allocated by the model builder; undefined in
                   // an inference-only model for a parameter that has a compute copy (below)
  Tensor grad;     // (shape) f32, zeroed between steps (by the fused optimizer or the trainer)
  Tensor compute;  // (shape) Backend::compute_dtype() copy of value when that is not f32 (bf16
                   // / f16 on CUDA), else undefined; the model builder keeps it in step with value
  // ABI 6: set by a layer that reads `value` (the f32 master) outside training too, e.g. a
  // router computing its logits from f32 weights. An inference-only model
  // (Transformer::allocate_inference_only) then keeps the master besides the compute copy;
  // without it, a parameter that has a compute copy holds only that copy there.
  bool value_read_at_inference = false;
};

// Per-call facts shared by every layer of one forward/backward pass.
struct ForwardContext {
  Backend* backend = nullptr;
  int64_t batch = 0;          // B
  int64_t seq = 0;            // T (rows of x are B*T, batch-major)
  Tensor positions;           // (B*T) i32 absolute positions for RoPE
  Tensor kv_start;            // (B) i32 first valid key per sequence (left padding) or undefined
  bool training = false;      // save activations for backward
  bool use_kv_cache = false;  // incremental decoding: append K/V at cache_len, attend to the cache
  int64_t cache_len = 0;      // tokens already in the KV cache
  float loss_scale = 1.0f;    // d(objective)/d(this pass's loss); auxiliary losses scale by it
  // ABI 3: the pass is (or will be) recorded in a CUDA Graph, so no layer may size its work from
  // a host read of device data. Routers with a capacity then return the padded Routing layout.
  bool static_shapes = false;
  // ABI 3, device-resident decoding: when defined, (1) i32 device tensors holding the tokens
  // already in the KV cache and cache_len + seq. A step recorded once and replayed for every
  // token reads its lengths from here (Backend::kv_cache_append, attention_decode); cache_len
  // then only bounds what the host checks. Attention layers must use these when defined.
  Tensor cache_len_device;
  Tensor kv_len_device;
  // ABI 4, data-parallel training (docs/parallel.md): the job's communicator when it has more
  // than one rank, else null. A training pass sees only its rank's rows; a layer whose loss is
  // not a mean over tokens (a router's load-balancing term) sums its batch statistics across
  // ranks with it, every rank in the same order. Never used outside training passes.
  Communicator* comm = nullptr;
};

class NNKIT_API Layer : public Component {
 public:
  ~Layer() override;

  std::vector<Parameter>& parameters() { return params_; }
  const std::vector<Parameter>& parameters() const { return params_; }
  int64_t parameter_count() const;
  // Parameters touched per token (MoE experts count only top_k of n_experts).
  virtual int64_t active_parameter_count() const { return parameter_count(); }

  // x: (B*T, C) -> y: (B*T, C). Saves activations when ctx.training.
  virtual Tensor forward(ForwardContext& ctx, const Tensor& x) = 0;
  // dy: (B*T, C) -> dx: (B*T, C); parameter grads accumulate. Needs the preceding forward.
  virtual Tensor backward(ForwardContext& ctx, const Tensor& dy) = 0;
  // Drops saved activations (activation checkpointing calls this after forward).
  virtual void release_saved() {}

 protected:
  // Returns the index of the new parameter; call only from the constructor.
  size_t add_parameter(std::string name, Shape shape, float init_std, float init_value = 0.0f,
                       bool decay = true);
  // The weights forward and backward compute with: the low-precision compute copy when the
  // backend has one, else the f32 master. Defined in every model, inference-only ones included.
  // Components that must compute in f32 read params_[index].value directly; one that does so
  // outside training sets params_[index].value_read_at_inference in its constructor, since an
  // inference-only model keeps `value` only for such parameters.
  const Tensor& value(size_t index) const {
    const Parameter& p = params_[index];
    return p.compute.defined() ? p.compute : p.value;
  }
  const Tensor& grad(size_t index) const { return params_[index].grad; }

  std::vector<Parameter> params_;
};

// `norm/*`: per-token normalisation with a learned scale.
class NNKIT_API Norm : public Layer {
 public:
  ~Norm() override;
  // ABI 4: the residual add in front of a norm. sum <- x + residual (a new (N, C) tensor in x's
  // dtype: the residual stream from here on), then returns forward(ctx, sum). A norm may fuse the
  // two outside training (norm/rmsnorm does, with Backend::add_rmsnorm: one launch per decode
  // step and norm); the default runs Backend::add and forward().
  virtual Tensor forward_with_residual(ForwardContext& ctx, const Tensor& x, const Tensor& residual,
                                       Tensor& sum);
  // ABI 7: a norm that is y = x * rsqrt(mean(x^2) + eps) * weight (RMSNorm) says so: weight (the
  // tensor products read, see Layer::value) and eps, so that the layer after it may fold the norm
  // into its first product (Attention::forward_with_input_norm). Default: not an RMSNorm.
  virtual bool rms_parameters(Tensor& weight, float& eps) const {
    (void)weight;
    (void)eps;
    return false;
  }
};

// `attention/*`: causal self-attention with its own KV cache for decoding.
class NNKIT_API Attention : public Layer {
 public:
  ~Attention() override;
  // Allocates (or clears) the KV cache for `batch` sequences of up to `capacity` tokens.
  virtual void init_cache(Backend& backend, int64_t batch, int64_t capacity) = 0;
  virtual void clear_cache() = 0;
  // Bytes the cache holds per token (all layers' caches add up to the decoding footprint).
  virtual int64_t cache_bytes_per_token() const = 0;
  // The RoPE base in use (after NTK scaling); reported by `nnkit validate`.
  virtual double rope_base() const = 0;
  // ABI 7: forward(ctx, norm.forward_with_residual(ctx, x, residual, sum)) with the norm in front
  // of this layer, which an attention may fold into its first product outside training
  // (attention/mqa does with an RMSNorm while decoding: Backend::add_rmsnorm_gemm_nt). sum is set
  // to x + residual (the residual stream) either way. Default: exactly the two calls.
  virtual Tensor forward_with_input_norm(ForwardContext& ctx, const Tensor& x,
                                         const Tensor& residual, Norm& norm, Tensor& sum);
};

// Statistics of one layer's auxiliary losses and expert load, read after forward. On a device
// backend reading them copies from the device: the trainer asks on logged steps only.
struct AuxStats {
  double aux_loss = 0.0;    // unweighted load-balancing loss of this layer
  double aux_weight = 0.0;  // its weight in the objective
  double z_loss = 0.0;      // unweighted router z-loss (0 when disabled)
  double z_weight = 0.0;
  double dropped_fraction = 0.0;        // token-slots dropped by the capacity limit
  std::vector<double> expert_fraction;  // f_i: share of routed slots per expert
};

// `ffn/*` (dense) and the core's MoE block both present this interface to a transformer block.
class NNKIT_API FeedForward : public Layer {
 public:
  ~FeedForward() override;
  // Valid after forward; dense FFNs have none.
  virtual bool has_aux_stats() const { return false; }
  virtual AuxStats aux_stats() const { return {}; }
  // ABI 8: forward(ctx, norm.forward_with_residual(ctx, x, residual, sum)) with the norm in front
  // of this layer, which a feed-forward may fold into its first op outside training (the core's
  // MoE layer passes it to its router: Router::route_with_input_norm). sum is set to
  // x + residual (the residual stream) either way. Default: exactly the two calls.
  virtual Tensor forward_with_input_norm(ForwardContext& ctx, const Tensor& x,
                                         const Tensor& residual, Norm& norm, Tensor& sum);
};

// The router's decision for N tokens and its dispatch, on the backend's device. The router
// builds the dispatch with Backend::moe_sort_by_expert; the only host data is the per-expert row
// offsets, which size the experts' matrix products (one small copy per MoE layer).
struct Routing {
  int64_t n_tokens = 0;
  int64_t top_k = 0;
  int64_t n_experts = 0;
  Tensor expert_index;  // (N, k) i32; -1 marks a slot dropped by the capacity limit
  Tensor gate;          // (N, k) f32 combine weights (0 for dropped slots)
  // The kept (token, slot) pairs grouped by expert: rows [offsets[e], offsets[e+1]) of token and
  // slot are expert e's, in ascending slot order. n_routed = offsets[E] = M.
  int64_t n_routed = 0;
  Tensor token;                  // (N*k) i32 token row of each routed slot; first M rows valid
  Tensor slot;                   // (N*k) i32 flat slot n*k + rank (index into the (N*k) gates)
  std::vector<int64_t> offsets;  // (E + 1) host copy of the per-expert row offsets
  // ABI 3, the static layout (ctx.static_shapes with a capacity): expert e owns the fixed rows
  // [e * capacity, (e + 1) * capacity), offsets[e] = e * capacity, n_routed = E * capacity, and
  // rows an expert did not fill are padding with token -1 and slot -1 (Backend::gather_rows
  // reads them as zero rows, scatter_add_rows skips them). 0 = the compact layout above.
  int64_t padded_capacity = 0;
  // The padded layout's (E + 1) i32 compact offsets of the kept slots on the device (expert
  // e's block holds kept_offsets[e + 1] - kept_offsets[e] rows), for products that read their
  // row counts on the device (Backend::moe_grouped_gemm_nt). Undefined in the compact layout.
  Tensor kept_offsets;
};

// `moe/<router>`: scores experts per token. Its parameters are named "gate.weight" (HF Mixtral).
class NNKIT_API Router : public Layer {
 public:
  ~Router() override;
  virtual int64_t top_k() const = 0;
  virtual int64_t n_experts() const = 0;
  virtual Routing route(ForwardContext& ctx, const Tensor& x) = 0;
  // dgate: (N, k) gradient w.r.t. Routing::gate -> dx (N, C). Adds the auxiliary losses' gradient
  // (scaled by ctx.loss_scale) and accumulates the router weight gradient.
  virtual Tensor backward_routing(ForwardContext& ctx, const Tensor& dgate) = 0;
  virtual AuxStats aux_stats() const = 0;
  // ABI 3: true when route() under ctx.static_shapes gives shapes that do not depend on the data
  // (a capacity limit, so the padded layout), which lets the step be recorded in a CUDA Graph.
  virtual bool has_static_shapes() const { return false; }
  // ABI 8: route(ctx, normed) with normed = norm.forward_with_residual(ctx, x, residual, sum)
  // (sum and normed are set: the residual stream and the experts' input), which a router may
  // compute in one op outside training (moe/topk does with an RMSNorm while decoding:
  // Backend::add_rmsnorm_moe_route_padded). Default: exactly the two calls.
  virtual Routing route_with_input_norm(ForwardContext& ctx, const Tensor& x,
                                        const Tensor& residual, Norm& norm, Tensor& sum,
                                        Tensor& normed);
  // Layer::forward/backward are not used for routers.
  Tensor forward(ForwardContext& ctx, const Tensor& x) override;
  Tensor backward(ForwardContext& ctx, const Tensor& dy) override;
};

// `moe/<experts>`: the expert FFNs. Parameters "experts.<e>.w1.weight" etc. (HF Mixtral).
// ABI 5: created with ModelDims::expert_begin/end (expert parallelism), it holds only that block
// of experts; n_experts() still counts all of them, and forward_routed receives a Routing over
// the held block (Routing::n_experts = the block's size, offsets per held expert).
class NNKIT_API Experts : public Layer {
 public:
  ~Experts() override;
  // All experts of the layer, also when this instance holds a block of them.
  virtual int64_t n_experts() const = 0;
  // Parameters of one expert (for the active-parameter count).
  virtual int64_t parameters_per_expert() const = 0;
  // x: (N, C) -> y: (N, C) = sum_k gate[n, k] * expert_{index[n, k]}(x[n]).
  virtual Tensor forward_routed(ForwardContext& ctx, const Tensor& x, const Routing& routing) = 0;
  // dy: (N, C) -> dx (N, C); writes dgate (N, k) (allocated by the callee).
  virtual Tensor backward_routed(ForwardContext& ctx, const Tensor& dy, Tensor& dgate) = 0;
  Tensor forward(ForwardContext& ctx, const Tensor& x) override;
  Tensor backward(ForwardContext& ctx, const Tensor& dy) override;
};

}  // namespace nnkit
