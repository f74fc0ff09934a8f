// Purpose: see moe_layer.h.
#include "model/moe_layer.h"

namespace nnkit {

MoeLayer::MoeLayer(std::shared_ptr<Router> router, std::shared_ptr<Experts> experts)
    : router_(std::move(router)), experts_(std::move(experts)) {
  set_id("moe/" + router_->id() + "+" + experts_->id());
}

Tensor MoeLayer::forward(ForwardContext& ctx, const Tensor& x) {
  const Routing routing = router_->route(ctx, x);
  if (exchange_) return exchange_->forward(ctx, x, routing, *experts_);
  return experts_->forward_routed(ctx, x, routing);
}

Tensor MoeLayer::forward_with_input_norm(ForwardContext& ctx, const Tensor& x,
                                         const Tensor& residual, Norm& norm, Tensor& sum) {
  if (exchange_) return FeedForward::forward_with_input_norm(ctx, x, residual, norm, sum);
  Tensor normed;
  const Routing routing = router_->route_with_input_norm(ctx, x, residual, norm, sum, normed);
  return experts_->forward_routed(ctx, normed, routing);
}

Tensor MoeLayer::backward(ForwardContext& ctx, const Tensor& dy) {
  // Forward read in reverse: y = experts(x, gates(router(x))). The experts give dx through their
  // inputs and d(gate); the router turns d(gate) (+ its aux losses) into its own dx.
  Tensor dgate;
  Tensor dx = exchange_ ? exchange_->backward(ctx, dy, *experts_, dgate)
                        : experts_->backward_routed(ctx, dy, dgate);
  Tensor dx_router = router_->backward_routing(ctx, dgate);
  ctx.backend->add(dx, dx, dx_router);
  return dx;
}

void MoeLayer::release_saved() {
  router_->release_saved();
  experts_->release_saved();
  if (exchange_) exchange_->release_saved();
}

}  // namespace nnkit
