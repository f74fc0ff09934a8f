// Purpose: `nnkit convert import-hf|export-hf`: Hugging Face model folders <-> nnkit run
// directories (see nnkit/hf.h for what maps and what is refused).
#include <iostream>

#include "args.h"
#include "commands.h"
#include "common.h"
#include "nnkit/error.h"
#include "nnkit/hf.h"
#include "nnkit/registry.h"
#include "same_path.h"

namespace nnkit::cli {

namespace {

// "1000000", "500MB" (10^6), "2GiB" (2^30): bytes per shard.
uint64_t parse_size(const std::string& text) {
  size_t used = 0;
  unsigned long long value = 0;
  try {
    value = std::stoull(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  const std::string unit = used > 0 ? text.substr(used) : "";
  static const std::pair<const char*, uint64_t> kUnits[] = {{"", 1},
                                                            {"B", 1},
                                                            {"KB", 1000},
                                                            {"MB", 1000000},
                                                            {"GB", 1000000000},
                                                            {"KiB", 1ull << 10},
                                                            {"MiB", 1ull << 20},
                                                            {"GiB", 1ull << 30}};
  if (used > 0 && value > 0) {
    for (const auto& [name, factor] : kUnits) {
      if (unit == name) return value * factor;
    }
  }
  throw UsageError("cli", "--shard-size '" + text + "' is not a size (e.g. 5GB, 500MiB, 1000000)");
}

}  // namespace

int run_convert(const Args& raw) {
  CommandSpec spec{
      "convert",
      "nnkit convert import-hf HF_DIR -o RUN_DIR\n"
      "       nnkit convert export-hf RUN_DIR -o HF_DIR [--dtype f32|bf16|f16] [--shard-size N]",
      "Converts between Hugging Face MixtralForCausalLM / LlamaForCausalLM folders (config.json, "
      "safetensors, optional shards index and tokenizer.model) and nnkit run directories. "
      "import-hf writes a checkpoint that `nnkit generate/eval --checkpoint RUN_DIR` use; "
      "export-hf writes the newest checkpoint of a run.",
      {{"--output", "DIR", "the run directory (import-hf) or HF folder (export-hf)", false, "-o"},
       {"--dtype", "TYPE", "export-hf: f32 (default), bf16 or f16"},
       {"--shard-size", "N",
        "export-hf: at most N bytes per shard (5GB, 500MiB, ...; default: "
        "one model.safetensors)"}},
      "import-hf HF_DIR | export-hf RUN_DIR"};
  const std::optional<ParsedArgs> parsed = parse_command(spec, raw);
  if (!parsed) return 0;  // --help was printed
  const ParsedArgs& args = *parsed;
  const auto& pos = args.positionals();
  if (pos.size() != 2 || (pos[0] != "import-hf" && pos[0] != "export-hf")) {
    throw UsageError("cli",
                     "usage: nnkit convert import-hf HF_DIR -o RUN_DIR | export-hf RUN_DIR "
                     "-o HF_DIR (see --help)");
  }
  const auto output = args.get("--output");
  if (!output) throw UsageError("cli", "`nnkit convert " + pos[0] + "` needs -o DIR");
  // Writing into the folder being read would replace the files still to be read.
  refuse_output_equal_to_input(*output, {pos[1]}, "-o " + *output);
  const Registry registry(Registry::default_search_paths(apply_common_flags(args)));
  if (pos[0] == "import-hf") {
    if (args.has("--dtype") || args.has("--shard-size")) {
      throw UsageError(
          "cli", "--dtype and --shard-size apply to export-hf (import keeps the HF files' dtypes)");
    }
    const HfImportReport report = import_hf(pos[1], *output, registry);
    std::cout << "imported " << report.architecture << " (" << group_digits(report.parameters)
              << " parameters) into " << report.checkpoint.string()
              << (report.tokenizer_copied ? " with its tokenizer.model" : "") << "\n";
    return 0;
  }
  HfExportOptions options;
  const std::string dtype = args.get_or("--dtype", "f32");
  if (dtype == "f32") {
    options.dtype = DType::kF32;
  } else if (dtype == "bf16") {
    options.dtype = DType::kBF16;
  } else if (dtype == "f16") {
    options.dtype = DType::kF16;
  } else {
    throw UsageError("cli", "--dtype '" + dtype + "' is not one of f32, bf16, f16");
  }
  if (auto size = args.get("--shard-size")) options.shard_bytes = parse_size(*size);
  const HfExportReport report = export_hf(pos[1], *output, registry, options);
  std::cout << "exported " << report.architecture << " to " << *output << ":";
  for (const auto& file : report.files) std::cout << " " << file.filename().string();
  std::cout << "\n";
  return 0;
}

}  // namespace nnkit::cli
