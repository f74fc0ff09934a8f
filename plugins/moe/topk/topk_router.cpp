// Purpose: `moe/topk`: the softmax top-k router (Switch / Mixtral). logits = x W^T over all E
// experts, probs = softmax(logits), each token keeps its k most probable experts with their
// probabilities as combine gates (renormalised to sum 1 when `renormalize`, as Mixtral does), and
// an optional capacity limit drops the slots an overloaded expert cannot take (index -1, gate 0;
// the residual carries the token). Auxiliary losses, both from the full softmax BEFORE any
// dropping:
//   load balancing (Switch): L_aux = E * sum_i f_i * P_i, f_i = share of the N*k routed slots that
//     chose expert i, P_i = mean_n probs[n, i];
//   z-loss (ST-MoE): L_z = mean_n logsumexp(logits[n])^2.
// Routing metadata (indices, statistics) crosses to the host in small explicit copies; the
// tensors themselves are computed with Backend ops only.
// Ownership: owns the gate parameter descriptor, the last route()'s statistics and, after a
// training route(), what backward_routing() needs (until the next route() or release_saved()).
// Thread-safety: none; one thread drives a layer.
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

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
  AuxStats aux_stats() const override { return stats_; }
  void release_saved() override { saved_ = Saved{}; }

  Routing route(ForwardContext& ctx, const Tensor& x) override {
    Backend& backend = *ctx.backend;
    NNKIT_CHECK_SHAPE(
        x.rank() == 2 && x.dim(1) == hidden_, id(),
        "route expects x of shape (N, " + std::to_string(hidden_) + "), got " + describe(x));
    const int64_t n_tokens = x.dim(0);
    const int64_t n_slots = n_tokens * top_k_;

    // Scores over all experts.
    Tensor logits = backend.empty({n_tokens, n_experts_});  // (N, E) = x W^T
    backend.gemm(x, false, value(gate_), true, logits);
    Tensor probs = backend.empty({n_tokens, n_experts_});  // (N, E)
    backend.softmax_rows(logits, probs);

    // Top-k. Renormalised gates p_i / sum_kept p_j equal a softmax over the kept logits, so they
    // come from the top-k logits (softmax is monotonic: the same experts win).
    Tensor top_index = backend.empty({n_tokens, top_k_}, DType::kI32);  // (N, k)
    Tensor kept_gate = backend.empty({n_tokens, top_k_});               // (N, k) before dropping
    if (renormalize_) {
      Tensor top_logits = backend.empty({n_tokens, top_k_});
      backend.topk_rows(logits, top_k_, top_logits, top_index);
      backend.softmax_rows(top_logits, kept_gate);
    } else {
      backend.topk_rows(probs, top_k_, kept_gate, top_index);
    }

    Routing routing;
    routing.n_tokens = n_tokens;
    routing.top_k = top_k_;
    routing.n_experts = n_experts_;
    routing.host_expert_index.resize(static_cast<size_t>(n_slots));
    if (n_slots > 0) backend.copy_to_host(routing.host_expert_index.data(), top_index);

    // Statistics of the full softmax, before any capacity dropping. Incremental decoding (KV
    // cache) has no loss to balance: skipping them saves copying the (N, E) probabilities to the
    // host, a device round trip per layer per token on the GPU. Expert fractions stay zero then.
    const std::vector<double> row_lse =
        compute_statistics(backend, logits, probs, routing, /*full=*/!ctx.use_kv_cache);

    // Capacity: walk the slots token by token (rank order within a token); an expert takes at most
    // `capacity` of them, the rest are dropped.
    const std::vector<int32_t> chosen = routing.host_expert_index;  // (N*k) before dropping
    std::vector<float> keep(static_cast<size_t>(n_slots), 1.0f);    // (N*k) 1 kept, 0 dropped
    int64_t dropped = 0;
    if (capacity_factor_) {
      const auto capacity = static_cast<int64_t>(std::ceil(
          *capacity_factor_ * static_cast<double>(n_slots) / static_cast<double>(n_experts_)));
      std::vector<int64_t> taken(static_cast<size_t>(n_experts_), 0);
      for (size_t slot = 0; slot < keep.size(); ++slot) {
        int32_t& expert = routing.host_expert_index[slot];
        if (taken[static_cast<size_t>(expert)]++ < capacity) continue;
        expert = -1;
        keep[slot] = 0.0f;
        ++dropped;
      }
    }
    stats_.dropped_fraction =
        n_slots > 0 ? static_cast<double>(dropped) / static_cast<double>(n_slots) : 0.0;

    Tensor keep_mask;  // (N*k) f32, only when something was dropped
    if (dropped > 0) {
      routing.expert_index =
          backend.from_host(routing.host_expert_index.data(), {n_tokens, top_k_}, DType::kI32);
      keep_mask = backend.from_host(keep.data(), {n_slots}, DType::kF32);
      routing.gate = backend.empty({n_tokens, top_k_});
      backend.copy(routing.gate, kept_gate);
      backend.scale_rows(routing.gate.view({n_slots, 1}), keep_mask);
    } else {
      routing.expert_index = top_index;
      routing.gate = kept_gate;
    }

    release_saved();
    if (ctx.training) {
      saved_.x = x;
      saved_.probs = probs;
      saved_.kept_gate = kept_gate;
      saved_.keep_mask = keep_mask;
      saved_.slot_logit = slot_logit_index(backend, chosen);
      saved_.row_lse = row_lse;
    }
    return routing;
  }

  Tensor backward_routing(ForwardContext& ctx, const Tensor& dgate) override {
    if (!saved_.x.defined()) {
      throw Error(id(), "backward_routing() needs a preceding route() in training mode");
    }
    Backend& backend = *ctx.backend;
    const int64_t n_tokens = saved_.x.dim(0);
    const int64_t n_slots = n_tokens * top_k_;
    const int64_t n_scores = n_tokens * n_experts_;
    NNKIT_CHECK_SHAPE(dgate.numel() == n_slots, id(),
                      "backward_routing expects dgate of shape (N, k), got " + describe(dgate));

    // Forward read in reverse. gate = keep * kept_gate: dropped slots pass no gradient.
    Tensor dkept = dgate.view({n_tokens, top_k_});  // (N, k)
    if (saved_.keep_mask.defined()) {
      dkept = backend.empty({n_tokens, top_k_});
      backend.copy(dkept, dgate.view({n_tokens, top_k_}));
      backend.scale_rows(dkept.view({n_slots, 1}), saved_.keep_mask);
    }

    // Gate gradients land at the chosen (token, expert) entries of an (N, E) score matrix.
    Tensor dscores = backend.zeros({n_tokens, n_experts_});  // (N, E)
    Tensor dscores_flat = dscores.view({n_scores, 1});
    Tensor dlogits;  // (N, E)
    if (renormalize_) {
      // kept_gate = softmax(kept logits): the gate path reaches the kept logits directly.
      Tensor dkept_logits = backend.empty({n_tokens, top_k_});
      backend.softmax_backward(saved_.kept_gate, dkept, dkept_logits);
      backend.scatter_add_rows(dkept_logits.view({n_slots, 1}), saved_.slot_logit, Tensor(),
                               dscores_flat);
      dlogits = dscores;
      if (aux_loss_weight_ > 0.0) {
        Tensor dprobs = backend.zeros({n_tokens, n_experts_});
        add_aux_gradient(ctx, dprobs);
        backend.softmax_backward(saved_.probs, dprobs, dprobs);
        backend.add(dlogits, dlogits, dprobs);
      }
    } else {
      // kept_gate = probs[kept]: the gate path joins the aux path on probs, then the softmax.
      backend.scatter_add_rows(dkept.view({n_slots, 1}), saved_.slot_logit, Tensor(), dscores_flat);
      if (aux_loss_weight_ > 0.0) add_aux_gradient(ctx, dscores);
      dlogits = backend.empty({n_tokens, n_experts_});
      backend.softmax_backward(saved_.probs, dscores, dlogits);
    }
    if (z_loss_weight_ > 0.0) add_z_loss_gradient(ctx, dlogits);

    // logits = x W^T: dW += dlogits^T x (accumulates); dx = dlogits W.
    backend.gemm(dlogits, true, saved_.x, false, grad(gate_), 1.0f, 1.0f);
    Tensor dx = backend.empty({n_tokens, hidden_});
    backend.gemm(dlogits, false, value(gate_), false, dx);
    return dx;
  }

 private:
  struct Saved {
    Tensor x;                     // (N, C)
    Tensor probs;                 // (N, E) softmax over all experts
    Tensor kept_gate;             // (N, k) gates before dropping
    Tensor keep_mask;             // (N*k) 1 kept / 0 dropped; undefined when nothing dropped
    Tensor slot_logit;            // (N*k) i32: n*E + chosen expert
    std::vector<double> row_lse;  // (N) logsumexp(logits[n]), only with the z-loss
  };

  // Fills stats_ (f_i, P_i, L_aux, L_z) from host copies; returns the rows' logsumexp when the
  // z-loss is on (its backward needs them), else an empty vector. `full` = false leaves the
  // statistics zero (decoding).
  std::vector<double> compute_statistics(Backend& backend, const Tensor& logits,
                                         const Tensor& probs, const Routing& routing, bool full) {
    const int64_t n_tokens = routing.n_tokens;
    const auto n_experts = static_cast<size_t>(n_experts_);
    stats_ = AuxStats{};
    stats_.aux_weight = aux_loss_weight_;
    stats_.z_weight = z_loss_weight_;
    stats_.expert_fraction.assign(n_experts, 0.0);
    if (n_tokens == 0 || !full) return {};

    for (int32_t expert : routing.host_expert_index) {
      stats_.expert_fraction[static_cast<size_t>(expert)] += 1.0;
    }
    const double n_slots = static_cast<double>(routing.host_expert_index.size());
    for (double& f : stats_.expert_fraction) f /= n_slots;

    std::vector<float> host_probs(static_cast<size_t>(probs.numel()));  // (N, E)
    backend.copy_to_host(host_probs.data(), probs);
    std::vector<double> mean_prob(n_experts, 0.0);  // P_i
    for (size_t i = 0; i < host_probs.size(); ++i) mean_prob[i % n_experts] += host_probs[i];
    double aux = 0.0;
    for (size_t e = 0; e < n_experts; ++e) {
      aux += stats_.expert_fraction[e] * mean_prob[e] / static_cast<double>(n_tokens);
    }
    stats_.aux_loss = static_cast<double>(n_experts_) * aux;

    if (!(z_loss_weight_ > 0.0)) return {};
    std::vector<float> host_logits(static_cast<size_t>(logits.numel()));  // (N, E)
    backend.copy_to_host(host_logits.data(), logits);
    std::vector<double> row_lse(static_cast<size_t>(n_tokens));
    double z = 0.0;
    for (size_t n = 0; n < row_lse.size(); ++n) {
      const float* row = host_logits.data() + n * n_experts;
      double top = row[0];
      for (size_t e = 1; e < n_experts; ++e) top = std::max(top, static_cast<double>(row[e]));
      double sum = 0.0;
      for (size_t e = 0; e < n_experts; ++e) sum += std::exp(row[e] - top);
      row_lse[n] = top + std::log(sum);
      z += row_lse[n] * row_lse[n];
    }
    stats_.z_loss = z / static_cast<double>(n_tokens);
    return row_lse;
  }

  // Flat position n*E + expert of each chosen slot in an (N, E) score matrix (N*k) i32. Dropped
  // slots keep their chosen expert: with renormalisation its logit still shapes the kept gates.
  Tensor slot_logit_index(Backend& backend, const std::vector<int32_t>& chosen) const {
    std::vector<int32_t> flat(chosen.size());
    for (size_t slot = 0; slot < flat.size(); ++slot) {
      const int64_t n = static_cast<int64_t>(slot) / top_k_;
      flat[slot] = static_cast<int32_t>(n * n_experts_ + chosen[slot]);
    }
    return backend.from_host(flat.data(), {static_cast<int64_t>(flat.size())}, DType::kI32);
  }

  // dprobs[n, i] += aux_weight * loss_scale * E * f_i / N for every token n (f_i held constant,
  // the Switch convention), as a rank-1 update ones(N, 1) @ row(1, E).
  void add_aux_gradient(const ForwardContext& ctx, const Tensor& dprobs) const {
    Backend& backend = *ctx.backend;
    const int64_t n_tokens = dprobs.dim(0);
    const double factor = aux_loss_weight_ * ctx.loss_scale * static_cast<double>(n_experts_) /
                          static_cast<double>(n_tokens);
    std::vector<float> row(static_cast<size_t>(n_experts_));
    for (size_t e = 0; e < row.size(); ++e) {
      row[e] = static_cast<float>(factor * stats_.expert_fraction[e]);
    }
    Tensor row_tensor = backend.from_host(row.data(), {1, n_experts_}, DType::kF32);
    Tensor ones = backend.empty({n_tokens, 1});
    backend.fill(ones, 1.0f);
    backend.gemm(ones, false, row_tensor, false, dprobs, 1.0f, 1.0f);
  }

  // L_z = mean_n lse_n^2: dlogits[n, :] += z_weight * loss_scale * (2 lse_n / N) * probs[n, :].
  void add_z_loss_gradient(const ForwardContext& ctx, const Tensor& dlogits) const {
    Backend& backend = *ctx.backend;
    const int64_t n_tokens = dlogits.dim(0);
    const double factor = z_loss_weight_ * ctx.loss_scale * 2.0 / static_cast<double>(n_tokens);
    std::vector<float> row_weight(saved_.row_lse.size());
    for (size_t n = 0; n < row_weight.size(); ++n) {
      row_weight[n] = static_cast<float>(factor * saved_.row_lse[n]);
    }
    Tensor weighted = backend.empty({n_tokens, n_experts_});
    backend.copy(weighted, saved_.probs);
    backend.scale_rows(weighted, backend.from_host(row_weight.data(), {n_tokens}, DType::kF32));
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
  AuxStats stats_;
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
