// Purpose: out-of-line anchors (destructors) for every interface crossing the plugin boundary, so
// their vtables and type info live once, in the core library; plus the Backend conveniences.
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
Attention::~Attention() = default;
FeedForward::~FeedForward() = default;
Router::~Router() = default;
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
