// Purpose: `moe/swiglu`: E SwiGLU expert FFNs, expert_e(x) = W2_e (silu(W1_e x) * (W3_e x)), with
// HF Mixtral names ("experts.<e>.w1.weight" gate, "w3" up, "w2" down). Dispatch and combine:
// the router has sorted the routed (token, slot) pairs by expert on the device (Routing::token,
// slot, offsets); one gather brings their rows together, each expert runs dense products on its
// contiguous block (sized by the host copy of the offsets), and one weighted scatter-add
// combines y[n] += gate * y_e. Every computation is a Backend op; nothing per token touches the
// host. In the padded layout while decoding (a few rows per expert, counts on the device) the
// products are two launches over all experts: moe_grouped_swiglu_nt (gate, up and the SwiGLU)
// and moe_grouped_gemm_nt (down), and moe_combine_rows writes y (no fill, no gather of the
// gates). Under expert parallelism (ModelDims::expert_begin/end) it holds a block of the
// experts and is driven with a Routing over that block. Activations are in x's dtype (bf16 on a
// bf16 CUDA backend); gates and dgate are f32. Ownership: owns its parameter descriptors and, after
// forward_routed(training), the dispatch lists and activations backward needs (until the next
// forward or release_saved()). Thread-safety: none; one thread drives a layer.
#include <cstdint>
#include <string>
#include <vector>

#include "nnkit/error.h"
#include "nnkit/layer.h"
#include "nnkit/plugin.h"

namespace nnkit::moe {
namespace {

class SwiGluExperts final : public Experts {
 public:
  explicit SwiGluExperts(const CreateArgs& args)
      : n_experts_(args.options.get_int("n_experts")),
        ffn_dim_(args.options.get_int("ffn_dim")),
        hidden_(args.dims.hidden_dim) {
    if (n_experts_ < 1) args.options.fail("n_experts", "must be >= 1");
    if (ffn_dim_ < 1) args.options.fail("ffn_dim", "must be >= 1");
    if (hidden_ <= 0) {
      throw ConfigError(args.options.component(),
                        "model hidden_dim must be set (got " + std::to_string(hidden_) + ")");
    }
    // Expert parallelism (ModelDims::expert_begin/end): this instance holds a block of the
    // experts, named with their global index so that checkpoints hold the one-rank names.
    first_ = args.dims.expert_begin;
    const int64_t last = args.dims.expert_end < 0 ? n_experts_ : args.dims.expert_end;
    if (first_ < 0 || last <= first_ || last > n_experts_) {
      throw ConfigError(args.options.component(), "expert shard [" + std::to_string(first_) + ", " +
                                                      std::to_string(last) +
                                                      ") is not a non-empty block of the " +
                                                      std::to_string(n_experts_) + " experts");
    }
    local_ = last - first_;
    for (int64_t e = first_; e < last; ++e) {
      const std::string prefix = "experts." + std::to_string(e) + ".";
      ExpertWeights w;
      w.gate_proj = add_parameter(prefix + "w1.weight", {ffn_dim_, hidden_}, kInitStd);
      w.down_proj = add_parameter(prefix + "w2.weight", {hidden_, ffn_dim_}, kInitStd);
      w.up_proj = add_parameter(prefix + "w3.weight", {ffn_dim_, hidden_}, kInitStd);
      weights_.push_back(w);
    }
  }

  int64_t n_experts() const override { return n_experts_; }
  int64_t parameters_per_expert() const override { return 3 * hidden_ * ffn_dim_; }
  void release_saved() override { saved_ = Saved{}; }

