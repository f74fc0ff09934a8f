// Purpose: `attention/mqa`: causal self-attention with grouped key/value heads (MHA when
// n_kv_heads == n_heads, GQA in between, MQA at 1) and rotate-half RoPE with NTK-aware base
// scaling (base' = base * alpha^(d / (d - 2))). Parameters use the HF Llama/Mixtral names and
// (out, in) layout, y = x W^T. Every computation is a Backend op, so the layer runs unchanged on
// any backend.
// Ownership: owns its parameter descriptors, the activations saved by forward(training) (until the
// next forward or release_saved()) and the KV cache (until clear_cache() or destruction).
// Thread-safety: none; one thread drives a layer.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "nnkit/error.h"
#include "nnkit/layer.h"
#include "nnkit/plugin.h"

namespace nnkit::attention {
namespace {

class MultiQueryAttention final : public Attention {
 public:
  explicit MultiQueryAttention(const CreateArgs& args)
      : n_heads_(args.options.get_int("n_heads")),
        n_kv_heads_(args.options.get_int("n_kv_heads")),
        head_dim_(args.options.get_int("head_dim")),
        hidden_(args.dims.hidden_dim) {
    if (args.backend != nullptr) cache_dtype_ = args.backend->compute_dtype();
    const Options& options = args.options;
    if (n_heads_ < 1) options.fail("n_heads", "must be >= 1");
    if (n_kv_heads_ < 1) options.fail("n_kv_heads", "must be >= 1");
    if (head_dim_ < 2 || head_dim_ % 2 != 0) {
      options.fail("head_dim", "(" + std::to_string(head_dim_) +
                                   ") must be even and >= 2 (RoPE rotates pairs of dimensions)");
    }
    if (n_kv_heads_ > n_heads_) {
      options.fail("n_kv_heads", "(" + std::to_string(n_kv_heads_) + ") must not exceed n_heads (" +
                                     std::to_string(n_heads_) + ")");
    }
    if (n_heads_ % n_kv_heads_ != 0) {
      options.fail("n_heads", "(" + std::to_string(n_heads_) +
                                  ") is not divisible by n_kv_heads (" +
                                  std::to_string(n_kv_heads_) + ")");
    }
    const double base = options.get_float("rope.base");
    const double alpha = options.get_float("rope.ntk_alpha");
    if (!(base > 0.0)) options.fail("rope.base", "must be > 0");
    if (!(alpha >= 1.0)) options.fail("rope.ntk_alpha", "must be >= 1 (1 disables NTK scaling)");
    const double d = static_cast<double>(head_dim_);
    rope_base_ = base * std::pow(alpha, d / (d - 2.0));
    if (hidden_ <= 0) {
      throw ConfigError(options.component(),
                        "model hidden_dim must be set (got " + std::to_string(hidden_) + ")");
    }
    const int64_t q_width = n_heads_ * head_dim_;
    const int64_t kv_width = n_kv_heads_ * head_dim_;
    q_proj_ = add_parameter("q_proj.weight", {q_width, hidden_}, kInitStd);
    k_proj_ = add_parameter("k_proj.weight", {kv_width, hidden_}, kInitStd);
    v_proj_ = add_parameter("v_proj.weight", {kv_width, hidden_}, kInitStd);
    o_proj_ = add_parameter("o_proj.weight", {hidden_, q_width}, kInitStd);
  }

  // ---- Attention -------------------------------------------------------------------------------

