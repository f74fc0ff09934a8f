// Purpose: `moe/relu2`, an example Experts plugin built against the installed SDK: E expert FFNs
// expert_e(x) = W2_e relu(W1_e x)^2 (Primer's squared ReLU), parameters "experts.<e>.w1.weight"
// (F, C) and "experts.<e>.w2.weight" (C, F). Routing is not its business: nnkit/moe_dispatch.h
// gathers the rows the router grouped by expert and combines them back with the gates; this file
// holds only the per-expert math, forward and backward (the forward read in reverse).
// Ownership: after forward_routed(training) holds the dispatched rows and activations backward
// needs, until the next forward or release_saved().
// Thread-safety: none; one thread drives a layer.
#include <nnkit/error.h>
#include <nnkit/layer.h>
#include <nnkit/moe_dispatch.h>
#include <nnkit/plugin.h>

#include <string>
#include <vector>

namespace {

class Relu2Experts final : public nnkit::Experts {
 public:
  explicit Relu2Experts(const nnkit::CreateArgs& args)
      : n_experts_(args.options.get_int("n_experts")),
        ffn_dim_(args.options.get_int("ffn_dim")),
        hidden_(args.dims.hidden_dim) {
    if (hidden_ <= 0) throw nnkit::ConfigError(args.options.component(), "hidden_dim is not set");
    for (int64_t e = 0; e < n_experts_; ++e) {
      const std::string prefix = "experts." + std::to_string(e) + ".";
      up_.push_back(add_parameter(prefix + "w1.weight", {ffn_dim_, hidden_}, 0.02f));
      down_.push_back(add_parameter(prefix + "w2.weight", {hidden_, ffn_dim_}, 0.02f));
    }
  }

  int64_t n_experts() const override { return n_experts_; }
  int64_t parameters_per_expert() const override { return 2 * hidden_ * ffn_dim_; }
  void release_saved() override { saved_ = Saved{}; }

  nnkit::Tensor forward_routed(nnkit::ForwardContext& ctx, const nnkit::Tensor& x,
                               const nnkit::Routing& routing) override {
    nnkit::Backend& be = *ctx.backend;
    Saved s;
    s.rows = nnkit::moe::dispatch(be, x, routing, n_experts_, id());
    const int64_t m = s.rows.rows;
    if (m > 0) {
      s.h = be.empty({m, ffn_dim_}, x.dtype());      // (M, F) = x_e W1^T
      s.a = be.empty({m, ffn_dim_}, x.dtype());      // (M, F) = relu(h)^2
      s.y_rows = be.empty({m, hidden_}, x.dtype());  // (M, C) = a W2^T
      for (int64_t e = 0; e < n_experts_; ++e) {
        if (s.rows.begin(e) == s.rows.end(e)) continue;
        be.gemm(s.rows.block(s.rows.x, e), false, value(up_[e]), true, s.rows.block(s.h, e));
      }
      be.activation_forward(nnkit::Activation::kReluSquared, s.h, s.a);
      for (int64_t e = 0; e < n_experts_; ++e) {
        if (s.rows.begin(e) == s.rows.end(e)) continue;
        be.gemm(s.rows.block(s.a, e), false, value(down_[e]), true, s.rows.block(s.y_rows, e));
      }
    }
    nnkit::Tensor y = nnkit::moe::combine(be, s.rows, s.y_rows, hidden_, x.dtype());
    saved_ = ctx.training ? std::move(s) : Saved{};
    return y;
  }

  nnkit::Tensor backward_routed(nnkit::ForwardContext& ctx, const nnkit::Tensor& dy,
                                nnkit::Tensor& dgate) override {
    if (saved_.rows.n_tokens == 0) {
      throw nnkit::Error(id(), "backward_routed() needs a preceding forward_routed(training)");
    }
    nnkit::Backend& be = *ctx.backend;
    const Saved& s = saved_;
    // Combine read in reverse: dgate = <dy[token], y_row>, dy_row = gate * dy[token].
    nnkit::Tensor dy_rows = nnkit::moe::combine_backward(be, s.rows, dy, s.y_rows, dgate);
    if (s.rows.rows == 0) {
      return nnkit::moe::dispatch_backward(be, s.rows, nnkit::Tensor(), hidden_, dy.dtype());
    }
    const int64_t m = s.rows.rows;
    nnkit::Tensor da = be.empty({m, ffn_dim_}, dy.dtype());
    nnkit::Tensor dx_rows = be.empty({m, hidden_}, dy.dtype());
    for (int64_t e = 0; e < n_experts_; ++e) {
      if (s.rows.begin(e) == s.rows.end(e)) continue;
      // y_e = a_e W2^T: dW2 += dy_e^T a_e (accumulates); da_e = dy_e W2.
      be.gemm(s.rows.block(dy_rows, e), true, s.rows.block(s.a, e), false, grad(down_[e]), 1.0f,
              1.0f);
      be.gemm(s.rows.block(dy_rows, e), false, value(down_[e]), false, s.rows.block(da, e));
    }
    // a = relu(h)^2: dh = da * 2 relu(h) (in place over da).
    be.activation_backward(nnkit::Activation::kReluSquared, da, s.h, da);
    for (int64_t e = 0; e < n_experts_; ++e) {
      if (s.rows.begin(e) == s.rows.end(e)) continue;
      // h_e = x_e W1^T: dW1 += dh_e^T x_e (accumulates); dx_e = dh_e W1.
      be.gemm(s.rows.block(da, e), true, s.rows.block(s.rows.x, e), false, grad(up_[e]), 1.0f,
              1.0f);
      be.gemm(s.rows.block(da, e), false, value(up_[e]), false, s.rows.block(dx_rows, e));
    }
    // Dispatch read in reverse: each row's gradient goes back to its token.
    return nnkit::moe::dispatch_backward(be, s.rows, dx_rows, hidden_, dy.dtype());
  }

 private:
  struct Saved {
    nnkit::moe::ExpertRows rows;  // dispatched rows, gates, offsets
    nnkit::Tensor h;              // (M, F)
    nnkit::Tensor a;              // (M, F)
    nnkit::Tensor y_rows;         // (M, C) expert outputs before the gate
  };

  int64_t n_experts_;  // E
  int64_t ffn_dim_;    // F
  int64_t hidden_;     // C
  std::vector<size_t> up_, down_;
  Saved saved_;
};

std::vector<nnkit::OptionSpec> relu2_options() {
  using nnkit::OptionType;
  return {
      {"n_experts", OptionType::kInt, "", 1.0, std::nullopt, "number of experts E"},
      {"ffn_dim", OptionType::kInt, "", 1.0, std::nullopt, "hidden width F of each expert"},
  };
}

nnkit::Component* create_relu2(const nnkit::CreateArgs& args) {
  return new Relu2Experts(args);
}

}  // namespace

NNKIT_PLUGIN(moe, relu2, "0.1.0", "squared-ReLU expert FFNs on the SDK's dispatch/combine",
             &relu2_options, &create_relu2)
