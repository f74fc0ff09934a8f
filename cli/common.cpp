// Purpose: see common.h.
#include "common.h"

#include <fstream>
#include <iostream>
#include <sstream>

#include "nnkit/error.h"
#include "nnkit/io/token_file.h"
#include "nnkit/logging.h"

namespace nnkit::cli {

namespace fs = std::filesystem;

std::vector<FlagSpec> common_flags() {
  return {
      {"--log-level", "LEVEL", "trace, debug, info (default), warn, error, off"},
      {"--plugin-path", "DIR", "extra folder (or library) to search for plugins first", true},
      {"--allow-unsafe-plugin-dirs", "",
       "load plugins from world-writable folders (refused by default)"},
  };
}

std::optional<ParsedArgs> parse_command(CommandSpec spec, const std::vector<std::string>& raw) {
  for (FlagSpec& f : common_flags()) spec.flags.push_back(std::move(f));
  ParsedArgs args = parse_args(spec, raw);
  if (args.help()) {
    std::cout << format_help(spec);
    return std::nullopt;
  }
  return args;
}

std::vector<fs::path> apply_common_flags(const ParsedArgs& args) {
  if (auto level = args.get("--log-level")) set_log_level(*level);
  std::vector<fs::path> paths;
  for (const std::string& p : args.get_all("--plugin-path")) paths.emplace_back(p);
  return paths;
}

RegistryOptions registry_options(const ParsedArgs& args, std::map<std::string, fs::path> prefer) {
  RegistryOptions options;
  options.prefer = std::move(prefer);
  options.allow_unsafe_dirs = args.has("--allow-unsafe-plugin-dirs");
  return options;
}

namespace {

Session finish_session(ConfigDocument document, const std::vector<std::string>& overrides,
                       const ParsedArgs& args, const std::vector<PluginRecord>& recorded = {}) {
  for (const std::string& o : overrides) document.apply_override(o, args.argument_number(o));
  std::vector<fs::path> explicit_paths = apply_common_flags(args);
  for (const fs::path& p : document.plugin_paths()) explicit_paths.push_back(p);
  RegistryOptions options = registry_options(args, document.plugin_prefer());
  // A run's own libraries (RUN/plugins.json) come first and win, wherever the command runs from
  // and whatever --plugin-path it was trained with; one that is gone or no longer loads (a
  // build tree replaced by an installation) leaves the plugin to the search path.
  for (const PluginRecord& r : recorded) {
    std::error_code ec;
    if (!fs::is_regular_file(r.path, ec)) {
      logger()->warn("{} was trained with {}, which no longer exists; searching for {} again",
                     r.id(), r.path, r.id());
      continue;
    }
    options.prefer_if_loadable.emplace(r.id(), r.path);
  }
  Session session;
  session.registry = std::make_unique<Registry>(Registry::default_search_paths(explicit_paths),
                                                std::move(options));
  session.config = resolve_config(document, *session.registry);
  return session;
}

}  // namespace

Session open_session(const fs::path& config_path, const std::vector<std::string>& overrides,
                     const ParsedArgs& args) {
  return finish_session(ConfigDocument::load_file(config_path), overrides, args);
}

Session open_session_from_text(const std::string& yaml, const std::string& source_name,
                               const std::vector<std::string>& overrides, const ParsedArgs& args,
                               const std::vector<PluginRecord>& recorded) {
  return finish_session(ConfigDocument::parse(yaml, source_name), overrides, args, recorded);
}

void record_run_plugins(const fs::path& run_dir, const Session& session, bool resume) {
  const std::vector<PluginRecord> now = plugin_records(session.config, *session.registry);
  if (resume) {
    for (const std::string& change : plugin_record_changes(read_plugin_records(run_dir), now)) {
      logger()->warn("resuming {} with a different plugin library: {}", run_dir.string(), change);
    }
  }
  write_plugin_records(run_dir, now);
}

std::shared_ptr<Backend> create_backend(const Session& session) {
  const PluginChoice& b = session.config.backend;
  return session.registry->create<Backend>(b.kind, b.name, CreateArgs{b.options, {}, nullptr});
}

std::shared_ptr<Tokenizer> create_tokenizer(const Session& session) {
  const PluginChoice& t = session.config.tokenizer;
  auto tokenizer =
      session.registry->create<Tokenizer>(t.kind, t.name, CreateArgs{t.options, {}, nullptr});
  if (tokenizer->vocab_size() > session.config.model.vocab_size) {
    throw ConfigError(
        "config", "tokenizer " + t.id() + " has " + std::to_string(tokenizer->vocab_size()) +
                      " ids but model.vocab_size is " +
                      std::to_string(session.config.model.vocab_size) + "; raise model.vocab_size");
  }
  return tokenizer;
}

std::vector<int32_t> load_token_ids(const fs::path& file, const Tokenizer& tokenizer,
                                    int64_t vocab_size) {
  std::error_code ec;
  if (!fs::exists(file, ec)) {
    throw IoError("data", "data file " + file.string() + " does not exist");
  }
  if (fs::is_directory(file, ec)) {
    throw IoError("data", file.string() + " is a directory; pass a text file or a token file");
  }
  if (is_token_file(file)) {
    TokenFile tokens(file);
    if (tokens.vocab_size() > vocab_size) {
      throw IoError("data", file.string() + " was prepared for a vocabulary of " +
                                std::to_string(tokens.vocab_size()) + " ids but the model has " +
                                std::to_string(vocab_size));
    }
    std::vector<int32_t> ids(static_cast<size_t>(tokens.size()));
    for (int64_t i = 0; i < tokens.size(); ++i) ids[static_cast<size_t>(i)] = tokens.at(i);
    if (ids.empty()) throw IoError("data", "data file " + file.string() + " contains no tokens");
    return ids;
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) throw IoError("data", "cannot read data file " + file.string());
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  if (text.empty()) {
    throw IoError("data", "data file " + file.string() + " is empty; give it some text");
  }
  return tokenizer.encode(text);
}

std::string group_digits(int64_t value) {
  std::string digits = std::to_string(value < 0 ? -value : value);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return value < 0 ? "-" + out : out;
}

}  // namespace nnkit::cli
