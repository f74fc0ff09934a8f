// Purpose: text generation with a KV cache: prompts are tokenised (BOS first), left-padded into
// one batch, prefilled in one pass, then decoded one token per step through a chain of sampler
// plugins (see sampler.h for the chain rule). Stops at max_new_tokens, EOS or a stop string.
// Reproducible: each sequence draws from its own generator seeded by (seed, prompt index), so a
// prompt's output does not depend on what else is in the batch.
// Ownership: borrows the model, tokenizer and samplers for the duration of generate().
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nnkit/export.h"
#include "nnkit/model.h"
#include "nnkit/sampler.h"
#include "nnkit/tokenizer.h"

namespace nnkit {

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  std::vector<std::string> stop;  // stop strings (not included in the output)
  uint64_t seed = 0;
  int64_t context_limit = 0;     // max tokens (prompt + new) per sequence; 0 = model max_seq_len
  bool truncate_prompt = false;  // keep the prompt's tail instead of refusing a long prompt
};

struct GenerationResult {
  std::string text;                    // generated text (prompt excluded)
  std::vector<int32_t> prompt_ids;     // BOS + prompt tokens actually used
  std::vector<int32_t> generated_ids;  // new token ids (EOS excluded)
  std::string stop_reason;             // "length", "eos" or "stop"
  double prefill_tokens_per_s = 0.0;   // whole batch's prefill throughput
  double decode_tokens_per_s = 0.0;    // whole batch's decode throughput
  bool decode_graph = false;           // the decode steps were replayed from a CUDA Graph
  bool device_sampling = false;        // the sampler chain ran on the device
};

// Called with (prompt index, new text) as text becomes final.
using TextCallback = std::function<void(size_t, const std::string&)>;

NNKIT_API std::vector<GenerationResult> generate(Transformer& model, const Tokenizer& tokenizer,
                                                 const std::vector<std::shared_ptr<Sampler>>& chain,
                                                 const std::vector<std::string>& prompts,
                                                 const GenerateOptions& options,
                                                 const TextCallback& on_text = nullptr);

// Applies the chain to one row and picks a token (argmax if any step selects it, else a draw
// from softmax(row) with `uniform` in [0, 1)). Exposed for tests.
NNKIT_API int32_t pick_token(std::vector<float>& row,
                             const std::vector<std::shared_ptr<Sampler>>& chain,
                             const std::vector<int32_t>& history, double uniform);

}  // namespace nnkit
