// Purpose: the YAML rules nnkit adds to what yaml-cpp accepts, shared by the config file and the
// values of command-line overrides: duplicate keys, merge keys (<<) and nesting deeper than
// kMaxNestingDepth or expanding (through aliases) to more than kMaxExpandedValues are errors, and a
// syntax error on a line indented with a tab says so. yaml-cpp (0.7 and 0.8 alike) keeps the first
// of two equal keys silently, treats `<<` as an ordinary key and only stops nesting at 2000 levels
// ("bad file"), so these checks walk the parsed tree themselves. Thread-safety: stateless
// functions. Ownership: returns yaml-cpp nodes by value.
#pragma once

#include <yaml-cpp/yaml.h>

#include <string>

namespace nnkit::config {

// Collections (mappings and lists) nested deeper than this are refused; real configs use fewer
// than ten levels, and a bound keeps recursive code (ours and yaml-cpp's) far from the stack's end.
inline constexpr int kMaxNestingDepth = 64;

// Values (scalars and collections) a document may hold once aliases are expanded. Aliases of
// aliases multiply ("billion laughs": nine levels of ten give 10^9 values from 1 KB); configs
// hold a few hundred values.
inline constexpr long kMaxExpandedValues = 1L << 20;

// Where a YAML text came from, to turn a yaml-cpp Mark into words.
struct YamlSource {
  std::string name;  // "tiny.yaml", or "command-line override 'a.b=1' (argument 3)"
  bool is_override = false;
  int column_offset = 0;  // override: characters before the value ("a.b=")

  // "tiny.yaml:15:7"; for an override "command-line override 'a.b={...}' (argument 3), column 9".
  std::string at(const YAML::Mark& mark) const;
  // The same position for a second mention in one message: "tiny.yaml:14:7" or "column 5".
  std::string again(const YAML::Mark& mark) const;
};

// Parses `text` and applies the rules above. `path` is the dotted path the text lands at ("" for
// a whole file) and `depth` the collections above it, so that messages and the depth bound fit
// the whole document. Throws ConfigError (tagged "config") with the position of the problem.
YAML::Node load_checked(const std::string& text, const YamlSource& source,
                        const std::string& path = "", int depth = 0);

}  // namespace nnkit::config
