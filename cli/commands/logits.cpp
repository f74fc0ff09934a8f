// Purpose: `nnkit logits`: the raw logits of one sequence of token ids, for parity checks against
// other implementations (scripts/hf_parity.py compares them with transformers). A plumbing
// command: no sampling, no tokenizer, one full forward pass without the KV cache.
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "args.h"
#include "commands.h"
#include "common.h"
#include "memory_check.h"
#include "nnkit/error.h"
#include "nnkit/model.h"
#include "run_loader.h"

namespace nnkit::cli {

int run_logits(const Args& raw) {
  CommandSpec spec{
      "logits",
      "nnkit logits (--checkpoint RUN_DIR | CONFIG --random-init) --ids 1,2,3 [--json]",
      "Prints the logits (T x vocab) of a full forward pass over the given ids: JSON "
      "{\"ids\", \"vocab_size\", \"logits\"} with --json, else each position's top 5.",
      {{"--ids", "LIST", "comma-separated token ids"},
       {"--checkpoint", "RUN_DIR", "the newest valid checkpoint of a run"},
       {"--random-init", "", "a freshly initialised model built from CONFIG"},
       {"--seed", "N", "initialisation seed for --random-init (default: the config's seed)"},
       {"--json", "", "print every logit as JSON"},
       skip_memory_check_flag(),
       keep_masters_flag()},
      "CONFIG  a YAML model description (with --random-init)",
      true};
  const std::optional<ParsedArgs> parsed = parse_command(spec, raw);
  if (!parsed) return 0;  // --help was printed
  const ParsedArgs& args = *parsed;
  const auto ids_text = args.get("--ids");
  if (!ids_text) throw UsageError("cli", "`nnkit logits` needs --ids 1,2,3");
  std::vector<int32_t> ids;
  std::stringstream stream(*ids_text);
  for (std::string item; std::getline(stream, item, ',');) {
    size_t used = 0;
    long long id = -1;
    try {
      id = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || id < 0 || id > INT32_MAX) {
      throw UsageError("cli", "--ids: '" + item + "' is not a token id");
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  if (ids.empty()) throw UsageError("cli", "--ids lists no ids");
  const auto checkpoint = args.get("--checkpoint");
  if (args.has("--random-init") == checkpoint.has_value()) {
    throw UsageError("cli", "give either CONFIG --random-init or --checkpoint RUN_DIR");
  }
  const MemoryPlan plan{"nnkit logits", [&ids](const RunConfig&) {
                          MemoryShape shape;
                          shape.workload = Workload::kEval;
                          shape.batch = 1;
                          shape.seq = static_cast<int64_t>(ids.size());
                          return shape;
                        }};
  LoadedModel loaded;
  if (checkpoint) {
    if (!args.positionals().empty()) {
      throw UsageError("cli", "--checkpoint takes the model from the run; drop CONFIG");
    }
    loaded = load_checkpoint_model(*checkpoint, args.overrides(), args, plan);
  } else {
    if (args.positionals().size() != 1) {
      throw UsageError("cli", "--random-init needs exactly one CONFIG (see --help)");
    }
    loaded = build_random_model(args.positionals()[0], args.overrides(), args,
                                args.get_int("--seed", -1, 0, INT64_MAX), plan);
  }
  const int64_t seq = static_cast<int64_t>(ids.size());
  if (seq > loaded.session.config.model.max_seq_len) {
    throw UsageError("cli", "--ids holds " + std::to_string(seq) + " ids, more than max_seq_len");
  }
  const Tensor logits = loaded.model->logits(ids, 1, seq);
  const int64_t vocab = loaded.session.config.model.vocab_size;
  std::vector<float> host(static_cast<size_t>(logits.numel()));
  loaded.backend->copy_to_host(host.data(), logits);
  if (args.has("--json")) {
    nlohmann::json rows = nlohmann::json::array();
    for (int64_t t = 0; t < seq; ++t) {
      rows.push_back(std::vector<float>(host.begin() + t * vocab, host.begin() + (t + 1) * vocab));
    }
    std::cout << nlohmann::json{{"ids", ids}, {"vocab_size", vocab}, {"logits", rows}}.dump()
              << "\n";
    return 0;
  }
  for (int64_t t = 0; t < seq; ++t) {
    const float* row = host.data() + t * vocab;
    std::vector<int64_t> order(static_cast<size_t>(vocab));
    for (int64_t v = 0; v < vocab; ++v) order[static_cast<size_t>(v)] = v;
    const int64_t k = std::min<int64_t>(5, vocab);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int64_t a, int64_t b) { return row[a] > row[b]; });
    std::cout << "position " << t << " (id " << ids[static_cast<size_t>(t)] << "):";
    for (int64_t i = 0; i < k; ++i) std::cout << " " << order[i] << "=" << row[order[i]];
    std::cout << "\n";
  }
  return 0;
}

}  // namespace nnkit::cli