  Tensor forward_routed(ForwardContext& ctx, const Tensor& x, const Routing& routing) override {
    Backend& backend = *ctx.backend;
    NNKIT_CHECK_SHAPE(x.rank() == 2 && x.dim(1) == hidden_ && x.dim(0) == routing.n_tokens, id(),
                      "forward_routed expects x of shape (N, " + std::to_string(hidden_) +
                          ") with N = routing.n_tokens, got " + describe(x));
    NNKIT_CHECK_SHAPE(routing.n_experts == local_ &&
                          static_cast<int64_t>(routing.offsets.size()) == local_ + 1 &&
                          routing.n_routed == routing.offsets.back() &&
                          (routing.n_routed == 0 || routing.token.numel() >= routing.n_routed),
                      id(),
                      "routing does not match the " + std::to_string(local_) +
                          " experts held here (expected offsets for each expert and the "
                          "routed rows)");
    const int64_t n_tokens = routing.n_tokens;
    Dispatch dispatch;
    dispatch.n_routed = routing.n_routed;
    dispatch.offset = routing.offsets;
    if (dispatch.n_routed > 0) {
      dispatch.token = routing.token.slice_rows(0, dispatch.n_routed);
      dispatch.slot = routing.slot.slice_rows(0, dispatch.n_routed);
    }
    const DType dtype = x.dtype();

    // Decoding in the padded layout: the whole block (gather, both products, combine) is one
    // backend op that reads only the chosen experts' weights, sized on the device (what a
    // recorded step needs).
    const bool grouped = !ctx.training && routing.kept_offsets.defined() &&
                         routing.padded_capacity >= 1 && routing.padded_capacity <= 16 &&
                         dispatch.n_routed > 0;
    if (grouped) {
      std::vector<Tensor> gate_w, up_w, down_w;
      for (const ExpertWeights& w : weights_) {
        gate_w.push_back(value(w.gate_proj));
        up_w.push_back(value(w.up_proj));
        down_w.push_back(value(w.down_proj));
      }
      Tensor y = backend.empty({n_tokens, hidden_}, dtype);  // every row is written
      backend.moe_swiglu_experts_padded(x, dispatch.token, dispatch.slot,
                                        routing.gate.view({n_tokens * routing.top_k}), gate_w, up_w,
                                        down_w, routing.kept_offsets, routing.padded_capacity, y);
      release_saved();
      return y;
    }
    Tensor y = backend.zeros({n_tokens, hidden_}, dtype);  // (N, C)
    Saved saved;
    if (dispatch.n_routed > 0) {
      const int64_t m = dispatch.n_routed;
      // Dispatch: the routed rows of x and their gates, grouped by expert.
      saved.x_routed = backend.empty({m, hidden_}, dtype);
      backend.gather_rows(x, dispatch.token, saved.x_routed);
      saved.gate_routed = backend.empty({m, 1});
      backend.gather_rows(routing.gate.view({n_tokens * routing.top_k, 1}), dispatch.slot,
                          saved.gate_routed);
      saved.h_gate = backend.empty({m, ffn_dim_}, dtype);
      saved.h_up = backend.empty({m, ffn_dim_}, dtype);
      saved.activated = backend.empty({m, ffn_dim_}, dtype);
      saved.y_routed = backend.empty({m, hidden_}, dtype);
      for (int64_t e = 0; e < local_; ++e) {
        const int64_t begin = dispatch.offset[e];
        const int64_t end = dispatch.offset[e + 1];
        if (begin == end) continue;
        const ExpertWeights& w = weights_[static_cast<size_t>(e)];
        const Tensor xe = saved.x_routed.slice_rows(begin, end);          // (n_e, C)
        const Tensor h_gate = saved.h_gate.slice_rows(begin, end);        // (n_e, F) = xe W1^T
        const Tensor h_up = saved.h_up.slice_rows(begin, end);            // (n_e, F) = xe W3^T
        const Tensor activated = saved.activated.slice_rows(begin, end);  // silu(h_gate) * h_up
        backend.gemm(xe, false, value(w.gate_proj), true, h_gate);
        backend.gemm(xe, false, value(w.up_proj), true, h_up);
        backend.swiglu_forward(h_gate, h_up, activated);
        backend.gemm(activated, false, value(w.down_proj), true,
                     saved.y_routed.slice_rows(begin, end));  // (n_e, C) = activated W2^T
      }
      // Combine: y[token] += gate * y_routed (in expert order; deterministic).
      backend.scatter_add_rows(saved.y_routed, dispatch.token, saved.gate_routed.view({m}), y);
    }

    release_saved();
    if (ctx.training) {
      saved.dispatch = std::move(dispatch);
      saved.n_tokens = n_tokens;
      saved.top_k = routing.top_k;
      saved_ = std::move(saved);
    }
    return y;
  }