  void init_cache(Backend& backend, int64_t batch, int64_t capacity) override {
    if (batch < 1 || capacity < 1) {
      throw ShapeError(id(), "init_cache needs batch >= 1 and capacity >= 1, got " +
                                 std::to_string(batch) + " and " + std::to_string(capacity));
    }
    cache_dtype_ = backend.compute_dtype();
    if (cache_batch_ != batch || cache_capacity_ != capacity || !k_cache_.defined() ||
        k_cache_.dtype() != cache_dtype_) {
      // The cache holds K/V in the compute dtype (bf16 on a bf16 CUDA backend).
      k_cache_ = backend.empty({batch * capacity, kv_width()}, backend.compute_dtype());
      v_cache_ = backend.empty({batch * capacity, kv_width()}, backend.compute_dtype());
      cache_batch_ = batch;
      cache_capacity_ = capacity;
    }
    // Rows beyond cache_len are never read, but zeros keep a half-written cache deterministic.
    backend.fill(k_cache_, 0.0f);
    backend.fill(v_cache_, 0.0f);
    // The decode step's three projections as one product: the weights stacked [q; k; v], read
    // here (the weights a generation decodes with are the ones it starts with).
    const Tensor& wq = value(q_proj_);
    qkv_proj_ = backend.empty({q_width() + 2 * kv_width(), hidden_}, wq.dtype());
    backend.copy(qkv_proj_.slice_rows(0, q_width()), wq);
    backend.copy(qkv_proj_.slice_rows(q_width(), q_width() + kv_width()), value(k_proj_));
    backend.copy(qkv_proj_.slice_rows(q_width() + kv_width(), q_width() + 2 * kv_width()),
                 value(v_proj_));
  }

  void clear_cache() override {
    k_cache_ = Tensor();
    v_cache_ = Tensor();
    qkv_proj_ = Tensor();
    cache_batch_ = 0;
    cache_capacity_ = 0;
  }

  int64_t cache_bytes_per_token() const override {
    return 2 * kv_width() * static_cast<int64_t>(dtype_size(cache_dtype_));
  }

  double rope_base() const override { return rope_base_; }

  // ---- Layer -----------------------------------------------------------------------------------
  // While decoding, an RMSNorm in front folds into the qkv product
  // (Backend::add_rmsnorm_gemm_nt: one launch on CUDA where the norm and the product took two).
  Tensor forward_with_input_norm(ForwardContext& ctx, const Tensor& x, const Tensor& residual,
                                 Norm& norm, Tensor& sum) override {
    Tensor weight;
    float eps = 0.0f;
    if (ctx.training || !device_length_decoding(ctx) || !norm.rms_parameters(weight, eps)) {
      return Attention::forward_with_input_norm(ctx, x, residual, norm, sum);
    }
    Backend& backend = *ctx.backend;
    const int64_t rows = check_input(ctx, x);
    NNKIT_CHECK_SHAPE(residual.shape() == x.shape(), id(),
                      "forward_with_input_norm expects the residual shaped like x " + describe(x) +
                          ", got " + describe(residual));
    sum = backend.empty(x.shape(), x.dtype());
    Tensor qkv = backend.empty({rows, q_width() + 2 * kv_width()}, x.dtype());
    backend.add_rmsnorm_gemm_nt(x, residual, weight, eps, qkv_proj_, sum, qkv);
    return decode_from_qkv(ctx, qkv);
  }

