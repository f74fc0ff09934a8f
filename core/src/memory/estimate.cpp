// Purpose: estimate_memory() and check_memory() (see nnkit/memory_estimate.h). The activation
// model counts, per token of a forward, the tensors each in-tree component keeps for backward
// (the `Saved` structs of attention/mqa, moe/swiglu, norm/rmsnorm and the core's MoE layer) and
// the gradients alive while one block runs backward; tests/cli/test_memory_estimate.cpp holds it
// against the measured peak RSS of a CPU training run.
#include <algorithm>
#include <cstdio>

#include "nnkit/error.h"
#include "nnkit/memory_estimate.h"

namespace nnkit {

namespace {

// Every category stays below 2^62, so total() of seven of them cannot overflow either.
constexpr int64_t kMaxCategory = int64_t{1} << 62;

struct Checked {
  const MemoryShape* shape;
  [[noreturn]] void overflow() const {
    throw ConfigError("memory", "the memory estimate does not fit in 64 bits (batch " +
                                    std::to_string(shape->batch) + ", sequence length " +
                                    std::to_string(shape->seq) +
                                    "); lower train.batch_size or train.seq_len");
  }
  int64_t mul(int64_t a, int64_t b) const {
    int64_t r = 0;
    if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r) || r >= kMaxCategory) overflow();
    return r;
  }
  int64_t add(int64_t a, int64_t b) const {
    int64_t r = 0;
    if (__builtin_add_overflow(a, b, &r) || r >= kMaxCategory) overflow();
    return r;
  }
};

int64_t option_int(const PluginChoice& choice, const char* name, int64_t fallback) {
  return choice.options.has(name) ? choice.options.get_int(name) : fallback;
}

// Bytes per token of one forward, from the model's dims and its components' options.
struct TokenBytes {
  int64_t block_saved = 0;    // what one block keeps for backward
  int64_t block_grads = 0;    // gradients alive while one block runs backward
  int64_t block_input = 0;    // the residual stream (what checkpointing keeps per block)
  int64_t head_forward = 0;   // final norm output and fp32 logits
  int64_t head_backward = 0;  // the logits' gradient
  int64_t kv_cache = 0;       // all layers together
};

TokenBytes token_bytes(const ModelConfig& m, int64_t a) {
  const int64_t c = m.hidden_dim;
  const int64_t heads = option_int(m.attention, "n_heads", 1);
  const int64_t head_dim = option_int(m.attention, "head_dim", c / std::max<int64_t>(heads, 1));
  const int64_t kv_heads = option_int(m.attention, "n_kv_heads", heads);
  const int64_t q_width = heads * head_dim;
  const int64_t kv_width = kv_heads * head_dim;
  TokenBytes t;
  t.block_input = c * a;
  // Norms keep their input and 1/rms; attention its input, q, k, v, the attended rows and the
  // fp32 log-sum-exp; the residual stream keeps x and mid.
  const int64_t norms = 2 * (c * a + 4);
  const int64_t attention = c * a + (2 * q_width + 2 * kv_width) * a + heads * 4;
  const int64_t residual = c * a;  // mid (x is the previous block's output, counted once)
  int64_t ffn = 0;
  int64_t ffn_grads = 0;
  if (m.is_moe) {
    const int64_t experts = option_int(m.experts, "n_experts", 8);
    const int64_t f = option_int(m.experts, "ffn_dim", 4 * c);
    const int64_t k = option_int(m.router, "top_k", 2);
    // Router: fp32 logits and probabilities, k gates and indices; dispatch: token and slot ids;
    // experts: routed inputs and outputs (k C), gates, gate/up/activated (k F), all before any
    // capacity drop (an upper bound).
    ffn = c * a + experts * 4 * 2 + k * 4 * 4 + k * (2 * c + 3 * f) * a + k * 4;
    ffn_grads = k * (2 * c + 3 * f) * a + experts * 4 * 2 + k * 4;
  } else {
    const int64_t f = option_int(m.ffn, "ffn_dim", 4 * c);
    ffn = c * a + 3 * f * a;
    ffn_grads = 3 * f * a + c * a;
  }
  t.block_saved = norms + attention + residual + ffn;
  // dout, dmid, dx, the norms' input gradients, dq/dk/dv/dattended and the FFN's gradients.
  t.block_grads = 4 * c * a + (2 * q_width + 2 * kv_width) * a + ffn_grads;
  t.head_forward = 2 * c * a + 4 + m.vocab_size * 4;
  t.head_backward = m.vocab_size * 4 + c * a;
  t.kv_cache = m.n_layers * 2 * kv_width * a;
  return t;
}

// Elements of the largest parameter tensor of the in-tree components (the embedding or LM head,
// an attention projection, one expert's or the dense FFN's matrix, the router); a third-party
// plugin with other option names is counted with an FFN of 4 x hidden_dim.
int64_t largest_parameter(const ModelConfig& m, const Checked& ck) {
  const int64_t c = m.hidden_dim;
  const int64_t heads = option_int(m.attention, "n_heads", 1);
  const int64_t head_dim = option_int(m.attention, "head_dim", c / std::max<int64_t>(heads, 1));
  const int64_t ffn =
      m.is_moe ? option_int(m.experts, "ffn_dim", 4 * c) : option_int(m.ffn, "ffn_dim", 4 * c);
  const int64_t experts = m.is_moe ? option_int(m.experts, "n_experts", 8) : 0;
  return std::max({ck.mul(m.vocab_size, c), ck.mul(ck.mul(heads, head_dim), c), ck.mul(ffn, c),
                   ck.mul(experts, c)});
}

