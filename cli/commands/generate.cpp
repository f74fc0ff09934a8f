// Purpose: `nnkit generate`: streams text from a trained run (--checkpoint) or a random model
// (CONFIG --random-init) with the sampler chain from the config's `decode:` list, or from the
// sampler flags, which replace that list (--greedy, --top-k, --top-p, --min-p, --temperature,
// --repetition-penalty; applied in that order, penalty first, temperature last). Text mode
// echoes a single prompt before its continuation; --prompts prints each under a header.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "args.h"
#include "commands.h"
#include "common.h"
#include "memory_check.h"
#include "nnkit/error.h"
#include "nnkit/generator.h"
#include "run_loader.h"

namespace nnkit::cli {

namespace {

// Turns sampler flags into a `decode=[...]` override, so they are validated like YAML.
std::optional<std::string> sampler_override(const ParsedArgs& args) {
  std::vector<std::string> steps;
  if (auto v = args.get("--repetition-penalty"))
    steps.push_back("{type: repetition_penalty, penalty: " + *v + "}");
  if (args.has("--greedy")) {
    if (args.has("--top-k") || args.has("--top-p") || args.has("--min-p") ||
        args.has("--temperature")) {
      throw UsageError("cli",
                       "--greedy picks the most likely token; it cannot be combined with "
                       "--top-k, --top-p, --min-p or --temperature");
    }
    steps.push_back("{type: greedy}");
  } else {
    if (auto v = args.get("--top-k")) steps.push_back("{type: top_k, k: " + *v + "}");
    if (auto v = args.get("--top-p")) steps.push_back("{type: top_p, p: " + *v + "}");
    if (auto v = args.get("--min-p")) steps.push_back("{type: min_p, p: " + *v + "}");
    if (auto v = args.get("--temperature"))
      steps.push_back("{type: temperature, value: " + *v + "}");
  }
  if (steps.empty()) return std::nullopt;
  std::string text = "decode=[";
  for (size_t i = 0; i < steps.size(); ++i) text += (i ? ", " : "") + steps[i];
  return text + "]";
}

std::vector<std::string> read_prompts(const std::string& file) {
  // A directory opens as an empty stream on Linux, which read as "has no lines".
  std::error_code ec;
  if (std::filesystem::is_directory(file, ec)) {
    throw IoError(
        "cli", "prompts file " + file + " is a directory; pass a text file, one prompt per line");
  }
  std::ifstream in(file);
  if (!in) throw IoError("cli", "cannot read prompts file " + file);
  std::vector<std::string> prompts;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    prompts.push_back(line);
  }
  if (prompts.empty()) throw IoError("cli", "prompts file " + file + " has no lines");
  return prompts;
}

// NTK scaling stretches RoPE so the model reads alpha times its training context.
int64_t context_limit(const RunConfig& cfg) {
  double alpha = 1.0;
  if (cfg.model.attention.options.has("rope.ntk_alpha")) {
    alpha = cfg.model.attention.options.get_float("rope.ntk_alpha");
  }
  return static_cast<int64_t>(static_cast<double>(cfg.model.max_seq_len) * alpha);
}

}  // namespace