  Tensor forward(ForwardContext& ctx, const Tensor& x) override {
    Backend& backend = *ctx.backend;
    const int64_t rows = check_input(ctx, x);
    if (ctx.training && ctx.use_kv_cache) {
      throw Error(id(), "training forward with the KV cache is not supported (decoding only)");
    }

    if (device_length_decoding(ctx)) {
      // Device-resident decoding: lengths come from device memory (a recorded step replays
      // for every token), so the append and the attention read them there. One product gives
      // q, k and v; one op rotates q and k, appends k and v to the caches and attends (one
      // launch on CUDA for short caches).
      Tensor qkv = backend.empty({rows, q_width() + 2 * kv_width()}, x.dtype());
      backend.gemm(x, false, qkv_proj_, true, qkv);
      return decode_from_qkv(ctx, qkv);
    }

    // Projections: q = x Wq^T (N, H*D); k = x Wk^T, v = x Wv^T (N, Hkv*D).
    Tensor q = backend.empty({rows, q_width()}, x.dtype());
    Tensor k = backend.empty({rows, kv_width()}, x.dtype());
    Tensor v = backend.empty({rows, kv_width()}, x.dtype());
    backend.gemm(x, false, value(q_proj_), true, q);
    backend.gemm(x, false, value(k_proj_), true, k);
    backend.gemm(x, false, value(v_proj_), true, v);
    // Positions enter through rotating q and k (v carries no position).
    backend.rope(q, ctx.positions, n_heads_, head_dim_, static_cast<float>(rope_base_), false);
    backend.rope(k, ctx.positions, n_kv_heads_, head_dim_, static_cast<float>(rope_base_), false);

    AttentionShape shape = attention_shape(ctx.batch, ctx.seq);
    Tensor keys = k;
    Tensor values = v;
    if (ctx.use_kv_cache) {
      append_to_cache(ctx, k, v);
      keys = k_cache_;
      values = v_cache_;
      shape.kv_len = ctx.cache_len + ctx.seq;
      shape.kv_capacity = cache_capacity_;
      shape.q_offset = ctx.cache_len;
    }
    Tensor attended = backend.empty({rows, q_width()}, x.dtype());  // (N, H*D)
    Tensor lse = backend.empty({rows, n_heads_});                   // (N, H) f32
    backend.attention_forward(q, keys, values, ctx.kv_start, attended, lse, shape);

    Tensor y = backend.empty({rows, hidden_}, x.dtype());  // (N, C) = attended Wo^T
    backend.gemm(attended, false, value(o_proj_), true, y);

    release_saved();
    if (ctx.training) {
      saved_.x = x;
      saved_.q = q;
      saved_.k = k;
      saved_.v = v;
      saved_.attended = attended;
      saved_.lse = lse;
      saved_.positions = ctx.positions;
      saved_.kv_start = ctx.kv_start;
      saved_.shape = shape;
    }
    return y;
  }

  Tensor backward(ForwardContext& ctx, const Tensor& dy) override {
    if (!saved_.x.defined()) throw Error(id(), "backward() needs a preceding forward(training)");
    Backend& backend = *ctx.backend;
    const int64_t rows = saved_.x.dim(0);
    NNKIT_CHECK_SHAPE(dy.rank() == 2 && dy.dim(0) == rows && dy.dim(1) == hidden_, id(),
                      "backward expects dy shaped like x, got " + describe(dy));
    const float base = static_cast<float>(rope_base_);

    // y = attended Wo^T: dWo += dy^T attended (accumulates); dattended = dy Wo.
    backend.gemm(dy, true, saved_.attended, false, grad(o_proj_), 1.0f, 1.0f);
    const DType dtype = saved_.x.dtype();
    Tensor dattended = backend.empty({rows, q_width()}, dtype);
    backend.gemm(dy, false, value(o_proj_), false, dattended);

    // attended = attention(q, k, v): dq, dk, dv are overwritten (dk, dv summed over the query
    // heads that share a KV head).
    Tensor dq = backend.empty({rows, q_width()}, dtype);
    Tensor dk = backend.empty({rows, kv_width()}, dtype);
    Tensor dv = backend.empty({rows, kv_width()}, dtype);
    backend.attention_backward(dattended, saved_.q, saved_.k, saved_.v, saved_.kv_start,
                               saved_.attended, saved_.lse, dq, dk, dv, saved_.shape);

    // q, k were rotated by +angle; the rotation's transpose is the rotation by -angle.
    backend.rope(dq, saved_.positions, n_heads_, head_dim_, base, true);
    backend.rope(dk, saved_.positions, n_kv_heads_, head_dim_, base, true);

    // q = x Wq^T, k = x Wk^T, v = x Wv^T: dW += d(out)^T x (accumulates); dx sums the three paths.
    backend.gemm(dq, true, saved_.x, false, grad(q_proj_), 1.0f, 1.0f);
    backend.gemm(dk, true, saved_.x, false, grad(k_proj_), 1.0f, 1.0f);
    backend.gemm(dv, true, saved_.x, false, grad(v_proj_), 1.0f, 1.0f);
    Tensor dx = backend.empty({rows, hidden_}, dtype);
    backend.gemm(dq, false, value(q_proj_), false, dx);
    backend.gemm(dk, false, value(k_proj_), false, dx, 1.0f, 1.0f);
    backend.gemm(dv, false, value(v_proj_), false, dx, 1.0f, 1.0f);
    return dx;
  }

