// Purpose: `norm/gemma_rmsnorm`, an example norm built against the installed SDK: RMSNorm whose
// learned scale is stored as an offset from 1 (Gemma's convention): y = x * rstd * (1 + w), w
// initialised to 0 and, like every norm scale, exempt from weight decay. The arithmetic is the
// backend's rmsnorm_forward/backward on the effective scale 1 + w (Backend::add_scalar); since
// d(1 + w)/dw = 1, the scale gradient rmsnorm_backward accumulates is w's gradient as it is.
// Ownership: after forward(training) holds x, rstd and the effective scale until the next
// forward or release_saved(). Thread-safety: none; one thread drives a layer.
#include <nnkit/error.h>
#include <nnkit/layer.h>
#include <nnkit/plugin.h>

#include <string>
#include <vector>

namespace {

class GemmaRmsNorm final : public nnkit::Norm {
 public:
  explicit GemmaRmsNorm(const nnkit::CreateArgs& args)
      : eps_(static_cast<float>(args.options.get_float("eps"))), hidden_(args.dims.hidden_dim) {
    if (!(eps_ > 0.0f)) args.options.fail("eps", "must be > 0");
    if (hidden_ <= 0) throw nnkit::ConfigError(args.options.component(), "hidden_dim is not set");
    weight_ = add_parameter("weight", {hidden_}, /*init_std=*/0.0f, /*init_value=*/0.0f,
                            /*decay=*/false);
  }

  nnkit::Tensor forward(nnkit::ForwardContext& ctx, const nnkit::Tensor& x) override {
    nnkit::Backend& be = *ctx.backend;
    NNKIT_CHECK_SHAPE(
        x.rank() == 2 && x.dim(1) == hidden_, id(),
        "forward expects (N, " + std::to_string(hidden_) + "), got " + nnkit::describe(x));
    nnkit::Tensor scale = be.empty({hidden_}, value(weight_).dtype());  // (C) = 1 + w
    be.add_scalar(scale, value(weight_), 1.0f);
    nnkit::Tensor y = be.empty(x.shape(), x.dtype());
    nnkit::Tensor rstd = be.empty({x.dim(0)});  // (N) f32
    be.rmsnorm_forward(x, scale, eps_, y, rstd);
    if (ctx.training) {
      saved_x_ = x;
      saved_rstd_ = rstd;
      saved_scale_ = scale;
    } else {
      release_saved();
    }
    return y;
  }

  nnkit::Tensor backward(nnkit::ForwardContext& ctx, const nnkit::Tensor& dy) override {
    if (!saved_x_.defined()) throw nnkit::Error(id(), "backward() needs a forward(training)");
    // y = x * rstd * (1 + w): dx overwritten; dw accumulates (+=) through rmsnorm_backward.
    nnkit::Tensor dx = ctx.backend->empty(saved_x_.shape(), saved_x_.dtype());
    ctx.backend->rmsnorm_backward(dy, saved_x_, saved_scale_, saved_rstd_, dx, grad(weight_));
    return dx;
  }

  void release_saved() override {
    saved_x_ = nnkit::Tensor();
    saved_rstd_ = nnkit::Tensor();
    saved_scale_ = nnkit::Tensor();
  }

 private:
  float eps_;
  int64_t hidden_;  // C
  size_t weight_ = 0;
  nnkit::Tensor saved_x_;      // (N, C)
  nnkit::Tensor saved_rstd_;   // (N)
  nnkit::Tensor saved_scale_;  // (C) 1 + w
};

std::vector<nnkit::OptionSpec> gemma_rmsnorm_options() {
  return {{"eps", nnkit::OptionType::kFloat, "1e-6", 0.0, std::nullopt,
           "added to mean(x^2) under the square root (> 0)"}};
}

nnkit::Component* create_gemma_rmsnorm(const nnkit::CreateArgs& args) {
  return new GemmaRmsNorm(args);
}

}  // namespace

NNKIT_PLUGIN(norm, gemma_rmsnorm, "0.1.0", "RMSNorm with the scale stored as 1 + w (Gemma)",
             &gemma_rmsnorm_options, &create_gemma_rmsnorm)
