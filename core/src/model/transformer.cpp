// Purpose: building and running the transformer (see model.h). Each backward below is its
// forward read in reverse; parameter gradients accumulate inside the components.
#include <cmath>
#include <cstdlib>

#include "model/moe_layer.h"
#include "nnkit/error.h"
#include "nnkit/model.h"

namespace nnkit {

namespace {

// Every layer maps (N, C) to (N, C) in its input's dtype, forward and backward. A plugin that
// breaks this is named here, at its own output, instead of failing later inside a backend op
// of the residual add that cannot know whose tensor it got.
const Tensor& checked_output(const Component& layer, const char* method, const Tensor& out,
                             const Tensor& input) {
  if (!out.defined() || out.shape() != input.shape() || out.dtype() != input.dtype()) {
    throw ShapeError(layer.id(), std::string(method) + " returned " +
                                     (out.defined() ? describe(out) : "an undefined tensor") +
                                     ", expected " + describe(input) +
                                     " (the shape and dtype of its input; a bug in the plugin)");
  }
  return out;
}

}  // namespace

struct Transformer::Block {
  std::shared_ptr<Norm> attn_norm;       // input_layernorm
  std::shared_ptr<Attention> attention;  // self_attn
  std::shared_ptr<Norm> ffn_norm;        // post_attention_layernorm
  std::shared_ptr<FeedForward> ffn;      // block_sparse_moe (MoeLayer) or mlp
  MoeLayer* moe = nullptr;               // ffn as MoE, when it is one
  // Expert parallelism: the parameter descriptors (no tensors) of the experts each shard
  // holds, indexed by shard; this model's own shard's entry is empty (moe->experts() has them).
  std::vector<std::vector<Parameter>> shard_experts;
  Tensor input;  // (N, C) kept for activation checkpointing

  // x: (N, C) -> (N, C).
  Tensor forward(ForwardContext& ctx, const Tensor& x) {
    Backend& be = *ctx.backend;
    const Tensor h = checked_output(*attn_norm, "forward", attn_norm->forward(ctx, x), x);
    Tensor attn_out = checked_output(*attention, "forward", attention->forward(ctx, h), x);
    Tensor mid = be.empty(x.shape(), x.dtype());
    be.add(mid, x, attn_out);
    const Tensor h2 = checked_output(*ffn_norm, "forward", ffn_norm->forward(ctx, mid), mid);
    Tensor ffn_out = checked_output(ffn_owner(), "forward", ffn->forward(ctx, h2), mid);
    Tensor out = be.empty(x.shape(), x.dtype());
    be.add(out, mid, ffn_out);
    return out;
  }

  // Inference: each residual add runs inside the norm that follows it
  // (Norm::forward_with_residual, one launch with norm/rmsnorm). On entry x + pending is the
  // block's input (pending undefined: x alone); on return x is the stream after attention and
  // pending the FFN output, which the next norm (or the final one) adds.
  void forward_fused(ForwardContext& ctx, Tensor& x, Tensor& pending) {
    Tensor attn_out;
    if (pending.defined()) {
      // The attention may fold the norm into its first product (decoding with an RMSNorm).
      Tensor sum;
      attn_out =
          checked_output(*attention, "forward_with_input_norm",
                         attention->forward_with_input_norm(ctx, x, pending, *attn_norm, sum), x);
      x = checked_output(*attention, "forward_with_input_norm (sum)", sum, x);
    } else {
      const Tensor h = checked_output(*attn_norm, "forward", attn_norm->forward(ctx, x), x);
      attn_out = checked_output(*attention, "forward", attention->forward(ctx, h), x);
    }
    // The feed-forward may fold its norm into its first op (an MoE layer's router, decoding).
    Tensor mid;
    pending = checked_output(ffn_owner(), "forward_with_input_norm",
                             ffn->forward_with_input_norm(ctx, x, attn_out, *ffn_norm, mid), x);
    x = checked_output(*ffn_norm, "forward_with_input_norm (sum)", mid, x);
  }

  // dout: (N, C) -> dx: (N, C). The residual adds pass the gradient through unchanged.
  Tensor backward(ForwardContext& ctx, const Tensor& dout) {
    Backend& be = *ctx.backend;
    const Tensor dh2 = checked_output(ffn_owner(), "backward", ffn->backward(ctx, dout), dout);
    Tensor dmid = checked_output(*ffn_norm, "backward", ffn_norm->backward(ctx, dh2), dout);
    be.add(dmid, dmid, dout);
    const Tensor dh = checked_output(*attention, "backward", attention->backward(ctx, dmid), dout);
    Tensor dx = checked_output(*attn_norm, "backward", attn_norm->backward(ctx, dh), dout);
    be.add(dx, dx, dmid);
    return dx;
  }

