// Purpose: `moe/topk`: the softmax top-k router (Switch / Mixtral). logits = x W^T over all E
// experts, probs = softmax(logits), each token keeps its k most probable experts with their
// probabilities as combine gates (renormalised to sum 1 when `renormalize`, as Mixtral does), and
// an optional capacity limit drops the slots an overloaded expert cannot take (index -1, gate 0;
// the residual carries the token). Auxiliary losses, both from the full softmax BEFORE any
// dropping:
//   load balancing (Switch): L_aux = E * sum_i f_i * P_i, f_i = share of the N*k routed slots that
//     chose expert i, P_i = mean_n probs[n, i];
//   z-loss (ST-MoE): L_z = mean_n logsumexp(logits[n])^2.
// Everything stays on the device: routing, the sort by expert (Backend::moe_sort_by_expert, which
// also applies the capacity), gates, the load statistics and the z-loss. The host reads the
// per-expert row offsets (one small copy per layer, which the experts' products need) and, when
// asked through aux_stats() on logged steps, the statistics. Under ctx.static_shapes (a step
// recorded in a CUDA Graph) a capacity-limited router reads nothing at all: it returns the padded
// layout (Routing::padded_capacity), every expert a fixed block of `capacity` rows.
// Ownership: owns the gate parameter descriptor, the last route()'s statistics and, after a
// training route(), what backward_routing() needs (until the next route() or release_saved()).
// Thread-safety: none; one thread drives a layer.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "nnkit/communicator.h"
#include "nnkit/error.h"
#include "nnkit/layer.h"
#include "nnkit/plugin.h"

namespace nnkit::moe {
namespace {

class TopKRouter final : public Router {
 public:
  explicit TopKRouter(const CreateArgs& args)
      : top_k_(args.options.get_int("top_k")),
        renormalize_(args.options.get_bool("renormalize")),
        aux_loss_weight_(args.options.get_float("aux_loss_weight")),
        z_loss_weight_(args.options.get_float("z_loss_weight")),
        n_experts_(args.dims.n_experts),
        hidden_(args.dims.hidden_dim) {
    const Options& options = args.options;
    if (!options.is_null("capacity_factor")) {
      capacity_factor_ = options.get_float("capacity_factor");
      if (!(*capacity_factor_ > 0.0)) {
        options.fail("capacity_factor", "must be > 0 (null means dropless)");
      }
    }
    if (n_experts_ < 1) {
      throw ConfigError(options.component(), "the expert count must be known (got n_experts " +
                                                 std::to_string(n_experts_) + ")");
    }
    if (top_k_ < 1) options.fail("top_k", "must be >= 1");
    if (top_k_ > n_experts_) {
      options.fail("top_k", "(" + std::to_string(top_k_) + ") must not exceed n_experts (" +
                                std::to_string(n_experts_) + ")");
    }
    if (!(aux_loss_weight_ >= 0.0)) options.fail("aux_loss_weight", "must be >= 0");
    if (!(z_loss_weight_ >= 0.0)) options.fail("z_loss_weight", "must be >= 0");
    if (hidden_ <= 0) {
      throw ConfigError(options.component(),
                        "model hidden_dim must be set (got " + std::to_string(hidden_) + ")");
    }
    gate_ = add_parameter("gate.weight", {n_experts_, hidden_}, 0.02f);
  }

  int64_t top_k() const override { return top_k_; }
  int64_t n_experts() const override { return n_experts_; }
  bool has_static_shapes() const override { return capacity_factor_.has_value(); }
  void release_saved() override { saved_ = Saved{}; }