  void release_saved() override { saved_ = Saved{}; }

 private:
  // x's rows (B*T), after the checks every forward makes.
  int64_t check_input(const ForwardContext& ctx, const Tensor& x) const {
    const int64_t rows = x.rank() == 2 ? x.dim(0) : -1;
    NNKIT_CHECK_SHAPE(x.rank() == 2 && x.dim(1) == hidden_ && rows == ctx.batch * ctx.seq, id(),
                      "forward expects x of shape (B*T, C) = (" +
                          std::to_string(ctx.batch * ctx.seq) + ", " + std::to_string(hidden_) +
                          "), got " + describe(x));
    NNKIT_CHECK_SHAPE(ctx.positions.defined() && ctx.positions.numel() == rows, id(),
                      "forward needs ctx.positions with one position per row");
    return rows;
  }

  // A decode step with its lengths in device memory (one token per cached sequence).
  bool device_length_decoding(const ForwardContext& ctx) const {
    if (!ctx.use_kv_cache || !ctx.cache_len_device.defined() || ctx.training) return false;
    if (!k_cache_.defined()) throw Error(id(), "KV-cache forward before init_cache()");
    NNKIT_CHECK_SHAPE(ctx.seq == 1 && ctx.batch == cache_batch_ && ctx.kv_len_device.defined(),
                      id(),
                      "device-length decoding takes one token per cached sequence (" +
                          std::to_string(cache_batch_) + "), got batch " +
                          std::to_string(ctx.batch) + " x " + std::to_string(ctx.seq));
    return true;
  }

  // The decode step after its qkv product: rotation, append and attention in one op, then o.
  Tensor decode_from_qkv(ForwardContext& ctx, const Tensor& qkv) {
    Backend& backend = *ctx.backend;
    const int64_t rows = qkv.dim(0);
    AttentionShape shape = attention_shape(ctx.batch, 1);
    shape.kv_capacity = cache_capacity_;
    Tensor attended = backend.empty({rows, q_width()}, qkv.dtype());
    backend.attention_decode_rope(qkv, ctx.positions, static_cast<float>(rope_base_), k_cache_,
                                  v_cache_, ctx.cache_len_device, ctx.kv_start, ctx.kv_len_device,
                                  attended, shape);
    Tensor y = backend.empty({rows, hidden_}, qkv.dtype());
    backend.gemm(attended, false, value(o_proj_), true, y);
    release_saved();
    return y;
  }

  static constexpr float kInitStd = 0.02f;

  // What backward needs from the last training forward.
  struct Saved {
    Tensor x;          // (N, C)
    Tensor q;          // (N, H*D) after RoPE
    Tensor k;          // (N, Hkv*D) after RoPE
    Tensor v;          // (N, Hkv*D)
    Tensor attended;   // (N, H*D) attention output before o_proj
    Tensor lse;        // (N, H) log-sum-exp of the scaled scores
    Tensor positions;  // (N) i32
    Tensor kv_start;   // (B) i32 or undefined
    AttentionShape shape;
  };

  int64_t q_width() const { return n_heads_ * head_dim_; }
  int64_t kv_width() const { return n_kv_heads_ * head_dim_; }