  // The plugin behind the block's feed-forward output: the experts of an MoE layer (their
  // forward_routed result is the layer's output), else the dense FFN.
  const Component& ffn_owner() const {
    return moe != nullptr ? static_cast<const Component&>(moe->experts()) : *ffn;
  }

  void release_saved() {
    attn_norm->release_saved();
    attention->release_saved();
    ffn_norm->release_saved();
    ffn->release_saved();
  }
};

struct Transformer::Activations {
  ForwardContext ctx;
  Tensor ids;      // (N) i32
  Tensor targets;  // (N) i32
  Tensor hidden;   // (N, C) final-norm output, input of the LM head
  Tensor logits;   // (N, V)
  int64_t valid_targets = 0;
  bool checkpointing = false;
};

// Device-resident decoding (begin_decode .. end_decode).
struct Transformer::DecodeState {
  int64_t batch = 0;
  std::vector<int32_t> kv_start;  // (B) host copy; empty = no padding
  Tensor ids;                     // (B) i32: the step's input tokens
  Tensor step_inputs;             // (B + 2) i32: positions | cache_len | kv_len
  Tensor positions;               // (B) i32: their RoPE positions
  Tensor cache_len;               // (1) i32: tokens already cached
  Tensor kv_len;                  // (1) i32: cache_len + 1
  Tensor kv_start_device;         // (B) i32 or undefined
  Tensor logits;                  // (B, V) f32: the last step's output
  int64_t steps = 0;              // steps run so far
  int64_t graph = -1;             // the recorded step, or -1
  bool record = false;            // the backend captures and recording has not failed
};

namespace {

uint64_t name_seed(uint64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ull ^ (seed * 0x9E3779B97F4A7C15ull);
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace

Transformer::Transformer(const RunConfig& config, const Registry& registry,
                         std::shared_ptr<Backend> backend, ExpertShard shard)
    : config_(config.model), backend_(std::move(backend)), shard_(shard) {
  if (shard_.count < 1 || shard_.index < 0 || shard_.index >= shard_.count) {
    throw ConfigError("model", "expert shard " + std::to_string(shard_.index) + " of " +
                                   std::to_string(shard_.count) + " does not exist");
  }
  const ModelConfig& m = config_;
  ModelDims dims{m.vocab_size, m.hidden_dim, m.n_layers, m.max_seq_len, -1, 0};
  Backend* be = backend_.get();
  auto make = [&](const PluginChoice& choice, auto* type_tag, const ModelDims& d) {
    using T = std::remove_pointer_t<decltype(type_tag)>;
    return registry.create<T>(choice.kind, choice.name, CreateArgs{choice.options, d, be});
  };

  Parameter embed;
  embed.name = "model.embed_tokens.weight";
  embed.shape = {m.vocab_size, m.hidden_dim};
  embed.init_std = static_cast<float>(m.init_std);
  embed.decay = false;
  embed.is_embedding = true;
  own_params_.push_back(embed);
  Parameter head;
  head.name = "lm_head.weight";
  head.shape = {m.vocab_size, m.hidden_dim};
  head.init_std = static_cast<float>(m.init_std);
  own_params_.push_back(head);

  for (int64_t layer = 0; layer < m.n_layers; ++layer) {
    ModelDims d = dims;
    d.layer_index = layer;
    auto block = std::make_unique<Block>();
    block->attn_norm = make(m.norm, static_cast<Norm*>(nullptr), d);
    block->attention = make(m.attention, static_cast<Attention*>(nullptr), d);
    block->ffn_norm = make(m.norm, static_cast<Norm*>(nullptr), d);
    if (m.is_moe) {
      auto experts = make(m.experts, static_cast<Experts*>(nullptr), d);
      d.n_experts = experts->n_experts();
      if (shard_.count > 1) {
        // Expert parallelism: one plugin instance per shard, each holding its block; the
        // others' are kept as descriptors only (a complete checkpoint names them all).
        const int64_t total = experts->n_experts();
        if (total % shard_.count != 0) {
          throw ConfigError("parallel", "parallel.expert (" + std::to_string(shard_.count) +
                                            ") does not divide the " + std::to_string(total) +
                                            " experts of " + experts->id());
        }
        const int64_t per = total / shard_.count;
        block->shard_experts.resize(static_cast<size_t>(shard_.count));
        for (int s = 0; s < shard_.count; ++s) {
          ModelDims sd = d;
          sd.n_experts = 0;
          sd.expert_begin = s * per;
          sd.expert_end = (s + 1) * per;
          auto part = make(m.experts, static_cast<Experts*>(nullptr), sd);
          if (part->n_experts() != total ||
              part->parameter_count() != per * part->parameters_per_expert()) {
            throw ConfigError(part->id(),
                              "with parallel.expert = " + std::to_string(shard_.count) +
                                  " it must hold only experts [" + std::to_string(sd.expert_begin) +
                                  ", " + std::to_string(sd.expert_end) + ") of " +
                                  std::to_string(total) +
                                  " (ModelDims::expert_begin/expert_end, "
                                  "plugin ABI 5), but it holds " +
                                  std::to_string(part->parameter_count()) + " parameters");
          }
          if (s == shard_.index) {
            experts = part;
          } else {
            block->shard_experts[static_cast<size_t>(s)] = part->parameters();
          }
        }
      }
      auto router = make(m.router, static_cast<Router*>(nullptr), d);
      auto moe = std::make_shared<MoeLayer>(router, experts);
      block->moe = moe.get();
      block->ffn = moe;
    } else {
      block->ffn = make(m.ffn, static_cast<FeedForward*>(nullptr), d);
    }
    blocks_.push_back(std::move(block));
  }
  final_norm_ = make(m.norm, static_cast<Norm*>(nullptr), dims);
  // Components name parameters relative to themselves ("q_proj.weight"); from here on every
  // parameter carries its full model name, which checkpoints and optimizer state use.
  visit_parameters([](const std::string& full_name, Parameter& p, int) { p.name = full_name; },
                   true);
  qualified_names_ = true;
}

Transformer::~Transformer() {
  end_decode();
}

void Transformer::for_each_parameter(
    const std::function<void(const std::string&, Parameter&)>& fn) {
  visit_parameters([&](const std::string& name, Parameter& p, int) { fn(name, p); }, false);
}

void Transformer::visit_parameters(
    const std::function<void(const std::string&, Parameter&, int)>& fn, bool every_shard) {
  // Names are qualified once, in the constructor; later visits see full names already.
  const bool qualified = !own_params_.empty() && qualified_names_;
  auto visit = [&](Layer& layer, const std::string& prefix, int shard = -1) {
    for (Parameter& p : layer.parameters()) fn(qualified ? p.name : prefix + p.name, p, shard);
  };
  fn(own_params_[0].name, own_params_[0], -1);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    Block& b = *blocks_[i];
    const std::string prefix = "model.layers." + std::to_string(i) + ".";
    visit(*b.attn_norm, prefix + "input_layernorm.");
    visit(*b.attention, prefix + "self_attn.");
    visit(*b.ffn_norm, prefix + "post_attention_layernorm.");
    if (b.moe != nullptr) {
      visit(b.moe->router(), prefix + "block_sparse_moe.");
      if (b.shard_experts.empty()) {
        visit(b.moe->experts(), prefix + "block_sparse_moe.");
      } else if (!every_shard) {
        visit(b.moe->experts(), prefix + "block_sparse_moe.", shard_.index);
      } else {
        for (int s = 0; s < shard_.count; ++s) {
          if (s == shard_.index) {
            visit(b.moe->experts(), prefix + "block_sparse_moe.", s);
            continue;
          }
          for (Parameter& p : b.shard_experts[static_cast<size_t>(s)]) {
            fn(qualified ? p.name : prefix + "block_sparse_moe." + p.name, p, s);
          }
        }
      }
    } else {
      visit(*b.ffn, prefix + "mlp.");
    }
  }
  visit(*final_norm_, "model.norm.");
  fn(own_params_[1].name, own_params_[1], -1);
}

std::vector<Parameter*> Transformer::sharded_expert_parameters() {
  std::vector<Parameter*> out;
  visit_parameters(
      [&](const std::string&, Parameter& p, int shard) {
        if (shard >= 0) out.push_back(&p);
      },
      false);
  return out;
}

std::vector<ParameterPlace> Transformer::parameter_layout() {
  std::vector<ParameterPlace> out;
  visit_parameters(
      [&](const std::string&, Parameter& p, int shard) {
        out.push_back({&p, shard});
      },
      true);
  return out;
}

void Transformer::set_communicator(Communicator* comm) {
  comm_ = comm;
  if (shard_.count < 2) return;
  if (comm == nullptr || comm->size() < shard_.count) {
    throw ConfigError("parallel", "expert shards need a communicator of at least " +
                                      std::to_string(shard_.count) + " ranks");
  }
  for (auto& b : blocks_) {
    if (b->moe == nullptr) continue;
    ExpertGroup group{comm, comm->rank() - shard_.index, shard_.count, shard_.index};
    b->moe->set_exchange(std::make_unique<ExpertExchange>(group, b->moe->experts().n_experts()));
  }
}

std::vector<Parameter*> Transformer::parameters() {
  std::vector<Parameter*> out;
  for_each_parameter([&](const std::string&, Parameter& p) { out.push_back(&p); });
  return out;
}

Parameter* Transformer::find_parameter(const std::string& name) {
  for (Parameter* p : parameters()) {
    if (p->name == name) return p;
  }
  return nullptr;
}

namespace {

// The model's sizes multiply user-chosen dims: counts that do not fit in 64 bits are refused
// with the dims that made them, before anything is allocated.
[[noreturn]] void model_too_large(const ModelConfig& m) {
  throw ConfigError("model", "the model's parameter count does not fit in 64 bits (vocab_size " +
                                 std::to_string(m.vocab_size) + ", hidden_dim " +
                                 std::to_string(m.hidden_dim) + ", n_layers " +
                                 std::to_string(m.n_layers) + "); check the sizes in the config");
}

}  // namespace

int64_t Transformer::parameter_count() const {
  int64_t n = 0;
  auto add = [&](const Parameter& p) {
    int64_t count = 0;
    try {
      count = shape_numel(p.shape);
    } catch (const ShapeError&) {
      model_too_large(config_);
    }
    if (__builtin_add_overflow(n, count, &n)) model_too_large(config_);
  };
  auto add_layer = [&](const Layer& layer) {
    for (const Parameter& p : layer.parameters()) add(p);
  };
  for (const Parameter& p : own_params_) add(p);
  for (const auto& b : blocks_) {
    add_layer(*b->attn_norm);
    add_layer(*b->attention);
    add_layer(*b->ffn_norm);
    if (b->moe != nullptr) {
      add_layer(b->moe->router());
      add_layer(b->moe->experts());
      for (const std::vector<Parameter>& other : b->shard_experts) {
        for (const Parameter& p : other) add(p);  // the experts the other shards hold
      }
    } else {
      add_layer(*b->ffn);
    }
  }
  add_layer(*final_norm_);
  return n;
}

int64_t Transformer::active_parameter_count() const {
  int64_t inactive = 0;
  for (const auto& b : blocks_) {
    if (b->moe == nullptr) continue;
    const int64_t unused = b->moe->experts().n_experts() - b->moe->router().top_k();
    inactive += unused * b->moe->experts().parameters_per_expert();
  }
  return parameter_count() - inactive;
}

int64_t Transformer::kv_cache_bytes_per_token() const {
  int64_t n = 0;
  for (const auto& b : blocks_) n += b->attention->cache_bytes_per_token();
  return n;
}

double Transformer::rope_base() const {
  return blocks_.empty() ? 0.0 : blocks_.front()->attention->rope_base();
}

void Transformer::allocate(bool with_grads) {
  (void)parameter_count();  // refuses sizes that overflow before any allocation
  Backend& be = *backend_;
  const DType compute = be.compute_dtype();
  inference_only_ = false;
  for (Parameter* p : parameters()) {
    p->value = be.empty(p->shape);
    if (with_grads) p->grad = be.zeros(p->shape);
    // Low-precision backends compute with a rounded copy; the f32 value stays the master.
    if (compute != DType::kF32) p->compute = be.empty(p->shape, compute);
  }
}

void Transformer::allocate_inference_only() {
  (void)parameter_count();  // refuses sizes that overflow before any allocation
  Backend& be = *backend_;
  const DType compute = be.compute_dtype();
  inference_only_ = true;
  for (Parameter* p : parameters()) {
    p->grad = Tensor();
    if (compute == DType::kF32) {
      p->value = be.empty(p->shape);  // the master is what computes
      p->compute = Tensor();
      continue;
    }
    p->compute = be.empty(p->shape, compute);
    // Without training nothing updates the master; only a layer that reads it needs it.
    p->value = p->value_read_at_inference ? be.empty(p->shape) : Tensor();
  }
}

int64_t Transformer::weight_bytes() {
  int64_t bytes = 0;
  for (Parameter* p : parameters()) {
    for (const Tensor* t : {&p->value, &p->compute, &p->grad}) {
      if (t->defined()) bytes += static_cast<int64_t>(t->nbytes());
    }
  }
  return bytes;
}

Tensor Transformer::stage_weights(Parameter& p) {
  if (p.value.defined()) return p.value;
  if (!p.compute.defined()) {
    throw Error("model", "stage_weights(" + p.name + ") before allocate()");
  }
  return backend_->empty(p.shape);
}

void Transformer::commit_weights(Parameter& p, const Tensor& staged) {
  if (staged.dtype() != DType::kF32 || staged.shape() != p.shape) {
    throw ShapeError("model", "commit_weights(" + p.name + ") takes f32 " + to_string(p.shape) +
                                  " from stage_weights(), got " + describe(staged));
  }
  if (p.value.defined() && staged.raw() != p.value.raw()) backend_->copy(p.value, staged);
  if (p.compute.defined()) backend_->convert(p.compute, staged);
}

void Transformer::refresh_compute_copies() {
  for (Parameter* p : parameters()) {
    if (p->compute.defined() && p->value.defined()) backend_->convert(p->compute, p->value);
  }
}

DType Transformer::activation_dtype() const {
  return backend_->compute_dtype();
}

bool Transformer::allocated() const {
  return own_params_[0].value.defined() || own_params_[0].compute.defined();
}

void Transformer::init_random(uint64_t seed) {
  // Tensor by tensor through stage_weights(): an inference-only model never holds more than one
  // f32 tensor, and each tensor's numbers are the same in either allocation.
  for (Parameter* p : parameters()) {
    const Tensor staged = stage_weights(*p);
    if (p->init_std > 0.0f) {
      backend_->fill_normal(staged, 0.0f, p->init_std, name_seed(seed, p->name));
    } else {
      backend_->fill(staged, p->init_value);
    }
    commit_weights(*p, staged);
  }
}

void Transformer::zero_grads() {
  for (Parameter* p : parameters()) {
    if (p->grad.defined()) backend_->fill(p->grad, 0.0f);
  }
}

Tensor Transformer::run_trunk(ForwardContext& ctx, const Tensor& ids, bool checkpointing) {
  Backend& be = *backend_;
  const Parameter& embed = own_params_[0];
  const Tensor& table = embed.compute.defined() ? embed.compute : embed.value;
  Tensor x = be.empty({ids.numel(), config_.hidden_dim}, table.dtype());
  be.gather_rows(table, ids, x);
  if (!ctx.training) {
    Tensor pending;  // the last FFN output, added by the next norm
    for (auto& block : blocks_) block->forward_fused(ctx, x, pending);
    if (!pending.defined()) return final_norm_->forward(ctx, x);
    Tensor sum;
    return final_norm_->forward_with_residual(ctx, x, pending, sum);
  }
  for (auto& block : blocks_) {
    if (checkpointing && ctx.training) {
      // Keep only the block input; backward recomputes the block with activations saved.
      block->input = x;
      ForwardContext no_save = ctx;
      no_save.training = false;
      x = block->forward(no_save, x);
    } else {
      x = block->forward(ctx, x);
    }
  }
  return final_norm_->forward(ctx, x);
}

Tensor Transformer::head_logits(ForwardContext& ctx, const Tensor& hidden) {
  // Logits are f32 on every backend (the loss and the samplers read them); with bf16 weights the
  // product accumulates in f32 and is stored without a low-precision rounding.
  const Parameter& head = own_params_[1];
  Tensor logits = ctx.backend->empty({hidden.dim(0), config_.vocab_size});
  ctx.backend->gemm(hidden, false, head.compute.defined() ? head.compute : head.value, true,
                    logits);
  return logits;
}

namespace {

void check_ids(const std::vector<int32_t>& ids, int64_t vocab, const char* what) {
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab) {
      throw ShapeError("model", std::string(what) + " id " + std::to_string(id) +
                                    " is outside the vocabulary [0, " + std::to_string(vocab) +
                                    "); was the data prepared with another tokenizer?");
    }
  }
}

std::vector<int32_t> default_positions(int64_t batch, int64_t seq, int64_t offset,
                                       const std::vector<int32_t>& kv_start) {
  std::vector<int32_t> positions(static_cast<size_t>(batch * seq));
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t start = kv_start.empty() ? 0 : kv_start[static_cast<size_t>(b)];
    for (int64_t t = 0; t < seq; ++t) {
      positions[static_cast<size_t>(b * seq + t)] =
          static_cast<int32_t>(std::max<int64_t>(0, offset + t - start));
    }
  }
  return positions;
}

}  // namespace