int run_generate(const Args& raw) {
  CommandSpec spec{
      "generate",
      "nnkit generate (--checkpoint RUN_DIR | CONFIG --random-init) [--prompt TEXT | --prompts "
      "FILE] "
      "[options]",
      "Generates text with the KV cache and the sampler chain, streaming it as it is produced.",
      {{"--checkpoint", "RUN_DIR", "use the newest checkpoint of a training run"},
       {"--random-init", "", "use a randomly initialised model from CONFIG (smoke tests)"},
       {"--prompt", "TEXT", "the prompt (empty: start from BOS)"},
       {"--prompts", "FILE", "one prompt per line, generated as one batch"},
       {"--max-new-tokens", "N", "tokens to generate (default 128)"},
       {"--seed", "N", "sampling seed (default: the config's seed)"},
       {"--stop", "STRING", "stop when STRING appears (not included)", true},
       {"--greedy", "", "always pick the most likely token"},
       {"--top-k", "K", "keep the K most likely tokens"},
       {"--top-p", "P", "keep the smallest set with probability mass >= P"},
       {"--min-p", "P", "drop tokens below P x the top probability"},
       {"--temperature", "T", "divide logits by T (> 0)"},
       {"--repetition-penalty", "R", "CTRL penalty for tokens already present"},
       {"--truncate-prompt", "", "keep the end of a prompt that is longer than the context"},
       {"--json", "", "print one JSON object per prompt (text, ids, tokens/s, memory)"},
       skip_memory_check_flag(),
       keep_masters_flag()},
      "CONFIG  a YAML model description (with --random-init)",
      true};
  const std::optional<ParsedArgs> parsed = parse_command(spec, raw);
  if (!parsed) return 0;  // --help was printed
  const ParsedArgs& args = *parsed;
  std::vector<std::string> overrides = args.overrides();
  if (auto o = sampler_override(args)) overrides.push_back(*o);
  const auto checkpoint = args.get("--checkpoint");
  if (args.has("--random-init") == checkpoint.has_value()) {
    throw UsageError("cli", "give either --checkpoint RUN_DIR or CONFIG --random-init");
  }
  if (args.has("--prompt") && args.has("--prompts")) {
    throw UsageError("cli", "give --prompt or --prompts, not both");
  }
  // Read before the model is loaded: their number and length size the KV cache that the memory
  // check counts.
  const std::vector<std::string> prompts =
      args.has("--prompts") ? read_prompts(*args.get("--prompts"))
                            : std::vector<std::string>{args.get_or("--prompt", "")};
  const int64_t max_new_tokens = args.get_int("--max-new-tokens", 128, 0, INT32_MAX);
  size_t longest_prompt = 0;
  for (const std::string& p : prompts) longest_prompt = std::max(longest_prompt, p.size());
  const MemoryPlan plan{
      "nnkit generate", [&](const RunConfig& cfg) {
        // A token covers at least one byte; BOS comes first. The generator
        // keeps prompt + new tokens within the context.
        const int64_t room = std::max<int64_t>(1, context_limit(cfg) - max_new_tokens);
        MemoryShape shape;
        shape.workload = Workload::kGenerate;
        shape.batch = static_cast<int64_t>(prompts.size());
        shape.seq = std::min<int64_t>(static_cast<int64_t>(longest_prompt) + 1, room);
        shape.kv_capacity = shape.seq + max_new_tokens;
        return shape;
      }};
  LoadedModel loaded;
  if (checkpoint) {
    if (!args.positionals().empty()) throw UsageError("cli", "--checkpoint takes no CONFIG");
    loaded = load_checkpoint_model(*checkpoint, overrides, args, plan);
  } else {
    if (args.positionals().size() != 1) throw UsageError("cli", "--random-init needs one CONFIG");
    loaded = build_random_model(args.positionals()[0], overrides, args, -1, plan);
  }
  const RunConfig& cfg = loaded.session.config;
  std::vector<std::shared_ptr<Sampler>> chain;
  for (const PluginChoice& c : cfg.decode) {
    chain.push_back(loaded.session.registry->create<Sampler>(c.kind, c.name,
                                                             CreateArgs{c.options, {}, nullptr}));
  }
  GenerateOptions options;
  options.max_new_tokens = max_new_tokens;
  options.seed = static_cast<uint64_t>(args.get_int("--seed", cfg.seed, 0, INT64_MAX));
  options.stop = args.get_all("--stop");
  options.truncate_prompt = args.has("--truncate-prompt");
  options.context_limit = context_limit(cfg);
  const bool stream = !args.has("--json") && prompts.size() == 1;
  // Text mode prints the prompt before its continuation, as other generators do, so the text
  // reads from its start instead of mid-word (--json keeps prompt and text apart).
  if (stream) std::cout << prompts.front() << std::flush;
  const auto results = generate(*loaded.model, *loaded.tokenizer, chain, prompts, options,
                                stream ? TextCallback([](size_t, const std::string& piece) {
                                  std::cout << piece << std::flush;
                                })
                                       : TextCallback());
  if (args.has("--json")) {
    // What the weights hold, and what the device had in use once generation finished (its
    // total minus free memory: this process's tensors, its CUDA context and any other process;
    // cached free blocks count as free). null on a host backend.
    const int64_t weight_bytes = loaded.model->weight_bytes();
    nlohmann::json device_in_use = nullptr;
    if (const auto memory = loaded.model->backend().device_memory()) {
      device_in_use = memory->total - memory->free;
    }
    for (size_t i = 0; i < results.size(); ++i) {
      const auto& r = results[i];
      std::cout << nlohmann::json{{"prompt", prompts[i]},
                                  {"text", r.text},
                                  {"prompt_ids", r.prompt_ids},
                                  {"ids", r.generated_ids},
                                  {"stop_reason", r.stop_reason},
                                  {"prefill_tokens_per_s", r.prefill_tokens_per_s},
                                  {"decode_tokens_per_s", r.decode_tokens_per_s},
                                  {"batch", results.size()},
                                  {"precision",
                                   dtype_name(loaded.model->backend().compute_dtype())},
                                  {"backend", loaded.model->backend().id()},
                                  {"decode_graph", r.decode_graph},
                                  {"device_sampling", r.device_sampling},
                                  {"inference_only_weights", loaded.model->inference_only()},
                                  {"weight_bytes", weight_bytes},
                                  {"device_memory_in_use_bytes", device_in_use}}
                       .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                << "\n";
    }
  } else if (stream) {
    std::cout << "\n";
  } else {
    for (size_t i = 0; i < results.size(); ++i) {
      std::cout << "=== prompt " << i + 1 << ": " << prompts[i] << "\n" << results[i].text << "\n";
    }
  }
  return 0;
}

}  // namespace nnkit::cli
