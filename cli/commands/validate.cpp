// Purpose: `nnkit validate CONFIG [overrides] [--json] [--show-origin]`: resolves the config, loads
// every plugin it names, builds the model without allocating weights and prints the resolved
// config (with --show-origin, every value with the file:line, override or default it came from)
// and the parameter counts and memory estimates (nnkit/memory_estimate.h). The backend is checked
// against its declared options but never created: creating one claims a device, and validating a
// CUDA config must work on a machine without a GPU.
#include <algorithm>
#include <iostream>
#include <nlohmann/json.hpp>
#include <vector>

#include "args.h"
#include "commands.h"
#include "common.h"
#include "nnkit/memory_estimate.h"
#include "nnkit/model.h"

namespace nnkit::cli {

namespace {

nlohmann::json memory_json(const MemoryEstimate& e) {
  return {{"parameters", e.parameters},     {"compute_copies", e.compute_copies},
          {"gradients", e.gradients},       {"optimizer_state", e.optimizer_state},
          {"activations", e.activations},   {"kv_cache", e.kv_cache},
          {"load_staging", e.load_staging}, {"total", e.total()}};
}

// The resolved values with their origins, one per line, values and origins in aligned columns.
void print_origins(const std::vector<ValueOrigin>& origins) {
  size_t key_width = 0;
  size_t value_width = 0;
  for (const ValueOrigin& o : origins) {
    key_width = std::max(key_width, o.path.size());
    value_width = std::max(value_width, o.value.size());
  }
  std::cout << "# resolved configuration: each value and where it came from (file:line, "
               "command-line override, or default)\n";
  for (const ValueOrigin& o : origins) {
    std::cout << o.path << ": " << std::string(key_width - o.path.size(), ' ') << o.value
              << std::string(value_width - o.value.size(), ' ') << "  # " << o.origin << "\n";
  }
}

}  // namespace

int run_validate(const Args& raw) {
  CommandSpec spec{"validate",
                   "nnkit validate CONFIG [key.path=value ...] [--json] [--show-origin]",
                   "Checks a model description: YAML, keys, types, ranges and plugins; builds the "
                   "model (no weights are allocated) and prints parameter counts.",
                   {{"--json", "", "print {total_params, active_params, ...} as JSON"},
                    {"--show-origin", "",
                     "list every resolved value with where it came from (file:line, override, "
                     "default)"}},
                   "CONFIG  a YAML model description, e.g. configs/tiny.yaml",
                   true};
  const std::optional<ParsedArgs> parsed = parse_command(spec, raw);
  if (!parsed) return 0;  // --help was printed
  const ParsedArgs& args = *parsed;
  if (args.positionals().size() != 1) {
    throw UsageError("cli", "`nnkit validate` needs exactly one CONFIG (see --help)");
  }
  Session session = open_session(args.positionals()[0], args.overrides(), args);
  std::vector<ValueOrigin> origins;
  if (args.has("--show-origin")) {
    // The session keeps only the typed config; read the document again, as open_session does,
    // to ask it where each value came from.
    ConfigDocument document = ConfigDocument::load_file(args.positionals()[0]);
    for (const std::string& o : args.overrides())
      document.apply_override(o, args.argument_number(o));
    origins = value_origins(session.config, document);
  }
  auto tokenizer = create_tokenizer(session);
  // No backend: constructing a Transformer allocates nothing and its components accept a null
  // backend (resolve_config creates them the same way), which is all counting needs.
  const Transformer model(session.config, *session.registry, nullptr);
  const int64_t total = model.parameter_count();
  const int64_t active = model.active_parameter_count();
  // The memory the commands would need: a training step and an eval batch at train.batch_size x
  // train.seq_len, and generating one sequence that fills model.max_seq_len.
  const RunConfig& cfg = session.config;
  MemoryShape train_shape{Workload::kTrain, cfg.train.batch_size, cfg.train.seq_len, 0,
                          cfg.train.activation_checkpointing};
  MemoryShape eval_shape{Workload::kEval, cfg.train.batch_size, cfg.train.seq_len, 0, false};
  MemoryShape generate_shape{Workload::kGenerate, 1, cfg.model.max_seq_len, cfg.model.max_seq_len,
                             false};
  const MemoryEstimate train_memory = estimate_memory(cfg, total, train_shape);
  const MemoryEstimate eval_memory = estimate_memory(cfg, total, eval_shape);
  const MemoryEstimate generate_memory = estimate_memory(cfg, total, generate_shape);
  const auto available = host_memory_available();
  const bool on_host = train_memory.device == "cpu";
  if (args.has("--json")) {
    nlohmann::json out{{"config", session.config.source_name},
                       {"total_params", total},
                       {"active_params", active},
                       {"n_layers", session.config.model.n_layers},
                       {"moe", session.config.model.is_moe},
                       {"rope_base", model.rope_base()},
                       {"kv_cache_bytes_per_token", model.kv_cache_bytes_per_token()},
                       {"memory_bytes", memory_json(train_memory)},
                       {"memory_bytes_eval", memory_json(eval_memory)},
                       {"memory_bytes_generate", memory_json(generate_memory)},
                       {"memory_precision", train_memory.precision},
                       // Only host memory can be read: the Backend interface has no query for a
                       // device's free memory, so a CUDA config's estimate is not compared.
                       {"memory_available_bytes",
                        on_host && available ? nlohmann::json(available->bytes) : nlohmann::json()},
                       {"resolved", session.config.to_yaml()}};
    if (args.has("--show-origin")) {
      nlohmann::json listed = nlohmann::json::array();
      for (const ValueOrigin& o : origins) {
        listed.push_back({{"path", o.path}, {"value", o.value}, {"origin", o.origin}});
      }
      out["origins"] = listed;
    }
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  if (args.has("--show-origin")) {
    print_origins(origins);
    std::cout << "\n";
  } else {
    std::cout << "# resolved configuration (defaults filled in)\n"
              << session.config.to_yaml() << "\n";
  }
  std::cout << "# " << session.config.source_name << " is valid\n"
            << "#   parameters:        " << group_digits(total) << "\n"
            << "#   active per token:  " << group_digits(active) << "\n"
            << "#   RoPE base (NTK):   " << model.rope_base() << "\n"
            << "#   KV cache:          " << group_digits(model.kv_cache_bytes_per_token())
            << " bytes per token (fp32)\n"
            << "#   memory (train):    " << format_bytes(train_memory.total()) << " ("
            << describe(train_memory) << ")\n"
            << "#   memory (eval):     " << format_bytes(eval_memory.total()) << "\n"
            << "#   memory (generate): " << format_bytes(generate_memory.total())
            << " (one sequence of " << cfg.model.max_seq_len << " tokens)\n";
  if (on_host && available) {
    std::cout << "#   available:         " << format_bytes(available->bytes) << " ("
              << available->source << ")\n";
  } else if (!on_host) {
    std::cout << "#   available:         not checked (" << train_memory.device
              << " device memory cannot be queried through the backend)\n";
  }
  return 0;
}

}  // namespace nnkit::cli