void Transformer::check_batch(const std::vector<int32_t>& ids, const std::vector<int32_t>& targets,
                              int64_t batch, int64_t seq, int64_t& valid_targets) const {
  const int64_t n = batch * seq;
  if (static_cast<int64_t>(ids.size()) != n || static_cast<int64_t>(targets.size()) != n) {
    throw ShapeError("model", "forward_loss expects " + std::to_string(n) + " ids and targets");
  }
  if (seq > config_.max_seq_len) {
    throw ShapeError("model", "sequence of " + std::to_string(seq) +
                                  " tokens exceeds model.max_seq_len " +
                                  std::to_string(config_.max_seq_len));
  }
  check_ids(ids, config_.vocab_size, "input");
  int64_t valid = 0;
  for (int32_t t : targets) {
    if (t >= config_.vocab_size) check_ids({t}, config_.vocab_size, "target");
    valid += t >= 0 ? 1 : 0;
  }
  valid_targets = valid;
}

Tensor Transformer::forward_losses(const Tensor& ids, const Tensor& targets, int64_t batch,
                                   int64_t seq, int64_t valid, bool training,
                                   bool activation_checkpointing) {
  if (training && inference_only_) {
    throw Error("model", "this model was allocated for inference only (allocate_inference_only: " +
                             std::string(dtype_name(backend_->compute_dtype())) +
                             " compute weights, no f32 master weights or gradients), so it cannot "
                             "train; allocate(with_grads = true) gives a model that can");
  }
  const int64_t n = batch * seq;
  Backend& be = *backend_;
  auto saved = std::make_unique<Activations>();
  ForwardContext& ctx = saved->ctx;
  ctx.backend = &be;
  ctx.batch = batch;
  ctx.seq = seq;
  // Training positions are the same every step: uploaded once per (batch, seq).
  if (!positions_.defined() || positions_batch_ != batch || positions_seq_ != seq) {
    const std::vector<int32_t> positions = default_positions(batch, seq, 0, {});
    positions_ = be.from_host(positions.data(), {n}, DType::kI32);
    positions_batch_ = batch;
    positions_seq_ = seq;
  }
  ctx.positions = positions_;
  ctx.training = training;
  ctx.static_shapes = training && static_shapes_;
  ctx.comm = training ? comm_ : nullptr;
  saved->ids = ids;
  saved->targets = targets;
  saved->checkpointing = activation_checkpointing;
  saved->valid_targets = valid;
  saved->hidden = run_trunk(ctx, saved->ids, activation_checkpointing);
  saved->logits = head_logits(ctx, saved->hidden);
  Tensor losses = be.empty({n});
  be.cross_entropy_forward(saved->logits, saved->targets, losses);
  saved_ = training ? std::move(saved) : nullptr;
  return losses;
}

