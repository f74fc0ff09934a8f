// Purpose: `nnkit validate CONFIG [overrides] [--json]`: resolves the config, loads every plugin
// it names, builds the model without allocating weights and prints the resolved config and the
// parameter counts. The backend is checked against its declared options but never created:
// creating one claims a device, and validating a CUDA config must work on a machine without a
// GPU.
#include <iostream>
#include <nlohmann/json.hpp>

#include "args.h"
#include "commands.h"
#include "common.h"
#include "nnkit/model.h"

namespace nnkit::cli {

int run_validate(const Args& raw) {
  CommandSpec spec{"validate",
                   "nnkit validate CONFIG [key.path=value ...] [--json]",
                   "Checks a model description: YAML, keys, types, ranges and plugins; builds the "
                   "model (no weights are allocated) and prints parameter counts.",
                   {{"--json", "", "print {total_params, active_params, ...} as JSON"}},
                   "CONFIG  a YAML model description, e.g. configs/tiny.yaml",
                   true};
  const std::optional<ParsedArgs> parsed = parse_command(spec, raw);
  if (!parsed) return 0;  // --help was printed
  const ParsedArgs& args = *parsed;
  if (args.positionals().size() != 1) {
    throw UsageError("cli", "`nnkit validate` needs exactly one CONFIG (see --help)");
  }
  Session session = open_session(args.positionals()[0], args.overrides(), args);
  auto tokenizer = create_tokenizer(session);
  // No backend: constructing a Transformer allocates nothing and its components accept a null
  // backend (resolve_config creates them the same way), which is all counting needs.
  const Transformer model(session.config, *session.registry, nullptr);
  const int64_t total = model.parameter_count();
  const int64_t active = model.active_parameter_count();
  if (args.has("--json")) {
    nlohmann::json out{{"config", session.config.source_name},
                       {"total_params", total},
                       {"active_params", active},
                       {"n_layers", session.config.model.n_layers},
                       {"moe", session.config.model.is_moe},
                       {"rope_base", model.rope_base()},
                       {"kv_cache_bytes_per_token", model.kv_cache_bytes_per_token()},
                       {"resolved", session.config.to_yaml()}};
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  std::cout << "# resolved configuration (defaults filled in)\n"
            << session.config.to_yaml() << "\n"
            << "# " << session.config.source_name << " is valid\n"
            << "#   parameters:        " << group_digits(total) << "\n"
            << "#   active per token:  " << group_digits(active) << "\n"
            << "#   RoPE base (NTK):   " << model.rope_base() << "\n"
            << "#   KV cache:          " << group_digits(model.kv_cache_bytes_per_token())
            << " bytes per token (fp32)\n";
  return 0;
}

}  // namespace nnkit::cli