  Routing route(ForwardContext& ctx, const Tensor& x) override {
    Backend& backend = *ctx.backend;
    NNKIT_CHECK_SHAPE(
        x.rank() == 2 && x.dim(1) == hidden_, id(),
        "route expects x of shape (N, " + std::to_string(hidden_) + "), got " + describe(x));
    const int64_t n_tokens = x.dim(0);
    const int64_t n_slots = n_tokens * top_k_;
    stats_backend_ = &backend;

    if (is_decode_step(ctx, n_tokens)) return route_decode_step(backend, x, nullptr);
    const bool full = !ctx.use_kv_cache && n_tokens > 0;

    // Logits, probabilities, gates and statistics are f32. The product reads x and the weight in
    // the compute dtype (bf16 x bf16 accumulating into f32 logits, as autocast does): an f32
    // product of this thin shape (N x 768 x 16) ran at ~2 ms a layer on the H200 in cuBLAS's
    // pedantic mode, 3.7% of a training step, for no gain the f32 gates do not already give.
    Tensor logits = backend.empty({n_tokens, n_experts_});  // (N, E) f32 = x W^T
    backend.gemm(x, false, value(gate_), true, logits);
    // The full softmax feeds the statistics and backward only: decoding with renormalised
    // gates skips it (one launch less per layer and token).
    const bool need_probs = ctx.training || full || !renormalize_;
    Tensor probs = backend.empty({n_tokens, n_experts_});  // (N, E)
    if (need_probs) backend.softmax_rows(logits, probs);

    // Top-k. Renormalised gates p_i / sum_kept p_j equal a softmax over the kept logits, so they
    // come from the top-k logits (softmax is monotonic: the same experts win).
    Tensor chosen = backend.empty({n_tokens, top_k_}, DType::kI32);  // (N, k) before dropping
    Tensor kept_gate = backend.empty({n_tokens, top_k_});            // (N, k) before dropping
    if (renormalize_) {
      Tensor top_logits = backend.empty({n_tokens, top_k_});
      backend.topk_rows(logits, top_k_, top_logits, chosen);
      backend.softmax_rows(top_logits, kept_gate);
    } else {
      backend.topk_rows(probs, top_k_, kept_gate, chosen);
    }

    Routing routing;
    routing.n_tokens = n_tokens;
    routing.top_k = top_k_;
    routing.n_experts = n_experts_;
    // Capacity: an expert takes at most `capacity` slots in slot order (token by token, rank
    // order within a token); the sort drops the rest (index -1, gate 0; the residual carries
    // the token). Dropless: nothing is dropped and the gates are the kept gates.
    // An expert never takes more than N slots (a token's k experts are distinct), so the
    // capacity is clamped to N: the same drops, and no padded block larger than it can fill.
    const int64_t capacity = capacity_for(n_tokens);
    // Decoding (KV cache) under static shapes takes the padded layout even when dropless: an
    // expert takes at most N slots, so blocks of N rows drop nothing.
    int64_t block_rows = capacity;
    if (ctx.static_shapes && ctx.use_kv_cache && capacity < 0) block_rows = n_tokens;
    const bool padded = block_rows >= 1 && ctx.static_shapes;
    // The sort rewrites dropped slots in place; `chosen` must survive for backward (training).
    if (ctx.training) {
      routing.expert_index = backend.empty({n_tokens, top_k_}, DType::kI32);
      backend.copy(routing.expert_index, chosen);
    } else {
      routing.expert_index = chosen;
    }
    if (capacity >= 0) {
      routing.gate = backend.empty({n_tokens, top_k_});
      backend.copy(routing.gate, kept_gate);
    } else {
      routing.gate = kept_gate;
    }
    const int64_t rows = padded ? n_experts_ * block_rows : n_slots;
    routing.token = backend.empty({rows}, DType::kI32);
    routing.slot = backend.empty({rows}, DType::kI32);
    Tensor offsets = backend.empty({n_experts_ + 1}, DType::kI32);
    Tensor load = backend.empty({n_experts_});  // f_i, before dropping
    if (padded) {
      backend.moe_sort_by_expert_padded(routing.expert_index.view({n_slots}), n_experts_, top_k_,
                                        block_rows, routing.gate.view({n_slots}), routing.token,
                                        routing.slot, offsets, load);
    } else if (n_slots > 0) {
      backend.moe_sort_by_expert(routing.expert_index.view({n_slots}), n_experts_, top_k_, capacity,
                                 capacity >= 0 ? routing.gate.view({n_slots}) : Tensor(),
                                 routing.token, routing.slot, offsets, load);
    } else {
      backend.fill(offsets, 0.0f);
      backend.fill(load, 0.0f);
    }
    if (ctx.training && ctx.comm != nullptr && ctx.comm->size() > 1) {
      // Data parallelism: f_i of the global batch (every rank routes as many slots), so that
      // the load-balancing loss and its gradient are the one-rank ones (P_i stays a mean over
      // this rank's tokens, which the trainer's 1/ranks scaling averages).
      ctx.comm->all_reduce_sum(backend, load);
      backend.scale(load, 1.0f / static_cast<float>(ctx.comm->size()));
    }
    // The one host read of the layer (compact layout): the per-expert row counts size the
    // experts' products. The padded layout's blocks are known without it.
    std::vector<int32_t> host_offsets(static_cast<size_t>(n_experts_) + 1, 0);
    if (n_slots > 0 && !padded) backend.copy_to_host_async(host_offsets.data(), offsets);

    // Statistics of the full softmax, before any capacity dropping, kept on the device until
    // aux_stats() is asked (logged steps). Decoding (KV cache) has no loss to balance.
    stats_ = DeviceStats{};
    stats_.n_slots = n_slots;
    Tensor row_lse;  // (N) logsumexp(logits[n]), only with the z-loss
    if (full && z_loss_weight_ > 0.0) {
      row_lse = backend.empty({n_tokens});
      backend.logsumexp_rows(logits, row_lse);
    }
    if (full) stats_.values = device_statistics(backend, probs, load, row_lse);

    if (padded) {
      set_padded_layout(routing, offsets, block_rows);
    } else {
      backend.await_host_copies();
      routing.offsets.assign(host_offsets.begin(), host_offsets.end());
      routing.n_routed = routing.offsets.back();
      stats_.dropped = n_slots - routing.n_routed;
    }

    release_saved();
    if (ctx.training && capacity >= 0) {
      // keep[slot] = 1 for the routed slots, 0 for the dropped ones, built on the device by
      // scattering ones to the routed slots (backward masks the gate gradient with it).
      saved_.keep_mask = backend.zeros({n_slots, 1});
      if (routing.n_routed > 0) {
        Tensor ones = backend.empty({routing.n_routed, 1});
        backend.fill(ones, 1.0f);
        backend.scatter_add_rows(ones, routing.slot.slice_rows(0, routing.n_routed), Tensor(),
                                 saved_.keep_mask);
      }
    }
    if (ctx.training) {
      saved_.x = x;
      saved_.probs = probs;
      saved_.kept_gate = kept_gate;
      saved_.chosen = chosen;
      saved_.load = load;
      saved_.row_lse = row_lse;
    }
    return routing;
  }

