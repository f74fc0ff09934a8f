// Purpose: out-of-line anchors (destructors) for every interface crossing the plugin boundary, so
// their vtables and type info live once, in the core library; plus the Backend conveniences.
#include <algorithm>
#include <cmath>

#include "nnkit/backend.h"
#include "nnkit/component.h"
#include "nnkit/error.h"
#include "nnkit/layer.h"
#include "nnkit/optim.h"
#include "nnkit/sampler.h"
#include "nnkit/tokenizer.h"

namespace nnkit {

Component::~Component() = default;
Backend::~Backend() = default;
Layer::~Layer() = default;
Norm::~Norm() = default;

Tensor Norm::forward_with_residual(ForwardContext& ctx, const Tensor& x, const Tensor& residual,
                                   Tensor& sum) {
  sum = ctx.backend->empty(x.shape(), x.dtype());
  ctx.backend->add(sum, x, residual);
  return forward(ctx, sum);
}
Attention::~Attention() = default;

Tensor Attention::forward_with_input_norm(ForwardContext& ctx, const Tensor& x,
                                          const Tensor& residual, Norm& norm, Tensor& sum) {
  const Tensor h = norm.forward_with_residual(ctx, x, residual, sum);
  return forward(ctx, h);
}
FeedForward::~FeedForward() = default;

Tensor FeedForward::forward_with_input_norm(ForwardContext& ctx, const Tensor& x,
                                            const Tensor& residual, Norm& norm, Tensor& sum) {
  const Tensor h = norm.forward_with_residual(ctx, x, residual, sum);
  return forward(ctx, h);
}

Router::~Router() = default;

Routing Router::route_with_input_norm(ForwardContext& ctx, const Tensor& x, const Tensor& residual,
                                      Norm& norm, Tensor& sum, Tensor& normed) {
  normed = norm.forward_with_residual(ctx, x, residual, sum);
  return route(ctx, normed);
}
Experts::~Experts() = default;
Tokenizer::~Tokenizer() = default;
Optimizer::~Optimizer() = default;
Schedule::~Schedule() = default;
Sampler::~Sampler() = default;

void Optimizer::step_on_device(Backend& backend, const std::vector<Parameter*>& params, double lr,
                               const Tensor& grad_sum_squares, float max_grad_norm,
                               float inv_loss_scale) {
  // The portable path for optimizers without a fused kernel: one host read of the norm.
  float sum_squares = 0.0f;
  backend.copy_to_host(&sum_squares, grad_sum_squares);
  const double norm = std::sqrt(static_cast<double>(sum_squares)) * inv_loss_scale;
  if (std::isfinite(norm)) {
    const double clip = max_grad_norm > 0.0f && norm > max_grad_norm ? max_grad_norm / norm : 1.0;
    step(backend, params, lr, static_cast<float>(clip * inv_loss_scale));
    for (Parameter* p : params) {
      if (p->compute.defined()) backend.convert(p->compute, p->value);
      if (p->grad.defined()) backend.fill(p->grad, 0.0f);
    }
  }
}

void Optimizer::prepare_device_step(Backend&, const std::vector<Parameter*>&, double, float) {
  throw Error(id(), "this optimizer cannot be captured in a CUDA Graph (capturable() is false)");
}

void Optimizer::enqueue_device_step(Backend&, const std::vector<Parameter*>&, const Tensor&,
                                    float) {
  throw Error(id(), "this optimizer cannot be captured in a CUDA Graph (capturable() is false)");
}

void Backend::sum_rows(const Tensor& x, const Tensor& out, float alpha, float beta) {
  const int64_t rows = x.dim(0), cols = x.numel() / std::max<int64_t>(rows, 1);
  // Stage size: the largest power of two <= sqrt(N) that divides N (1 = one stage).
  int64_t stage = 1;
  while (stage * 2 * stage * 2 <= rows && rows % (stage * 2) == 0) stage *= 2;
  if (rows < 1024 || stage < 8) {
    Tensor ones = empty({1, rows});
    fill(ones, 1.0f);
    gemm(ones, false, x.view({rows, cols}), false, out.view({1, cols}), alpha, beta);
    return;
  }
  // x viewed as (N / s, s * C): the first product sums the s-row groups column-wise...
  const int64_t groups = rows / stage;
  Tensor ones_groups = empty({1, groups});
  fill(ones_groups, 1.0f);
  Tensor partial = empty({1, stage * cols});
  gemm(ones_groups, false, x.view({groups, stage * cols}), false, partial);
  // ...and the second adds the s partial rows.
  Tensor ones_stage = empty({1, stage});
  fill(ones_stage, 1.0f);
  gemm(ones_stage, false, partial.view({stage, cols}), false, out.view({1, cols}), alpha, beta);
}

Tensor Backend::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  fill(t, 0.0f);
  return t;
}

Tensor Backend::from_host(const void* src, const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  if (t.numel() > 0) copy_from_host(t, src);
  return t;
}

int64_t Layer::parameter_count() const {
  int64_t n = 0;
  for (const Parameter& p : params_) n += shape_numel(p.shape);
  return n;
}

size_t Layer::add_parameter(std::string name, Shape shape, float init_std, float init_value,
                            bool decay) {
  Parameter p;
  p.name = std::move(name);
  p.shape = std::move(shape);
  p.init_std = init_std;
  p.init_value = init_value;
  p.decay = decay;
  params_.push_back(std::move(p));
  return params_.size() - 1;
}

Tensor Router::forward(ForwardContext&, const Tensor&) {
  throw Error(id(), "routers are driven through route(); forward() is not used");
}
Tensor Router::backward(ForwardContext&, const Tensor&) {
  throw Error(id(), "routers are driven through backward_routing(); backward() is not used");
}
Tensor Experts::forward(ForwardContext&, const Tensor&) {
  throw Error(id(), "experts are driven through forward_routed(); forward() is not used");
}
Tensor Experts::backward(ForwardContext&, const Tensor&) {
  throw Error(id(), "experts are driven through backward_routed(); backward() is not used");
}

}  // namespace nnkit