std::string precision_of(const RunConfig& config) {
  if (config.backend.options.has("precision")) {
    return config.backend.options.get_string("precision");
  }
  return "fp32";
}

}  // namespace

MemoryEstimate estimate_memory(const RunConfig& config, int64_t parameter_count,
                               const MemoryShape& shape) {
  const Checked ck{&shape};
  MemoryEstimate e;
  e.device = config.backend.name;
  e.precision = precision_of(config);
  const bool low = e.precision == "bf16" || e.precision == "fp16";
  const int64_t a = low ? 2 : 4;  // bytes per activation element
  const ModelConfig& m = config.model;
  const TokenBytes t = token_bytes(m, a);
  const int64_t tokens = ck.mul(shape.batch, shape.seq);

  // Inference without masters at 16 bits (Transformer::allocate_inference_only) holds the
  // compute weights and, while loading, one f32 tensor; everything else holds the masters.
  const bool compute_only = low && shape.workload != Workload::kTrain && !shape.keep_f32_masters;
  e.parameters = compute_only ? 0 : ck.mul(parameter_count, 4);
  if (low) e.compute_copies = ck.mul(parameter_count, 2);
  if (compute_only) e.load_staging = ck.mul(largest_parameter(m, ck), 4);
  const int64_t block_saved = ck.mul(tokens, t.block_saved);
  switch (shape.workload) {
    case Workload::kTrain: {
      e.gradients = ck.mul(parameter_count, 4);
      e.optimizer_state = ck.mul(parameter_count, 8);
      // Without checkpointing every block's saved tensors are alive at the start of backward;
      // with it only the block inputs are, plus one block recomputed at a time.
      const int64_t kept =
          shape.activation_checkpointing
              ? ck.add(ck.mul(ck.mul(tokens, t.block_input), m.n_layers), block_saved)
              : ck.mul(block_saved, m.n_layers);
      const int64_t head = ck.mul(tokens, t.head_forward + t.head_backward);
      e.activations = ck.add(ck.add(kept, head), ck.mul(tokens, t.block_grads));
      break;
    }
    case Workload::kEval:
      // Nothing is kept between blocks: one block's tensors, the residual stream and the logits.
      e.activations = ck.add(block_saved, ck.mul(tokens, t.head_forward + 2 * t.block_input));
      break;
    case Workload::kGenerate:
      // The prefill is the largest forward; only each sequence's last logits row is computed.
      e.activations = ck.add(ck.add(block_saved, ck.mul(tokens, 2 * t.block_input)),
                             ck.mul(ck.mul(shape.batch, m.vocab_size), 4));
      e.kv_cache = ck.mul(ck.mul(shape.batch, shape.kv_capacity), t.kv_cache);
      break;
  }
  return e;
}

std::string format_bytes(int64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes);
  size_t unit = 0;
  while (value >= 1024.0 && unit + 1 < sizeof(kUnits) / sizeof(kUnits[0])) {
    value /= 1024.0;
    ++unit;
  }
  char text[48];
  std::snprintf(text, sizeof(text), unit == 0 ? "%.0f %s" : "%.1f %s", value, kUnits[unit]);
  return text;
}

std::string describe(const MemoryEstimate& e) {
  const std::pair<const char*, int64_t> parts[] = {
      {"parameters", e.parameters},    {"compute copies", e.compute_copies},
      {"gradients", e.gradients},      {"optimizer state", e.optimizer_state},
      {"activations", e.activations},  {"KV cache", e.kv_cache},
      {"load staging", e.load_staging}};
  std::string out;
  for (const auto& [name, bytes] : parts) {
    if (bytes == 0) continue;
    out += (out.empty() ? "" : ", ") + std::string(name) + " " + format_bytes(bytes);
  }
  return out;
}

void check_memory(const MemoryEstimate& estimate, const RunConfig& config, const MemoryShape& shape,
                  const std::optional<MemoryLimit>& limit, const std::string& command,
                  const std::string& skip_flag) {
  if (!limit || estimate.total() <= limit->bytes) return;
  std::vector<std::string> fixes;
  if (shape.workload == Workload::kGenerate) {
    fixes.push_back("fewer prompts at once (" + std::to_string(shape.batch) + " now)");
    fixes.push_back("a smaller --max-new-tokens");
  } else {
    fixes.push_back("a smaller train.batch_size (" + std::to_string(config.train.batch_size) +
                    " now)");
    fixes.push_back("a smaller train.seq_len (" + std::to_string(config.train.seq_len) + " now)");
    if (shape.workload == Workload::kTrain && !shape.activation_checkpointing) {
      fixes.push_back("train.activation_checkpointing=true");
    }
  }
  if (estimate.precision == "fp32") fixes.push_back("a CUDA backend at precision bf16");
  std::string fix_text;
  for (size_t i = 0; i < fixes.size(); ++i) {
    fix_text += (i == 0 ? "" : i + 1 == fixes.size() ? " or " : ", ") + fixes[i];
  }
  throw Error("memory", command + " needs about " + format_bytes(estimate.total()) + " (" +
                            describe(estimate) + ") but " + format_bytes(limit->bytes) +
                            " is available (" + limit->source + "); use " + fix_text +
                            ", or pass " + skip_flag + " to run anyway");
}

}  // namespace nnkit
