// Purpose: the MoE feed-forward of a block: a router plugin (moe/topk, ...) choosing top-k experts
// per token and an experts plugin (moe/swiglu, ...) computing the gate-weighted sum.
// Ownership: shares the two components with the Transformer (which owns their parameters'
// naming); keeps the last Routing for backward.
#pragma once

#include <memory>

#include "nnkit/layer.h"

namespace nnkit {

class MoeLayer final : public FeedForward {
 public:
  MoeLayer(std::shared_ptr<Router> router, std::shared_ptr<Experts> experts);

  Router& router() { return *router_; }
  Experts& experts() { return *experts_; }

  // x: (N, C) -> y: (N, C).
  Tensor forward(ForwardContext& ctx, const Tensor& x) override;
  // dy: (N, C) -> dx = d(experts)/dx + d(router)/dx; router and expert weight grads accumulate.
  Tensor backward(ForwardContext& ctx, const Tensor& dy) override;
  void release_saved() override;
  bool has_aux_stats() const override { return true; }
  AuxStats aux_stats() const override { return router_->aux_stats(); }

 private:
  std::shared_ptr<Router> router_;
  std::shared_ptr<Experts> experts_;
};

}  // namespace nnkit