Tensor Transformer::forward_losses(const std::vector<int32_t>& ids,
                                   const std::vector<int32_t>& targets, int64_t batch, int64_t seq,
                                   bool training, bool activation_checkpointing,
                                   int64_t& valid_targets) {
  check_batch(ids, targets, batch, seq, valid_targets);
  const int64_t n = batch * seq;
  return forward_losses(backend_->from_host(ids.data(), {n}, DType::kI32),
                        backend_->from_host(targets.data(), {n}, DType::kI32), batch, seq,
                        valid_targets, training, activation_checkpointing);
}

void Transformer::stage_batch(size_t slot, const std::vector<int32_t>& ids,
                              const std::vector<int32_t>& targets, int64_t batch, int64_t seq) {
  if (staged_.size() <= slot) staged_.resize(slot + 1);
  StagedBatch& s = staged_[slot];
  check_batch(ids, targets, batch, seq, s.valid);
  const int64_t n = batch * seq;
  // The same device tensors every step: a recorded graph reads them where they were.
  if (!s.ids.defined() || s.ids.numel() != n) {
    s.ids = backend_->empty({n}, DType::kI32);
    s.targets = backend_->empty({n}, DType::kI32);
  }
  backend_->copy_from_host(s.ids, ids.data());
  backend_->copy_from_host(s.targets, targets.data());
  s.batch = batch;
  s.seq = seq;
}