  Tensor backward_routed(ForwardContext& ctx, const Tensor& dy, Tensor& dgate) override {
    if (saved_.n_tokens < 0) {
      throw Error(id(), "backward_routed() needs a preceding forward_routed(training)");
    }
    Backend& backend = *ctx.backend;
    const int64_t n_tokens = saved_.n_tokens;
    const int64_t n_slots = n_tokens * saved_.top_k;
    NNKIT_CHECK_SHAPE(dy.rank() == 2 && dy.dim(0) == n_tokens && dy.dim(1) == hidden_, id(),
                      "backward_routed expects dy of shape (N, C), got " + describe(dy));
    const Dispatch& dispatch = saved_.dispatch;
    const DType dtype = saved_.x_routed.defined() ? saved_.x_routed.dtype() : dy.dtype();
    Tensor dx = backend.zeros({n_tokens, hidden_}, dtype);  // (N, C)
    Tensor dgate_flat = backend.zeros({n_slots, 1});        // (N*k, 1); dropped slots stay 0
    dgate = dgate_flat.view({n_tokens, saved_.top_k});
    if (dispatch.n_routed == 0) return dx;
    const int64_t m = dispatch.n_routed;

    // Forward read in reverse. Combine y[token] += gate * y_routed:
    //   dgate[slot] = <dy[token], y_routed>;  dy_routed = gate * dy[token].
    Tensor dy_routed = backend.empty({m, hidden_}, dtype);
    backend.gather_rows(dy, dispatch.token, dy_routed);
    Tensor dgate_routed = backend.empty({m});
    backend.row_dot(dy_routed, saved_.y_routed, dgate_routed);
    backend.scatter_add_rows(dgate_routed.view({m, 1}), dispatch.slot, Tensor(), dgate_flat);
    backend.scale_rows(dy_routed, saved_.gate_routed.view({m}));

    Tensor dactivated = backend.empty({m, ffn_dim_}, dtype);
    Tensor dh_gate = backend.empty({m, ffn_dim_}, dtype);
    Tensor dh_up = backend.empty({m, ffn_dim_}, dtype);
    Tensor dx_routed = backend.empty({m, hidden_}, dtype);
    for (int64_t e = 0; e < local_; ++e) {
      const int64_t begin = dispatch.offset[e];
      const int64_t end = dispatch.offset[e + 1];
      if (begin == end) continue;
      const ExpertWeights& w = weights_[static_cast<size_t>(e)];
      const Tensor dye = dy_routed.slice_rows(begin, end);  // (n_e, C)
      const Tensor xe = saved_.x_routed.slice_rows(begin, end);
      const Tensor da = dactivated.slice_rows(begin, end);  // (n_e, F)
      const Tensor dg = dh_gate.slice_rows(begin, end);
      const Tensor du = dh_up.slice_rows(begin, end);
      const Tensor dxe = dx_routed.slice_rows(begin, end);
      // y_e = a W2^T: dW2 += dy_e^T a (accumulates); da = dy_e W2.
      backend.gemm(dye, true, saved_.activated.slice_rows(begin, end), false, grad(w.down_proj),
                   1.0f, 1.0f);
      backend.gemm(dye, false, value(w.down_proj), false, da);
      // a = silu(h_gate) * h_up.
      backend.swiglu_backward(da, saved_.h_gate.slice_rows(begin, end),
                              saved_.h_up.slice_rows(begin, end), dg, du);
      // h_gate = xe W1^T, h_up = xe W3^T: dW1, dW3 accumulate; dxe = dh_gate W1 + dh_up W3.
      backend.gemm(dg, true, xe, false, grad(w.gate_proj), 1.0f, 1.0f);
      backend.gemm(du, true, xe, false, grad(w.up_proj), 1.0f, 1.0f);
      backend.gemm(dg, false, value(w.gate_proj), false, dxe);
      backend.gemm(du, false, value(w.up_proj), false, dxe, 1.0f, 1.0f);
    }
    // Dispatch gathered x[token]: its gradient scatters back, one add per routed slot.
    backend.scatter_add_rows(dx_routed, dispatch.token, Tensor(), dx);
    return dx;
  }

 private:
  static constexpr float kInitStd = 0.02f;

  struct ExpertWeights {
    size_t gate_proj = 0;  // "experts.<e>.w1.weight" (F, C)
    size_t down_proj = 0;  // "experts.<e>.w2.weight" (C, F)
    size_t up_proj = 0;    // "experts.<e>.w3.weight" (F, C)
  };

  // The kept (token, slot) pairs grouped by expert (from Routing); local expert e owns rows
  // [offset[e], offset[e+1]).
  struct Dispatch {
    int64_t n_routed = 0;         // M = kept slots
    std::vector<int64_t> offset;  // (local_ + 1)
    Tensor token;                 // (M) i32 token row of each routed slot
    Tensor slot;                  // (M) i32 flat slot n*k + rank (index into the (N*k) gates)
  };

  struct Saved {
    int64_t n_tokens = -1;  // N; -1 = nothing saved
    int64_t top_k = 0;
    Dispatch dispatch;
    Tensor x_routed;     // (M, C)
    Tensor gate_routed;  // (M, 1)
    Tensor h_gate;       // (M, F)
    Tensor h_up;         // (M, F)
    Tensor activated;    // (M, F)
    Tensor y_routed;     // (M, C) expert outputs before the gate
  };

  int64_t n_experts_;                   // E, all experts of the layer
  int64_t first_ = 0;                   // the first expert held here (expert parallelism)
  int64_t local_ = 0;                   // experts held here: weights_[e] is expert first_ + e
  int64_t ffn_dim_;                     // F
  int64_t hidden_;                      // C
  std::vector<ExpertWeights> weights_;  // (local_)
  Saved saved_;
};

std::vector<OptionSpec> swiglu_experts_options() {
  return {
      {"n_experts", OptionType::kInt, "", 1.0, std::nullopt, "number of experts E (>= 1)"},
      {"ffn_dim", OptionType::kInt, "", 1.0, std::nullopt, "hidden width F of each expert (>= 1)"},
  };
}

Component* create_swiglu_experts(const CreateArgs& args) {
  return new SwiGluExperts(args);
}

}  // namespace
}  // namespace nnkit::moe

NNKIT_PLUGIN(moe, swiglu, "0.1.0", "SwiGLU expert FFNs with sorted dispatch and weighted combine",
             &nnkit::moe::swiglu_experts_options, &nnkit::moe::create_swiglu_experts)
