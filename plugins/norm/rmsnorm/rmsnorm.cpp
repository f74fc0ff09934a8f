// Purpose: `norm/rmsnorm`: y = x / sqrt(mean(x^2) + eps) * weight, per token (Zhang & Sennrich).
// The arithmetic is the backend's rmsnorm_forward/backward (and add_rmsnorm, the residual add
// fused in front outside training); this plugin owns the scale parameter
// ("weight", HF Llama name, initialised to 1, exempt from weight decay) and the saved activations.
// Ownership: after forward(training) holds x and rstd until the next forward or release_saved().
// Thread-safety: none; one thread drives a layer.
#include <cstdint>
#include <string>

#include "nnkit/error.h"
#include "nnkit/layer.h"
#include "nnkit/plugin.h"

namespace nnkit::norm {
namespace {

class RmsNorm final : public Norm {
 public:
  explicit RmsNorm(const CreateArgs& args)
      : eps_(static_cast<float>(args.options.get_float("eps"))), hidden_(args.dims.hidden_dim) {
    if (!(eps_ > 0.0f)) args.options.fail("eps", "must be > 0 (it keeps 1/rms finite)");
    if (hidden_ <= 0) {
      throw ConfigError(args.options.component(),
                        "model hidden_dim must be set (got " + std::to_string(hidden_) + ")");
    }
    weight_ = add_parameter("weight", {hidden_}, /*init_std=*/0.0f, /*init_value=*/1.0f,
                            /*decay=*/false);
  }

  Tensor forward(ForwardContext& ctx, const Tensor& x) override {
    Backend& backend = *ctx.backend;
    NNKIT_CHECK_SHAPE(
        x.rank() == 2 && x.dim(1) == hidden_, id(),
        "forward expects x of shape (N, " + std::to_string(hidden_) + "), got " + describe(x));
    Tensor y = backend.empty(x.shape(), x.dtype());  // (N, C) in x's dtype
    Tensor rstd = backend.empty({x.dim(0)});         // (N) f32 statistics
    backend.rmsnorm_forward(x, value(weight_), eps_, y, rstd);
    if (ctx.training) {
      saved_x_ = x;
      saved_rstd_ = rstd;
    } else {
      release_saved();
    }
    return y;
  }

  // Outside training the residual add and the norm are one launch (Backend::add_rmsnorm); a
  // training pass keeps the unfused path (backward needs the statistics).
  Tensor forward_with_residual(ForwardContext& ctx, const Tensor& x, const Tensor& residual,
                               Tensor& sum) override {
    if (ctx.training) return Norm::forward_with_residual(ctx, x, residual, sum);
    Backend& backend = *ctx.backend;
    NNKIT_CHECK_SHAPE(x.rank() == 2 && x.dim(1) == hidden_ && residual.shape() == x.shape(), id(),
                      "forward_with_residual expects x and residual of shape (N, " +
                          std::to_string(hidden_) + "), got " + describe(x) + " and " +
                          describe(residual));
    sum = backend.empty(x.shape(), x.dtype());
    Tensor y = backend.empty(x.shape(), x.dtype());
    backend.add_rmsnorm(x, residual, value(weight_), eps_, sum, y);
    release_saved();
    return y;
  }

  bool rms_parameters(Tensor& weight, float& eps) const override {
    weight = value(weight_);
    eps = eps_;
    return true;
  }

  Tensor backward(ForwardContext& ctx, const Tensor& dy) override {
    if (!saved_x_.defined()) throw Error(id(), "backward() needs a preceding forward(training)");
    NNKIT_CHECK_SHAPE(dy.shape() == saved_x_.shape(), id(),
                      "backward expects dy shaped like x, got " + describe(dy));
    // Forward read in reverse: y = x * rstd * weight. dx is overwritten; dweight accumulates.
    Tensor dx = ctx.backend->empty(saved_x_.shape(), saved_x_.dtype());  // (N, C)
    ctx.backend->rmsnorm_backward(dy, saved_x_, value(weight_), saved_rstd_, dx, grad(weight_));
    return dx;
  }

  void release_saved() override {
    saved_x_ = Tensor();
    saved_rstd_ = Tensor();
  }

 private:
  float eps_;
  int64_t hidden_;     // C
  size_t weight_ = 0;  // "weight" (C)
  Tensor saved_x_;     // (N, C) input of the last training forward
  Tensor saved_rstd_;  // (N) 1 / rms of each row
};

std::vector<OptionSpec> rmsnorm_options() {
  return {
      {"eps", OptionType::kFloat, "1e-5", 0.0, std::nullopt,
       "added to mean(x^2) under the square root (> 0)"},
  };
}

Component* create_rmsnorm(const CreateArgs& args) {
  return new RmsNorm(args);
}

}  // namespace
}  // namespace nnkit::norm

NNKIT_PLUGIN(norm, rmsnorm, "0.1.0", "RMSNorm with a learned per-channel scale",
             &nnkit::norm::rmsnorm_options, &nnkit::norm::create_rmsnorm)