int64_t Transformer::staged_valid_targets(size_t slot) const {
  return slot < staged_.size() ? staged_[slot].valid : -1;
}

void Transformer::forward_loss_staged(size_t slot, bool activation_checkpointing,
                                      const Tensor& loss_sum, float weight) {
  if (slot >= staged_.size() || !staged_[slot].ids.defined()) {
    throw Error("model", "forward_loss_staged() needs a preceding stage_batch(" +
                             std::to_string(slot) + ")");
  }
  const StagedBatch& s = staged_[slot];
  const Tensor losses =
      forward_losses(s.ids, s.targets, s.batch, s.seq, s.valid, true, activation_checkpointing);
  if (s.valid == 0) return;
  // loss_sum += weight / valid * sum(losses) on the device.
  const int64_t n = losses.numel();
  backend_->sum_rows(losses.view({n, 1}), loss_sum.view({1, 1}),
                     weight / static_cast<float>(s.valid), 1.0f);
}

bool Transformer::has_static_shapes() const {
  for (const auto& b : blocks_) {
    if (b->moe != nullptr && !b->moe->router().has_static_shapes()) return false;
  }
  return true;
}

double Transformer::forward_loss(const std::vector<int32_t>& ids,
                                 const std::vector<int32_t>& targets, int64_t batch, int64_t seq,
                                 bool training, bool activation_checkpointing) {
  int64_t valid = 0;
  const Tensor losses =
      forward_losses(ids, targets, batch, seq, training, activation_checkpointing, valid);
  std::vector<float> host(static_cast<size_t>(losses.numel()));
  backend_->copy_to_host(host.data(), losses);
  double sum = 0.0;
  for (float l : host) sum += l;
  return valid > 0 ? sum / static_cast<double>(valid) : 0.0;
}

