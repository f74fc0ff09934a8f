// Purpose: deliberately broken norm plugins for the loading rules and `nnkit check-plugin`
// (tests/sdk). One source, one flaw per build (BROKEN_* below); each library lands in a folder
// of its own so that one fixture never disturbs another's registry. The healthy core is RMSNorm
// through the backend's ops; each variant breaks exactly one contract:
//   BROKEN_GRAD_X2     backward returns twice the input gradient
//   BROKEN_OVERWRITE   backward overwrites the weight gradient instead of accumulating
//   BROKEN_SHAPE       forward returns (N, 2C) instead of (N, C)
//   BROKEN_DEFAULT     declares eps with default 5 outside its own range [0, 1]
//   BROKEN_THROW42     the constructor throws the int 42
//   BROKEN_NAME        a hand-written descriptor whose name is "../evil"
//   SHADOW_RMSNORM     a correct norm calling itself norm/rmsnorm, like the built-in
//   GOOD               a correct norm/good_rms (the control: everything passes)
#include <string>

#include "nnkit/error.h"
#include "nnkit/layer.h"
#include "nnkit/plugin.h"

namespace {

class FixtureNorm final : public nnkit::Norm {
 public:
  explicit FixtureNorm(const nnkit::CreateArgs& args)
      : eps_(static_cast<float>(args.options.get_float("eps"))), hidden_(args.dims.hidden_dim) {
#ifdef BROKEN_THROW42
    throw 42;
#endif
    if (hidden_ <= 0) throw nnkit::ConfigError(args.options.component(), "hidden_dim unset");
    weight_ = add_parameter("weight", {hidden_}, 0.0f, 1.0f, /*decay=*/false);
  }

  nnkit::Tensor forward(nnkit::ForwardContext& ctx, const nnkit::Tensor& x) override {
    nnkit::Backend& backend = *ctx.backend;
    nnkit::Tensor y = backend.empty(x.shape(), x.dtype());
    nnkit::Tensor rstd = backend.empty({x.dim(0)});
    backend.rmsnorm_forward(x, value(weight_), eps_, y, rstd);
    if (ctx.training) {
      saved_x_ = x;
      saved_rstd_ = rstd;
    }
#ifdef BROKEN_SHAPE
    return backend.zeros({x.dim(0), 2 * x.dim(1)}, x.dtype());
#else
    return y;
#endif
  }

  nnkit::Tensor backward(nnkit::ForwardContext& ctx, const nnkit::Tensor& dy) override {
    nnkit::Backend& backend = *ctx.backend;
    nnkit::Tensor dx = backend.empty(saved_x_.shape(), saved_x_.dtype());
#ifdef BROKEN_OVERWRITE
    backend.fill(grad(weight_), 0.0f);
#endif
    backend.rmsnorm_backward(dy, saved_x_, value(weight_), saved_rstd_, dx, grad(weight_));
#ifdef BROKEN_GRAD_X2
    backend.scale(dx, 2.0f);
#endif
    return dx;
  }

  void release_saved() override {
    saved_x_ = nnkit::Tensor();
    saved_rstd_ = nnkit::Tensor();
  }

 private:
  float eps_;
  int64_t hidden_;
  size_t weight_ = 0;
  nnkit::Tensor saved_x_;
  nnkit::Tensor saved_rstd_;
};

std::vector<nnkit::OptionSpec> fixture_options() {
#ifdef BROKEN_DEFAULT
  return {{"eps", nnkit::OptionType::kFloat, "5", 0.0, 1.0, "epsilon (default out of range)"}};
#else
  return {{"eps", nnkit::OptionType::kFloat, "1e-5", 0.0, 1.0, "epsilon"}};
#endif
}

nnkit::Component* create_fixture(const nnkit::CreateArgs& args) {
  return new FixtureNorm(args);
}

}  // namespace

#if defined(BROKEN_GRAD_X2)
NNKIT_PLUGIN(norm, grad_x2, "0.0.1", "dx twice too large", &fixture_options, &create_fixture)
#elif defined(BROKEN_OVERWRITE)
NNKIT_PLUGIN(norm, overwrite, "0.0.1", "overwrites dweight", &fixture_options, &create_fixture)
#elif defined(BROKEN_SHAPE)
NNKIT_PLUGIN(norm, wrong_shape, "0.0.1", "returns (N, 2C)", &fixture_options, &create_fixture)
#elif defined(BROKEN_DEFAULT)
NNKIT_PLUGIN(norm, bad_default, "0.0.1", "default outside range", &fixture_options, &create_fixture)
#elif defined(BROKEN_THROW42)
NNKIT_PLUGIN(norm, throws_42, "0.0.1", "constructor throws 42", &fixture_options, &create_fixture)
#elif defined(BROKEN_NAME)
extern "C" __attribute__((visibility("default"))) const nnkit::PluginDescriptor*
nnkit_plugin_descriptor() noexcept {
  static const nnkit::PluginDescriptor descriptor{
      nnkit::kPluginAbiVersion, NNKIT_BUILD_TAG,  "norm",         "../evil", "0.0.1",
      "a path as a name",       &fixture_options, &create_fixture};
  return &descriptor;
}
#elif defined(SHADOW_RMSNORM)
NNKIT_PLUGIN(norm, rmsnorm, "9.9.9", "a second norm/rmsnorm", &fixture_options, &create_fixture)
#else
NNKIT_PLUGIN(norm, good_rms, "0.0.1", "a correct RMSNorm", &fixture_options, &create_fixture)
#endif
