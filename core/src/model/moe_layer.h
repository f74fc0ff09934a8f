// Purpose: the MoE feed-forward of a block: a router plugin (moe/topk, ...) choosing top-k experts
// per token and an experts plugin (moe/swiglu, ...) computing the gate-weighted sum.
// Under expert parallelism the experts plugin holds a block of the experts and an
// ExpertExchange (parallel/expert_parallel.h) moves the routed rows to and from their ranks.
// Ownership: shares the two components with the Transformer (which owns their parameters'
// naming); owns the exchange, if any; keeps the last Routing for backward.
#pragma once

#include <memory>

#include "nnkit/layer.h"
#include "parallel/expert_parallel.h"

namespace nnkit {

class MoeLayer final : public FeedForward {
 public:
  MoeLayer(std::shared_ptr<Router> router, std::shared_ptr<Experts> experts);

  Router& router() { return *router_; }
  Experts& experts() { return *experts_; }
  const Experts& experts() const { return *experts_; }
  // Expert parallelism: from now on forward and backward exchange the routed rows with the
  // group's other expert ranks (null: the experts are all here).
  void set_exchange(std::unique_ptr<ExpertExchange> exchange) { exchange_ = std::move(exchange); }

  // x: (N, C) -> y: (N, C).
  Tensor forward(ForwardContext& ctx, const Tensor& x) override;
  // The norm in front goes to the router (Router::route_with_input_norm), whose normed output
  // the experts read; with an exchange, the default two calls.
  Tensor forward_with_input_norm(ForwardContext& ctx, const Tensor& x, const Tensor& residual,
                                 Norm& norm, Tensor& sum) override;
  // dy: (N, C) -> dx = d(experts)/dx + d(router)/dx; router and expert weight grads accumulate.
  Tensor backward(ForwardContext& ctx, const Tensor& dy) override;
  void release_saved() override;
  bool has_aux_stats() const override { return true; }
  AuxStats aux_stats() const override { return router_->aux_stats(); }

 private:
  std::shared_ptr<Router> router_;
  std::shared_ptr<Experts> experts_;
  std::unique_ptr<ExpertExchange> exchange_;
};

}  // namespace nnkit