void Transformer::forward_loss_into(const std::vector<int32_t>& ids,
                                    const std::vector<int32_t>& targets, int64_t batch, int64_t seq,
                                    bool activation_checkpointing, const Tensor& loss_sum,
                                    float weight) {
  stage_batch(0, ids, targets, batch, seq);
  forward_loss_staged(0, activation_checkpointing, loss_sum, weight);
}

void Transformer::backward(float loss_scale) {
  backward(loss_scale, GradientsReady());
}

void Transformer::backward(float loss_scale, const GradientsReady& ready) {
  // A block's parameters as parameters() lists them (this shard's experts only).
  auto report_block = [&](Block& block) {
    std::vector<Parameter*> done;
    auto add = [&](Layer& layer) {
      for (Parameter& p : layer.parameters()) done.push_back(&p);
    };
    add(*block.attn_norm);
    add(*block.attention);
    add(*block.ffn_norm);
    if (block.moe != nullptr) {
      add(block.moe->router());
      add(block.moe->experts());
    } else {
      add(*block.ffn);
    }
    ready(done);
  };
  if (!saved_) throw Error("model", "backward() needs a preceding forward_loss(training=true)");
  Activations& s = *saved_;
  Backend& be = *backend_;
  ForwardContext& ctx = s.ctx;
  ctx.loss_scale = loss_scale;
  Parameter& head = own_params_[1];
  Parameter& embed = own_params_[0];
  // loss = mean CE -> dlogits = loss_scale / valid * (softmax - onehot)   (N, V)
  const DType dtype = s.hidden.dtype();  // the compute dtype: products read bf16 dlogits
  Tensor dlogits = be.empty(s.logits.shape(), dtype);
  const float ce_scale = s.valid_targets > 0 ? loss_scale / static_cast<float>(s.valid_targets) : 0;
  be.cross_entropy_backward(s.logits, s.targets, ce_scale, dlogits);
  s.logits = Tensor();
  // logits = hidden @ W^T: dW += dlogits^T hidden (accumulates); dhidden = dlogits @ W
  be.gemm(dlogits, true, s.hidden, false, head.grad, 1.0f, 1.0f);
  Tensor dhidden = be.empty(s.hidden.shape(), dtype);
  be.gemm(dlogits, false, head.compute.defined() ? head.compute : head.value, false, dhidden);
  // The head is separate from the embedding (not tied): its gradient is final here.
  if (ready) ready({&head});
  Tensor dx = final_norm_->backward(ctx, dhidden);
  if (ready) {
    std::vector<Parameter*> norm;
    for (Parameter& p : final_norm_->parameters()) norm.push_back(&p);
    ready(norm);
  }
  for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) {
    Block& block = **it;
    if (s.checkpointing) block.forward(ctx, block.input);  // recompute, saving activations
    dx = block.backward(ctx, dx);
    block.release_saved();
    block.input = Tensor();
    if (ready) report_block(block);
  }
  final_norm_->release_saved();
  // x = embed[ids]: dEmbed[ids[n]] += dx[n] (accumulates)
  be.scatter_add_rows(dx, s.ids, Tensor(), embed.grad);
  if (ready) ready({&embed});
  saved_.reset();
}