  AttentionShape attention_shape(int64_t batch, int64_t seq) const {
    AttentionShape shape;
    shape.batch = batch;
    shape.q_len = seq;
    shape.kv_len = seq;
    shape.kv_capacity = seq;
    shape.n_heads = n_heads_;
    shape.n_kv_heads = n_kv_heads_;
    shape.head_dim = head_dim_;
    shape.q_offset = 0;
    shape.scale = 1.0f / std::sqrt(static_cast<float>(head_dim_));
    return shape;
  }

  // Writes this call's rotated k and v (B*T rows) at rows [cache_len, cache_len + T) of each
  // sequence's block of the cache (B blocks of `capacity` rows).
  void append_to_cache(const ForwardContext& ctx, const Tensor& k, const Tensor& v) {
    if (!k_cache_.defined()) throw Error(id(), "KV-cache forward before init_cache()");
    if (ctx.batch != cache_batch_) {
      throw ShapeError(id(), "KV cache holds " + std::to_string(cache_batch_) +
                                 " sequences, the call has " + std::to_string(ctx.batch));
    }
    if (ctx.cache_len < 0 || ctx.cache_len + ctx.seq > cache_capacity_) {
      throw ShapeError(id(), "KV cache of " + std::to_string(cache_capacity_) +
                                 " tokens cannot take " + std::to_string(ctx.seq) + " more after " +
                                 std::to_string(ctx.cache_len));
    }
    for (int64_t b = 0; b < ctx.batch; ++b) {
      const int64_t first = b * cache_capacity_ + ctx.cache_len;
      const int64_t last = first + ctx.seq;
      ctx.backend->copy(k_cache_.slice_rows(first, last),
                        k.slice_rows(b * ctx.seq, (b + 1) * ctx.seq));
      ctx.backend->copy(v_cache_.slice_rows(first, last),
                        v.slice_rows(b * ctx.seq, (b + 1) * ctx.seq));
    }
  }

  int64_t n_heads_;     // H
  int64_t n_kv_heads_;  // Hkv
  int64_t head_dim_;    // D
  int64_t hidden_;      // C
  double rope_base_ = 0.0;
  size_t q_proj_ = 0;  // (H*D, C)
  size_t k_proj_ = 0;  // (Hkv*D, C)
  size_t v_proj_ = 0;  // (Hkv*D, C)
  size_t o_proj_ = 0;  // (C, H*D)
  Saved saved_;
  Tensor qkv_proj_;  // ((H + 2*Hkv)*D, C): [q; k; v] projections stacked by init_cache (decoding)
  Tensor k_cache_;   // (B*capacity, Hkv*D) rotated keys
  Tensor v_cache_;   // (B*capacity, Hkv*D)
  int64_t cache_batch_ = 0;
  int64_t cache_capacity_ = 0;
  DType cache_dtype_ = DType::kF32;  // the backend's compute dtype (K/V cache entries)
};

std::vector<OptionSpec> mqa_options() {
  return {
      {"n_heads", OptionType::kInt, "", 1.0, std::nullopt, "query heads H (>= 1)"},
      {"n_kv_heads", OptionType::kInt, "1", 1.0, std::nullopt,
       "key/value heads (>= 1, divides n_heads): 1 = MQA, n_heads = MHA"},
      {"head_dim", OptionType::kInt, "", 2.0, std::nullopt, "dimension per head D (even, >= 2)"},
      {"rope.base", OptionType::kFloat, "10000", 0.0, std::nullopt, "RoPE base (> 0)"},
      {"rope.ntk_alpha", OptionType::kFloat, "1.0", 1.0, std::nullopt,
       "NTK-aware context scaling (>= 1): base' = base * alpha^(D / (D - 2))"},
  };
}

Component* create_mqa(const CreateArgs& args) {
  return new MultiQueryAttention(args);
}

}  // namespace
}  // namespace nnkit::attention

NNKIT_PLUGIN(attention, mqa, "0.1.0",
             "causal multi-query / grouped-query attention with NTK-scaled rotate-half RoPE",
             &nnkit::attention::mqa_options, &nnkit::attention::create_mqa)