  // Slots an expert takes at most for n_tokens tokens, clamped to N (see route()); -1: dropless.
  int64_t capacity_for(int64_t n_tokens) const {
    if (!capacity_factor_) return -1;
    const double slots = static_cast<double>(n_tokens * top_k_);
    const auto capacity = static_cast<int64_t>(
        std::ceil(*capacity_factor_ * slots / static_cast<double>(n_experts_)));
    return std::min(capacity, n_tokens);
  }

  // While decoding, an RMSNorm in front folds into the router's op
  // (Backend::add_rmsnorm_moe_route_padded: one launch on CUDA where the norm and the router
  // took two).
  Routing route_with_input_norm(ForwardContext& ctx, const Tensor& x, const Tensor& residual,
                                Norm& norm, Tensor& sum, Tensor& normed) override {
    NormInput input;
    if (x.rank() != 2 || x.dim(1) != hidden_ || !is_decode_step(ctx, x.dim(0)) ||
        !norm.rms_parameters(input.weight, input.eps)) {
      return Router::route_with_input_norm(ctx, x, residual, norm, sum, normed);
    }
    NNKIT_CHECK_SHAPE(residual.shape() == x.shape() && residual.dtype() == x.dtype(), id(),
                      "route_with_input_norm expects the residual shaped like x " + describe(x) +
                          ", got " + describe(residual));
    Backend& backend = *ctx.backend;
    stats_backend_ = &backend;
    input.residual = &residual;
    input.sum = sum = backend.empty(x.shape(), x.dtype());
    input.normed = normed = backend.empty(x.shape(), x.dtype());
    return route_decode_step(backend, x, &input);
  }

  // A recorded decode step (KV cache, static shapes, inference): route_decode_step's one op.
  static bool is_decode_step(const ForwardContext& ctx, int64_t n_tokens) {
    return !ctx.training && ctx.use_kv_cache && ctx.static_shapes && n_tokens > 0;
  }

  // The norm folded into a decode step's router: normed = rmsnorm(x + residual) is routed.
  struct NormInput {
    const Tensor* residual = nullptr;
    Tensor weight, sum, normed;
    float eps = 0.0f;
  };