double Transformer::aux_loss() const {
  double total = 0.0;
  for (const auto& b : blocks_) {
    if (b->moe == nullptr) continue;
    const AuxStats stats = b->moe->aux_stats();
    total += stats.aux_weight * stats.aux_loss + stats.z_weight * stats.z_loss;
  }
  return total;
}

std::vector<AuxStats> Transformer::aux_stats() const {
  std::vector<AuxStats> out;
  for (const auto& b : blocks_) {
    if (b->moe != nullptr) out.push_back(b->moe->aux_stats());
  }
  return out;
}

Tensor Transformer::logits(const std::vector<int32_t>& ids, int64_t batch, int64_t seq) {
  check_ids(ids, config_.vocab_size, "input");
  Backend& be = *backend_;
  ForwardContext ctx;
  ctx.backend = &be;
  ctx.batch = batch;
  ctx.seq = seq;
  const std::vector<int32_t> positions = default_positions(batch, seq, 0, {});
  ctx.positions = be.from_host(positions.data(), {batch * seq}, DType::kI32);
  Tensor id_tensor = be.from_host(ids.data(), {batch * seq}, DType::kI32);
  return head_logits(ctx, run_trunk(ctx, id_tensor, false));
}

void Transformer::init_cache(int64_t batch, int64_t capacity) {
  end_decode();  // a recorded step holds the old caches' addresses
  for (auto& b : blocks_) b->attention->init_cache(*backend_, batch, capacity);
}

Tensor Transformer::forward_cached(const std::vector<int32_t>& ids, int64_t batch, int64_t seq,
                                   int64_t cache_len, const std::vector<int32_t>& kv_start,
                                   bool all_positions) {
  check_ids(ids, config_.vocab_size, "input");
  Backend& be = *backend_;
  ForwardContext ctx;
  ctx.backend = &be;
  ctx.batch = batch;
  ctx.seq = seq;
  ctx.use_kv_cache = true;
  ctx.cache_len = cache_len;
  const std::vector<int32_t> positions = default_positions(batch, seq, cache_len, kv_start);
  ctx.positions = be.from_host(positions.data(), {batch * seq}, DType::kI32);
  if (!kv_start.empty()) ctx.kv_start = be.from_host(kv_start.data(), {batch}, DType::kI32);
  Tensor id_tensor = be.from_host(ids.data(), {batch * seq}, DType::kI32);
  Tensor hidden = run_trunk(ctx, id_tensor, false);
  if (!all_positions && seq > 1) {
    std::vector<int32_t> last(static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b)
      last[static_cast<size_t>(b)] = static_cast<int32_t>(b * seq + seq - 1);
    Tensor index = be.from_host(last.data(), {batch}, DType::kI32);
    Tensor picked = be.empty({batch, config_.hidden_dim}, hidden.dtype());
    be.gather_rows(hidden, index, picked);
    hidden = picked;
  }
  return head_logits(ctx, hidden);
}

