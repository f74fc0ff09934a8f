// Purpose: `nnkit eval`: mean cross-entropy and perplexity of a model over a data file, in
// non-overlapping windows of train.seq_len tokens; the model is either randomly initialised from
// a CONFIG (--random-init) or loaded from a run directory (--checkpoint).
#include <cmath>
#include <iostream>
#include <nlohmann/json.hpp>

#include "args.h"
#include "commands.h"
#include "common.h"
#include "nnkit/error.h"
#include "nnkit/logging.h"
#include "nnkit/model.h"
#include "run_loader.h"

namespace nnkit::cli {

namespace {

struct EvalResult {
  double loss = 0.0;
  int64_t tokens = 0;
};

// Windows of seq_len + 1 ids (inputs and shifted targets), batch_size at a time; the last window
// may be shorter and is padded with ignored targets.
EvalResult evaluate(Transformer& model, const std::vector<int32_t>& ids, int64_t seq_len,
                    int64_t batch_size, int64_t max_tokens) {
  const int64_t usable = max_tokens > 0 ? std::min<int64_t>(ids.size(), max_tokens + 1)
                                        : static_cast<int64_t>(ids.size());
  if (usable < 2) {
    throw IoError("data", "the data holds " + std::to_string(usable) +
                              " token(s); evaluation needs at least 2");
  }
  double weighted = 0.0;
  int64_t counted = 0;
  std::vector<int32_t> inputs, targets;
  int64_t start = 0;
  while (start + 1 < usable) {
    inputs.assign(static_cast<size_t>(batch_size * seq_len), 0);
    targets.assign(static_cast<size_t>(batch_size * seq_len), -1);
    int64_t rows = 0;
    int64_t batch_tokens = 0;
    for (; rows < batch_size && start + 1 < usable; ++rows) {
      const int64_t n = std::min<int64_t>(seq_len, usable - 1 - start);
      for (int64_t t = 0; t < n; ++t) {
        inputs[static_cast<size_t>(rows * seq_len + t)] = ids[static_cast<size_t>(start + t)];
        targets[static_cast<size_t>(rows * seq_len + t)] = ids[static_cast<size_t>(start + t + 1)];
      }
      batch_tokens += n;
      start += n;
    }
    inputs.resize(static_cast<size_t>(rows * seq_len));
    targets.resize(static_cast<size_t>(rows * seq_len));
    const double loss = model.forward_loss(inputs, targets, rows, seq_len, false, false);
    weighted += loss * static_cast<double>(batch_tokens);
    counted += batch_tokens;
  }
  return {weighted / static_cast<double>(counted), counted};
}

}  // namespace

int run_eval(const Args& raw) {
  CommandSpec spec{
      "eval",
      "nnkit eval (CONFIG --random-init | --checkpoint RUN_DIR) --data FILE [options]",
      "Mean cross-entropy (nats/token) and perplexity over FILE (text, tokenised with the "
      "configured tokenizer, or a token file from `nnkit data prepare`).",
      {{"--data", "FILE", "text or token file to evaluate on"},
       {"--random-init", "", "evaluate a freshly initialised model built from CONFIG"},
       {"--checkpoint", "RUN_DIR", "evaluate the newest valid checkpoint of a training run"},
       {"--seed", "N", "initialisation seed for --random-init (default: the config's seed)"},
       {"--max-tokens", "N", "evaluate at most N tokens"},
       {"--json", "", "print {loss, ppl, tokens} as JSON"}},
      "CONFIG  a YAML model description (with --random-init)",
      true};
  const std::optional<ParsedArgs> parsed = parse_command(spec, raw);
  if (!parsed) return 0;  // --help was printed
  const ParsedArgs& args = *parsed;
  const auto data = args.get("--data");
  if (!data) throw UsageError("cli", "`nnkit eval` needs --data FILE");
  const bool random_init = args.has("--random-init");
  const auto checkpoint = args.get("--checkpoint");
  if (random_init == checkpoint.has_value()) {
    throw UsageError("cli", "give either CONFIG --random-init or --checkpoint RUN_DIR");
  }
  LoadedModel loaded;
  if (random_init) {
    if (args.positionals().size() != 1) {
      throw UsageError("cli", "--random-init needs exactly one CONFIG (see --help)");
    }
    const int64_t seed = args.get_int("--seed", -1, 0, INT64_MAX);
    loaded = build_random_model(args.positionals()[0], args.overrides(), args, seed);
  } else {
    if (!args.positionals().empty()) {
      throw UsageError("cli", "--checkpoint takes the model from the run; drop CONFIG");
    }
    loaded = load_checkpoint_model(*checkpoint, args.overrides(), args);
  }
  const RunConfig& cfg = loaded.session.config;
  const std::vector<int32_t> ids = load_token_ids(*data, *loaded.tokenizer, cfg.model.vocab_size);
  const int64_t max_tokens = args.get_int("--max-tokens", 0, 1, INT64_MAX);
  const EvalResult result =
      evaluate(*loaded.model, ids, cfg.train.seq_len, cfg.train.batch_size, max_tokens);
  const double ppl = std::exp(result.loss);
  if (args.has("--json")) {
    std::cout << nlohmann::json{{"loss", result.loss},
                                {"ppl", ppl},
                                {"tokens", result.tokens},
                                {"ln_vocab", std::log(double(cfg.model.vocab_size))}}
                     .dump()
              << "\n";
  } else {
    std::cout << "loss " << result.loss << " nats/token, perplexity " << ppl << " over "
              << result.tokens << " tokens (ln(vocab) = " << std::log(double(cfg.model.vocab_size))
              << ")\n";
  }
  return 0;
}

}  // namespace nnkit::cli