  // A recorded decode step (KV cache, static shapes, inference): the product, top-k, gates and
  // the padded sort in one backend op, into blocks of N rows (an expert takes at most N slots,
  // so nothing is dropped unless a capacity factor says so). No statistics: nothing to balance.
  // With `norm`, x is the norm's input and the op computes the norm first.
  Routing route_decode_step(Backend& backend, const Tensor& x, const NormInput* norm) {
    const int64_t n_tokens = x.dim(0);
    const int64_t capacity = capacity_for(n_tokens);
    const int64_t block_rows = capacity >= 0 ? capacity : n_tokens;
    Routing routing;
    routing.n_tokens = n_tokens;
    routing.top_k = top_k_;
    routing.n_experts = n_experts_;
    routing.expert_index = backend.empty({n_tokens, top_k_}, DType::kI32);
    routing.gate = backend.empty({n_tokens, top_k_});
    const int64_t rows = n_experts_ * block_rows;
    routing.token = backend.empty({rows}, DType::kI32);
    routing.slot = backend.empty({rows}, DType::kI32);
    Tensor offsets = backend.empty({n_experts_ + 1}, DType::kI32);
    Tensor load = backend.empty({n_experts_});
    if (norm != nullptr) {
      backend.add_rmsnorm_moe_route_padded(x, *norm->residual, norm->weight, norm->eps, norm->sum,
                                           norm->normed, value(gate_), top_k_, renormalize_,
                                           block_rows, routing.expert_index, routing.gate,
                                           routing.token, routing.slot, offsets, load);
    } else {
      backend.moe_route_padded(x, value(gate_), top_k_, renormalize_, block_rows,
                               routing.expert_index, routing.gate, routing.token, routing.slot,
                               offsets, load);
    }
    stats_ = DeviceStats{};
    stats_.n_slots = n_tokens * top_k_;
    set_padded_layout(routing, offsets, block_rows);
    release_saved();
    return routing;
  }

  // The padded layout's fixed blocks: expert e owns rows [e * block_rows, (e + 1) * block_rows);
  // the kept counts stay on the device (the dropped count is read with the statistics).
  void set_padded_layout(Routing& routing, const Tensor& kept_offsets, int64_t block_rows) {
    routing.padded_capacity = block_rows;
    routing.kept_offsets = kept_offsets;
    routing.offsets.resize(static_cast<size_t>(n_experts_) + 1);
    for (int64_t e = 0; e <= n_experts_; ++e) {
      routing.offsets[static_cast<size_t>(e)] = e * block_rows;
    }
    routing.n_routed = n_experts_ * block_rows;
    stats_.kept_offsets = kept_offsets;
  }

  Tensor backward_routing(ForwardContext& ctx, const Tensor& dgate) override {
    if (!saved_.x.defined()) {
      throw Error(id(), "backward_routing() needs a preceding route() in training mode");
    }
    Backend& backend = *ctx.backend;
    const int64_t n_tokens = saved_.x.dim(0);
    const int64_t n_slots = n_tokens * top_k_;
    NNKIT_CHECK_SHAPE(dgate.numel() == n_slots && dgate.dtype() == DType::kF32, id(),
                      "backward_routing expects dgate of shape (N, k) f32, got " + describe(dgate));

    // Forward read in reverse. gate = keep * kept_gate: dropped slots pass no gradient.
    Tensor dkept = dgate.view({n_tokens, top_k_});  // (N, k)
    if (saved_.keep_mask.defined()) {
      dkept = backend.empty({n_tokens, top_k_});
      backend.copy(dkept, dgate.view({n_tokens, top_k_}));
      backend.scale_rows(dkept.view({n_slots, 1}), saved_.keep_mask.view({n_slots}));
    }

    // Gate gradients land at the chosen (token, expert) entries of an (N, E) score matrix.
    Tensor dscores = backend.zeros({n_tokens, n_experts_});  // (N, E)
    Tensor dlogits;                                          // (N, E)
    if (renormalize_) {
      // kept_gate = softmax(kept logits): the gate path reaches the kept logits directly.
      Tensor dkept_logits = backend.empty({n_tokens, top_k_});
      backend.softmax_backward(saved_.kept_gate, dkept, dkept_logits);
      backend.scatter_add_columns(dkept_logits, saved_.chosen, dscores);
      dlogits = dscores;
      if (aux_loss_weight_ > 0.0) {
        Tensor dprobs = backend.zeros({n_tokens, n_experts_});
        add_aux_gradient(ctx, dprobs);
        backend.softmax_backward(saved_.probs, dprobs, dprobs);
        backend.add(dlogits, dlogits, dprobs);
      }
    } else {
      // kept_gate = probs[kept]: the gate path joins the aux path on probs, then the softmax.
      backend.scatter_add_columns(dkept, saved_.chosen, dscores);
      if (aux_loss_weight_ > 0.0) add_aux_gradient(ctx, dscores);
      dlogits = backend.empty({n_tokens, n_experts_});
      backend.softmax_backward(saved_.probs, dscores, dlogits);
    }
    if (z_loss_weight_ > 0.0) add_z_loss_gradient(ctx, dlogits);

    // logits = x W^T: dW += dlogits^T x (accumulates, f32); dx = dlogits W, in x's dtype. The
    // products read dlogits in x's dtype (the same rounding autocast applies).
    Tensor dlogits_compute = dlogits;
    if (saved_.x.dtype() != DType::kF32) {
      dlogits_compute = backend.empty({n_tokens, n_experts_}, saved_.x.dtype());
      backend.convert(dlogits_compute, dlogits);
    }
    backend.gemm(dlogits_compute, true, saved_.x, false, grad(gate_), 1.0f, 1.0f);
    Tensor dx = backend.empty({n_tokens, hidden_}, saved_.x.dtype());
    backend.gemm(dlogits_compute, false, value(gate_), false, dx);
    return dx;
  }

