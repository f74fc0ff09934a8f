// Purpose: `nnkit eval`: mean cross-entropy and perplexity of a model over a data file, in
// non-overlapping windows of train.seq_len tokens; the model is either randomly initialised from
// a CONFIG (--random-init) or loaded from a run directory (--checkpoint). A loss that is not
// finite is an error (exit 1, like a diverged training run) naming the batch and position.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "args.h"
#include "commands.h"
#include "common.h"
#include "data_identity.h"
#include "memory_check.h"
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

std::string number_text(double x) {
  std::ostringstream out;
  out << x;
  return out.str();
}

// Called once a batch's mean loss is not finite: recomputes that batch's per-token cross-entropy
// on the host from its logits to name the first position that is not finite, so that the error
// says where (a NaN anywhere in a batch poisons the mean, and a mean of nan with exit 0 hid it).
// Costs a second forward of one batch, on the failure path only.
[[noreturn]] void throw_non_finite(Transformer& model, const std::vector<int32_t>& inputs,
                                   const std::vector<int32_t>& targets, int64_t rows,
                                   int64_t seq_len, int64_t batch_index, int64_t batches,
                                   int64_t first_token, double loss) {
  std::string where = "batch " + std::to_string(batch_index + 1) + " of " +
                      std::to_string(batches) + " (data tokens from " +
                      std::to_string(first_token) + ")";
  const Tensor logits = model.logits(inputs, rows, seq_len);
  const int64_t vocab = model.config().vocab_size;
  std::vector<float> host(static_cast<size_t>(logits.numel()));
  model.backend().copy_to_host(host.data(), logits);
  for (int64_t i = 0; i < rows * seq_len; ++i) {
    const int32_t target = targets[static_cast<size_t>(i)];
    if (target < 0) continue;
    const float* row = host.data() + i * vocab;
    double max_logit = -std::numeric_limits<double>::infinity();
    bool finite = true;
    for (int64_t v = 0; v < vocab; ++v) {
      finite = finite && std::isfinite(row[v]);
      max_logit = std::max(max_logit, static_cast<double>(row[v]));
    }
    double sum = 0.0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - max_logit);
    const double token_loss = max_logit + std::log(sum) - static_cast<double>(row[target]);
    if (finite && std::isfinite(token_loss)) continue;
    const int64_t r = i / seq_len;
    const int64_t t = i % seq_len;
    where += ", first at row " + std::to_string(r) + " position " + std::to_string(t) +
             " (data token " + std::to_string(first_token + r * seq_len + t) + ", loss " +
             number_text(token_loss) + (finite ? "" : ", non-finite logits") + ")";
    break;
  }
  throw Error("eval", "the loss is not finite (" + number_text(loss) + ") at " + where +
                          "; the model's weights probably hold NaN or inf (a diverged run?)");
}

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
  const int64_t windows = (usable - 1 + seq_len - 1) / seq_len;
  const int64_t batches = (windows + batch_size - 1) / batch_size;
  for (int64_t batch_index = 0; start + 1 < usable; ++batch_index) {
    const int64_t first_token = start;
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
    if (!std::isfinite(loss)) {
      throw_non_finite(model, inputs, targets, rows, seq_len, batch_index, batches, first_token,
                       loss);
    }
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
       {"--json", "", "print {loss, ppl, tokens} as JSON"},
       skip_memory_check_flag(),
       keep_masters_flag(),
       allow_tokenizer_mismatch_flag()},
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
  // One batch of train.batch_size windows of train.seq_len tokens at a time.
  const MemoryPlan plan{"nnkit eval", [](const RunConfig& cfg) {
                          MemoryShape shape;
                          shape.workload = Workload::kEval;
                          shape.batch = cfg.train.batch_size;
                          shape.seq = cfg.train.seq_len;
                          return shape;
                        }};
  LoadedModel loaded;
  if (random_init) {
    if (args.positionals().size() != 1) {
      throw UsageError("cli", "--random-init needs exactly one CONFIG (see --help)");
    }
    const int64_t seed = args.get_int("--seed", -1, 0, INT64_MAX);
    loaded = build_random_model(args.positionals()[0], args.overrides(), args, seed, plan);
  } else {
    if (!args.positionals().empty()) {
      throw UsageError("cli", "--checkpoint takes the model from the run; drop CONFIG");
    }
    loaded = load_checkpoint_model(*checkpoint, args.overrides(), args, plan);
  }
  const RunConfig& cfg = loaded.session.config;
  check_data_tokenizer(*data, tokenizer_identity(loaded.session, *loaded.tokenizer), args);
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