// ---- device-resident decoding ----------------------------------------------------------------

void Transformer::begin_decode(int64_t batch, const std::vector<int32_t>& kv_start) {
  end_decode();
  if (batch < 1 || (!kv_start.empty() && static_cast<int64_t>(kv_start.size()) != batch)) {
    throw ShapeError("model", "begin_decode needs batch >= 1 and one kv_start per sequence, got " +
                                  std::to_string(batch) + " and " +
                                  std::to_string(kv_start.size()));
  }
  Backend& be = *backend_;
  auto state = std::make_unique<DecodeState>();
  state->batch = batch;
  state->kv_start = kv_start;
  state->ids = be.zeros({batch}, DType::kI32);
  // positions | cache_len | kv_len in one tensor: one upload a step.
  state->step_inputs = be.zeros({batch + 2}, DType::kI32);
  state->positions = state->step_inputs.slice_rows(0, batch);
  state->cache_len = state->step_inputs.slice_rows(batch, batch + 1);
  state->kv_len = state->step_inputs.slice_rows(batch + 1, batch + 2);
  if (!kv_start.empty()) {
    state->kv_start_device = be.from_host(kv_start.data(), {batch}, DType::kI32);
  }
  // Test hook (as in training): NNKIT_GRAPHS_NO_REPLAY=1 keeps the recorded step's layout but
  // runs every step uncaptured, the baseline a replayed step must equal bit for bit.
  state->record = be.captures() && std::getenv("NNKIT_GRAPHS_NO_REPLAY") == nullptr;
  decode_ = std::move(state);
}

void Transformer::end_decode() {
  if (decode_ && decode_->graph >= 0) backend_->release_graph(decode_->graph);
  decode_.reset();
}

bool Transformer::decode_recorded() const {
  return decode_ && decode_->graph >= 0;
}

Tensor Transformer::decode_step(const std::vector<int32_t>& ids, int64_t cache_len) {
  if (!decode_) throw Error("model", "decode_step() needs a preceding begin_decode()");
  DecodeState& d = *decode_;
  if (static_cast<int64_t>(ids.size()) != d.batch) {
    throw ShapeError("model", "decode_step takes one id per sequence (" + std::to_string(d.batch) +
                                  "), got " + std::to_string(ids.size()));
  }
  check_ids(ids, config_.vocab_size, "input");
  backend_->copy_from_host(d.ids, ids.data());
  return decode_step_device(cache_len);
}

Tensor Transformer::decode_input_ids() const {
  if (!decode_) throw Error("model", "decode_input_ids() needs a preceding begin_decode()");
  return decode_->ids;
}

Tensor Transformer::decode_step_device(int64_t cache_len) {
  if (!decode_) throw Error("model", "decode_step_device() needs a preceding begin_decode()");
  DecodeState& d = *decode_;
  Backend& be = *backend_;
  std::vector<int32_t> inputs = default_positions(d.batch, 1, cache_len, d.kv_start);
  inputs.push_back(static_cast<int32_t>(cache_len));
  inputs.push_back(static_cast<int32_t>(cache_len + 1));
  be.copy_from_host(d.step_inputs, inputs.data());
  if (d.graph >= 0) {
    be.replay(d.graph);
    ++d.steps;
    return d.logits;
  }
  auto run_step = [&] {
    ForwardContext ctx;
    ctx.backend = &be;
    ctx.batch = d.batch;
    ctx.seq = 1;
    ctx.use_kv_cache = true;
    ctx.cache_len = cache_len;
    ctx.cache_len_device = d.cache_len;
    ctx.kv_len_device = d.kv_len;
    ctx.positions = d.positions;
    ctx.kv_start = d.kv_start_device;
    ctx.static_shapes = be.captures();
    return head_logits(ctx, run_trunk(ctx, d.ids, false));
  };
  // The first step runs plainly (it creates what lives across steps: the products' workspaces,
  // the cache's first use); the second is recorded, then replayed from there on.
  if (d.record && d.steps >= 1) {
    try {
      if (be.begin_capture()) {
        d.logits = run_step();
        d.graph = be.end_capture();
        be.replay(d.graph);
        ++d.steps;
        return d.logits;
      }
    } catch (const Error&) {
      be.abort_capture();
      d.record = false;  // run uncaptured from now on (the generator reports it)
    }
  }
  d.logits = run_step();
  ++d.steps;
  return d.logits;
}

}  // namespace nnkit
