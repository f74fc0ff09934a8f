// Purpose: a small, strict command-line parser for the nnkit CLI: declared flags with help text,
// positionals, `key.path=value` config overrides, --help, and clear errors for unknown or
// malformed flags ("unknown flag '--sed'; did you mean '--seed'?").
// Ownership: value types; nothing global.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace nnkit::cli {

struct FlagSpec {
  std::string name;        // "--seed"
  std::string value_name;  // "N"; empty for boolean switches
  std::string help;
  bool repeatable = false;
  std::string short_name;  // "-o"
};

struct CommandSpec {
  std::string name;   // "eval"
  std::string usage;  // "nnkit eval CONFIG --random-init --data FILE [options]"
  std::string summary;
  std::vector<FlagSpec> flags;
  std::string positional_help;     // how positionals are used
  bool accepts_overrides = false;  // key.path=value arguments
};

class ParsedArgs {
 public:
  bool has(const std::string& flag) const { return values_.count(flag) != 0; }
  std::optional<std::string> get(const std::string& flag) const;
  std::string get_or(const std::string& flag, const std::string& fallback) const;
  std::vector<std::string> get_all(const std::string& flag) const;
  // Integer flag with a range check; throws UsageError naming the flag.
  int64_t get_int(const std::string& flag, int64_t fallback, int64_t min, int64_t max) const;
  double get_double(const std::string& flag, double fallback, double min, double max) const;
  const std::vector<std::string>& positionals() const { return positionals_; }
  const std::vector<std::string>& overrides() const { return overrides_; }
  // Where `override_text` stood on the command line (argv index: `nnkit validate C x=1` gives 3),
  // for messages; 0 for an override a command made up itself.
  int argument_number(const std::string& override_text) const;
  bool help() const { return help_; }

 private:
  friend ParsedArgs parse_args(const CommandSpec& spec, const std::vector<std::string>& args);
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positionals_;
  std::vector<std::string> overrides_;
  std::vector<int> override_arguments_;  // argv index of each entry of overrides_
  bool help_ = false;
};

// Throws UsageError on unknown flags, missing values and repeated non-repeatable flags.
ParsedArgs parse_args(const CommandSpec& spec, const std::vector<std::string>& args);
std::string format_help(const CommandSpec& spec);

}  // namespace nnkit::cli
