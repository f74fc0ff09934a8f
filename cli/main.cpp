// Purpose: the `nnkit` command: dispatches to sub-commands and turns every nnkit::Error into one
// clear line on stderr and a non-zero exit code (2 for usage, configuration and plugin errors, 1
// for the rest), never a crash.
#include <cstring>
#include <iostream>
#include <map>

#include "commands.h"
#include "nnkit/error.h"
#include "nnkit/logging.h"
#include "nnkit/version.h"

namespace {

using Runner = int (*)(const nnkit::cli::Args&);

struct CommandEntry {
  Runner run;
  const char* summary;
};

const std::map<std::string, CommandEntry>& commands() {
  static const std::map<std::string, CommandEntry> table = {
      {"plugins", {nnkit::cli::run_plugins, "list plugins, search paths and skipped libraries"}},
      {"validate", {nnkit::cli::run_validate, "check a config and count parameters"}},
      {"eval", {nnkit::cli::run_eval, "loss and perplexity on a data file"}},
      {"train", {nnkit::cli::run_train, "train a model (checkpoints, resume, metrics)"}},
      {"generate", {nnkit::cli::run_generate, "generate text with a sampler chain"}},
      {"data", {nnkit::cli::run_data, "prepare token files (data prepare)"}},
      {"plot", {nnkit::cli::run_plot, "loss curve of a run as SVG"}},
      {"tokenizer", {nnkit::cli::run_tokenizer, "train / inspect SentencePiece tokenizers"}},
      {"convert", {nnkit::cli::run_convert, "Hugging Face folders <-> run directories"}},
      {"logits", {nnkit::cli::run_logits, "raw logits of a few ids (parity checks)"}},
      {"check-plugin",
       {nnkit::cli::run_check_plugin, "conformance checks of one plugin (gradients, shapes, ...)"}},
      {"runs", {nnkit::cli::run_runs, "list, show and compare run directories"}},
      {"sweep", {nnkit::cli::run_sweep, "train a grid/list of config variants; summary and plot"}},
  };
  return table;
}

void print_usage() {
  std::cout << "nnkit " << nnkit::kVersion << " — plugin-based transformer and MoE toolkit\n\n"
            << "Usage: nnkit COMMAND [options]   (nnkit COMMAND --help for details)\n\nCommands:\n";
  for (const auto& [name, entry] : commands()) {
    std::string padded = name;
    padded.resize(14, ' ');
    std::cout << "  " << padded << entry.summary << "\n";
  }
  std::cout << "\n  --version   print the version and the plugin ABI version\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    print_usage();
    return argc < 2 ? 2 : 0;
  }
  if (std::strcmp(argv[1], "--version") == 0) {
    std::cout << "nnkit " << nnkit::kVersion << " (plugin ABI " << nnkit::kPluginAbiVersion
              << ", build " << NNKIT_BUILD_TAG << ")\n";
    return 0;
  }
  auto it = commands().find(argv[1]);
  if (it == commands().end()) {
    std::cerr << "nnkit: unknown command '" << argv[1] << "'; run `nnkit --help` for the list\n";
    return 2;
  }
  nnkit::cli::Args args(argv + 2, argv + argc);
  try {
    return it->second.run(args);
  } catch (const nnkit::UsageError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const nnkit::ConfigError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const nnkit::PluginError& e) {  // an unknown plugin name is bad input, like a bad key
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const nnkit::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const std::bad_alloc&) {
    std::cerr << "error: out of memory (the model or batch is too large for this machine)\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
