// Purpose: what every CLI command shares: flags common to all commands (--log-level,
// --plugin-path), loading a config with overrides into a registry + RunConfig, creating the
// backend and tokenizer it names, and reading text/token data.
// Ownership: Session owns the registry; components created from it keep their libraries alive.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "args.h"
#include "nnkit/backend.h"
#include "nnkit/config.h"
#include "nnkit/plugin_record.h"
#include "nnkit/registry.h"
#include "nnkit/tokenizer.h"

namespace nnkit::cli {

std::vector<FlagSpec> common_flags();
// Adds the common flags to `spec` and parses; prints the help and returns nullopt for --help.
std::optional<ParsedArgs> parse_command(CommandSpec spec, const std::vector<std::string>& raw);
// Applies --log-level; returns the explicit plugin paths from --plugin-path.
std::vector<std::filesystem::path> apply_common_flags(const ParsedArgs& args);
// How the registry of this command treats what it finds: --allow-unsafe-plugin-dirs and the
// config's plugin_prefer: (empty for commands without a config).
RegistryOptions registry_options(const ParsedArgs& args,
                                 std::map<std::string, std::filesystem::path> prefer = {});

struct Session {
  std::unique_ptr<Registry> registry;
  RunConfig config;
};

// Loads CONFIG, applies overrides, scans plugins (--plugin-path, plugin_paths:, defaults) and
// resolves the config. Throws ConfigError/PluginError with positions.
Session open_session(const std::filesystem::path& config_path,
                     const std::vector<std::string>& overrides, const ParsedArgs& args);
// Same, from YAML text already in memory (a checkpoint's stored config). `recorded` (a run's
// plugins.json) names the libraries to load first and prefer, so a run reloads the plugins it
// was trained with from any working directory.
Session open_session_from_text(const std::string& yaml, const std::string& source_name,
                               const std::vector<std::string>& overrides, const ParsedArgs& args,
                               const std::vector<PluginRecord>& recorded = {});

// Writes RUN/plugins.json for the plugins session's config uses; on `resume`, first warns for
// each library that changed since the run recorded it (another file or another SHA-256).
void record_run_plugins(const std::filesystem::path& run_dir, const Session& session, bool resume);

std::shared_ptr<Backend> create_backend(const Session& session);
std::shared_ptr<Tokenizer> create_tokenizer(const Session& session);

// Reads FILE as text (tokenised with `tokenizer`) or, if it is an nnkit token file, as ids.
// Throws IoError for a missing, unreadable or empty file.
std::vector<int32_t> load_token_ids(const std::filesystem::path& file, const Tokenizer& tokenizer,
                                    int64_t vocab_size);

// 6882678528 -> "6,882,678,528"
std::string group_digits(int64_t value);

}  // namespace nnkit::cli
