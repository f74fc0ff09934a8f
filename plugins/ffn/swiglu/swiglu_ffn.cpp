// Purpose: `ffn/swiglu`: the dense SwiGLU feed-forward of Llama,
// y = down_proj(silu(gate_proj x) * up_proj x), with HF Llama parameter names and (out, in) layout.
// Every computation is a Backend op.
// Ownership: owns its parameter descriptors and, after forward(training), the activations backward
// needs (until the next forward or release_saved()).
// Thread-safety: none; one thread drives a layer.
#include <cstdint>
#include <string>
#include <vector>

#include "nnkit/error.h"
#include "nnkit/layer.h"
#include "nnkit/plugin.h"

namespace nnkit::ffn {
namespace {

class SwiGluFeedForward final : public FeedForward {
 public:
  explicit SwiGluFeedForward(const CreateArgs& args)
      : ffn_dim_(args.options.get_int("ffn_dim")), hidden_(args.dims.hidden_dim) {
    if (ffn_dim_ < 1) args.options.fail("ffn_dim", "must be >= 1");
    if (hidden_ <= 0) {
      throw ConfigError(args.options.component(),
                        "model hidden_dim must be set (got " + std::to_string(hidden_) + ")");
    }
    gate_proj_ = add_parameter("gate_proj.weight", {ffn_dim_, hidden_}, kInitStd);
    up_proj_ = add_parameter("up_proj.weight", {ffn_dim_, hidden_}, kInitStd);
    down_proj_ = add_parameter("down_proj.weight", {hidden_, ffn_dim_}, kInitStd);
  }

  Tensor forward(ForwardContext& ctx, const Tensor& x) override {
    Backend& backend = *ctx.backend;
    NNKIT_CHECK_SHAPE(
        x.rank() == 2 && x.dim(1) == hidden_, id(),
        "forward expects x of shape (N, " + std::to_string(hidden_) + "), got " + describe(x));
    const int64_t rows = x.dim(0);
    Tensor h_gate = backend.empty({rows, ffn_dim_}, x.dtype());     // (N, F) = x Wg^T
    Tensor h_up = backend.empty({rows, ffn_dim_}, x.dtype());       // (N, F) = x Wu^T
    Tensor activated = backend.empty({rows, ffn_dim_}, x.dtype());  // (N, F) = silu(h_gate) * h_up
    backend.gemm(x, false, value(gate_proj_), true, h_gate);
    backend.gemm(x, false, value(up_proj_), true, h_up);
    backend.swiglu_forward(h_gate, h_up, activated);
    Tensor y = backend.empty({rows, hidden_}, x.dtype());  // (N, C) = activated Wd^T
    backend.gemm(activated, false, value(down_proj_), true, y);
    if (ctx.training) {
      saved_ = Saved{x, h_gate, h_up, activated};
    } else {
      release_saved();
    }
    return y;
  }

  Tensor backward(ForwardContext& ctx, const Tensor& dy) override {
    if (!saved_.x.defined()) throw Error(id(), "backward() needs a preceding forward(training)");
    Backend& backend = *ctx.backend;
    const int64_t rows = saved_.x.dim(0);
    NNKIT_CHECK_SHAPE(dy.rank() == 2 && dy.dim(0) == rows && dy.dim(1) == hidden_, id(),
                      "backward expects dy shaped like x, got " + describe(dy));
    // Forward read in reverse. y = a Wd^T: dWd += dy^T a (accumulates); da = dy Wd.
    backend.gemm(dy, true, saved_.activated, false, grad(down_proj_), 1.0f, 1.0f);
    const DType dtype = saved_.x.dtype();
    Tensor dactivated = backend.empty({rows, ffn_dim_}, dtype);
    backend.gemm(dy, false, value(down_proj_), false, dactivated);
    // a = silu(h_gate) * h_up.
    Tensor dh_gate = backend.empty({rows, ffn_dim_}, dtype);
    Tensor dh_up = backend.empty({rows, ffn_dim_}, dtype);
    backend.swiglu_backward(dactivated, saved_.h_gate, saved_.h_up, dh_gate, dh_up);
    // h_gate = x Wg^T, h_up = x Wu^T: dWg, dWu accumulate; dx = dh_gate Wg + dh_up Wu.
    backend.gemm(dh_gate, true, saved_.x, false, grad(gate_proj_), 1.0f, 1.0f);
    backend.gemm(dh_up, true, saved_.x, false, grad(up_proj_), 1.0f, 1.0f);
    Tensor dx = backend.empty({rows, hidden_}, dtype);
    backend.gemm(dh_gate, false, value(gate_proj_), false, dx);
    backend.gemm(dh_up, false, value(up_proj_), false, dx, 1.0f, 1.0f);
    return dx;
  }

  void release_saved() override { saved_ = Saved{}; }

 private:
  static constexpr float kInitStd = 0.02f;

  struct Saved {
    Tensor x;          // (N, C)
    Tensor h_gate;     // (N, F)
    Tensor h_up;       // (N, F)
    Tensor activated;  // (N, F)
  };

  int64_t ffn_dim_;       // F
  int64_t hidden_;        // C
  size_t gate_proj_ = 0;  // "gate_proj.weight" (F, C)
  size_t up_proj_ = 0;    // "up_proj.weight" (F, C)
  size_t down_proj_ = 0;  // "down_proj.weight" (C, F)
  Saved saved_;
};

std::vector<OptionSpec> swiglu_ffn_options() {
  return {
      {"ffn_dim", OptionType::kInt, "", 1.0, std::nullopt, "hidden width F (>= 1)"},
  };
}

Component* create_swiglu_ffn(const CreateArgs& args) {
  return new SwiGluFeedForward(args);
}

}  // namespace
}  // namespace nnkit::ffn

NNKIT_PLUGIN(ffn, swiglu, "0.1.0", "dense SwiGLU feed-forward (Llama MLP)",
             &nnkit::ffn::swiglu_ffn_options, &nnkit::ffn::create_swiglu_ffn)
