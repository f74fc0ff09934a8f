// Purpose: typed plugin options. A plugin declares OptionSpecs (name, type, default, range, help);
// the core validates the user's YAML against them and hands the plugin an Options object that
// knows where each value came from, so plugin-level checks can report file:line:col too.
// Ownership: Options is a value type; it holds copies of the resolved values and their locations.
// Plugins never see yaml-cpp.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "nnkit/export.h"

namespace nnkit {

enum class OptionType : uint8_t { kInt, kFloat, kBool, kString };

NNKIT_API const char* option_type_name(OptionType type);

struct OptionSpec {
  std::string name;  // dotted for nested maps: "rope.base"
  OptionType type = OptionType::kInt;
  std::string default_value;  // YAML text; "" = required, "null" = optional with no value
  std::optional<double> min;  // inclusive bounds for numbers
  std::optional<double> max;
  std::string help;
};

// Where a value came from: a YAML position or a command-line override.
struct SourceLocation {
  std::string file;  // file name, or "<command line>" / "<default>"
  int line = 0;      // 1-based; 0 when not from a file
  int column = 0;    // 1-based
  NNKIT_API std::string str() const;
};

class NNKIT_API Options {
 public:
  Options() = default;
  // `component` tags errors ("attention/mqa"); `path` is the YAML path of the map
  // ("model.attention").
  Options(std::string component, std::string path, SourceLocation location);

  struct Value {
    OptionType type = OptionType::kInt;
    bool is_null = false;
    int64_t int_value = 0;
    double float_value = 0.0;
    bool bool_value = false;
    std::string string_value;
    SourceLocation location;
  };

  void set(const std::string& name, Value value);
  bool has(const std::string& name) const { return values_.count(name) != 0; }
  bool is_null(const std::string& name) const;

  int64_t get_int(const std::string& name) const;
  double get_float(const std::string& name) const;  // ints convert
  bool get_bool(const std::string& name) const;
  const std::string& get_string(const std::string& name) const;

  const std::string& component() const { return component_; }
  const std::string& path() const { return path_; }
  const SourceLocation& location() const { return location_; }
  SourceLocation location_of(const std::string& name) const;
  const std::map<std::string, Value>& values() const { return values_; }

  // Throws ConfigError: "[component] model.attention.n_heads (12) ...: <message> at file:line:col".
  [[noreturn]] void fail(const std::string& name, const std::string& message) const;

 private:
  const Value& at(const std::string& name, OptionType expected) const;

  std::string component_;
  std::string path_;
  SourceLocation location_;
  std::map<std::string, Value> values_;
};

// A value of `spec` written as YAML scalar text ("0.9", "true", "null"), with no range check:
// what a declared default or a test's setting means. Throws ConfigError tagged `component` when
// the text is not a value of the spec's type. (Appended in ABI 3.)
NNKIT_API Options::Value parse_option_text(const OptionSpec& spec, const std::string& text,
                                           const std::string& component);
// "" when the spec's declared default is usable (empty = required, "null", or a value of its type
// inside its own range); else what is wrong with it ("default 5 is outside its own range [0,
// 1]"). The registry, the config and `nnkit check-plugin` blame the plugin for these.
NNKIT_API std::string declared_default_problem(const OptionSpec& spec);

}  // namespace nnkit