  AuxStats aux_stats() const override {
    // Reads the device statistics of the last route() (a copy to the host: logged steps only).
    AuxStats out;
    out.aux_weight = aux_loss_weight_;
    out.z_weight = z_loss_weight_;
    out.expert_fraction.assign(static_cast<size_t>(n_experts_), 0.0);
    int64_t dropped = stats_.dropped;
    if (stats_.kept_offsets.defined() && stats_backend_ != nullptr) {
      std::vector<int32_t> offsets(static_cast<size_t>(n_experts_) + 1);
      stats_backend_->copy_to_host(offsets.data(), stats_.kept_offsets);
      dropped = stats_.n_slots - offsets.back();
    }
    out.dropped_fraction = stats_.n_slots > 0
                               ? static_cast<double>(dropped) / static_cast<double>(stats_.n_slots)
                               : 0.0;
    if (!stats_.values.defined() || stats_backend_ == nullptr) return out;
    std::vector<float> host(static_cast<size_t>(stats_.values.numel()));
    stats_backend_->copy_to_host(host.data(), stats_.values);
    for (size_t e = 0; e < out.expert_fraction.size(); ++e) out.expert_fraction[e] = host[e];
    out.aux_loss = host[2 * static_cast<size_t>(n_experts_)];
    out.z_loss = host[2 * static_cast<size_t>(n_experts_) + 1];
    return out;
  }

 private:
  struct Saved {
    Tensor x;          // (N, C) input, compute dtype
    Tensor probs;      // (N, E) softmax over all experts
    Tensor kept_gate;  // (N, k) gates before dropping
    Tensor chosen;     // (N, k) i32 chosen experts before dropping
    Tensor load;       // (E) f32 f_i (share of slots per expert, before dropping)
    Tensor keep_mask;  // (N*k, 1) f32 1 kept / 0 dropped; only with a capacity
    Tensor row_lse;    // (N) f32 logsumexp(logits[n]), only with the z-loss
  };

  // The last route()'s statistics: the device part read by aux_stats() on demand.
  struct DeviceStats {
    Tensor values;        // (2E + 2) f32: f_i (E), P_i (E), L_aux, L_z; undefined when not computed
    int64_t n_slots = 0;  // N*k
    int64_t dropped = 0;  // slots dropped by the capacity limit (compact layout)
    Tensor kept_offsets;  // (E + 1) i32 compact offsets of the kept slots (padded layout)
  };

  // [f (E), P (E), L_aux, L_z] on the device: P_i = mean_n probs[n, i] (Backend::sum_rows),
  // L_aux = E * <f, P>, L_z = mean_n lse_n^2 (0 without the z-loss).
  Tensor device_statistics(Backend& backend, const Tensor& probs, const Tensor& load,
                           const Tensor& row_lse) const {
    const int64_t n_tokens = probs.dim(0);
    Tensor values = backend.empty({2 * n_experts_ + 2});
    backend.copy(values.slice_rows(0, n_experts_), load);
    Tensor mean_prob = values.slice_rows(n_experts_, 2 * n_experts_).view({1, n_experts_});
    backend.sum_rows(probs, mean_prob, 1.0f / static_cast<float>(n_tokens), 0.0f);
    Tensor aux = values.slice_rows(2 * n_experts_, 2 * n_experts_ + 1);
    backend.row_dot(load.view({1, n_experts_}), mean_prob, aux);
    backend.scale(aux, static_cast<float>(n_experts_));
    Tensor z = values.slice_rows(2 * n_experts_ + 1, 2 * n_experts_ + 2);
    if (row_lse.defined()) {
      backend.row_dot(row_lse.view({1, n_tokens}), row_lse.view({1, n_tokens}), z);
      backend.scale(z, 1.0f / static_cast<float>(n_tokens));
    } else {
      backend.fill(z, 0.0f);
    }
    return values;
  }

  // dprobs[n, i] += aux_weight * loss_scale * E * f_i / N for every token n (f_i held constant,
  // the Switch convention), as a rank-1 update ones(N, 1) @ f(1, E) on the device.
  void add_aux_gradient(const ForwardContext& ctx, const Tensor& dprobs) const {
    Backend& backend = *ctx.backend;
    const int64_t n_tokens = dprobs.dim(0);
    const double factor = aux_loss_weight_ * ctx.loss_scale * static_cast<double>(n_experts_) /
                          static_cast<double>(n_tokens);
    Tensor ones = backend.empty({n_tokens, 1});
    backend.fill(ones, 1.0f);
    backend.gemm(ones, false, saved_.load.view({1, n_experts_}), false, dprobs,
                 static_cast<float>(factor), 1.0f);
  }

  // L_z = mean_n lse_n^2: dlogits[n, :] += z_weight * loss_scale * (2 lse_n / N) * probs[n, :].
  void add_z_loss_gradient(const ForwardContext& ctx, const Tensor& dlogits) const {
    Backend& backend = *ctx.backend;
    const int64_t n_tokens = dlogits.dim(0);
    const double factor = z_loss_weight_ * ctx.loss_scale * 2.0 / static_cast<double>(n_tokens);
    Tensor row_weight = backend.empty({n_tokens});  // factor * lse_n
    backend.copy(row_weight, saved_.row_lse);
    backend.scale(row_weight, static_cast<float>(factor));
    Tensor weighted = backend.empty({n_tokens, n_experts_});
    backend.copy(weighted, saved_.probs);
    backend.scale_rows(weighted, row_weight);
    backend.add(dlogits, dlogits, weighted);
  }

  int64_t top_k_;
  bool renormalize_;
  double aux_loss_weight_;
  double z_loss_weight_;
  std::optional<double> capacity_factor_;  // none = dropless
  int64_t n_experts_;                      // E
  int64_t hidden_;                         // C
  size_t gate_ = 0;                        // "gate.weight" (E, C)
  DeviceStats stats_;
  Backend* stats_backend_ = nullptr;  // the backend of the last route() (for aux_stats())
  Saved saved_;
};

std::vector<OptionSpec> topk_options() {
  return {
      {"top_k", OptionType::kInt, "2", 1.0, std::nullopt,
       "experts per token (>= 1, <= the expert count)"},
      {"renormalize", OptionType::kBool, "true", std::nullopt, std::nullopt,
       "rescale the k kept probabilities to sum to 1 (Mixtral)"},
      {"aux_loss_weight", OptionType::kFloat, "0.01", 0.0, std::nullopt,
       "weight of the Switch load-balancing loss E * sum_i f_i P_i (>= 0)"},
      {"z_loss_weight", OptionType::kFloat, "0", 0.0, std::nullopt,
       "weight of the router z-loss mean(logsumexp(logits)^2) (>= 0; 0 = off)"},
      {"capacity_factor", OptionType::kFloat, "null", 0.0, std::nullopt,
       "expert capacity = ceil(factor * N * k / E) slots, overflow dropped (> 0; null = dropless)"},
  };
}

Component* create_topk(const CreateArgs& args) {
  return new TopKRouter(args);
}

}  // namespace
}  // namespace nnkit::moe

NNKIT_PLUGIN(moe, topk, "0.1.0", "softmax top-k router with load-balancing and z losses",
             &nnkit::moe::topk_options, &nnkit::moe::create_topk)
