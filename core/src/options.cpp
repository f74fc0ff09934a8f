// Purpose: Options accessors and their position-tagged errors.
#include "nnkit/options.h"

#include <cmath>

#include "nnkit/error.h"

namespace nnkit {

const char* option_type_name(OptionType type) {
  switch (type) {
    case OptionType::kInt:
      return "integer";
    case OptionType::kFloat:
      return "number";
    case OptionType::kBool:
      return "boolean";
    case OptionType::kString:
      return "string";
  }
  return "?";
}

std::string SourceLocation::str() const {
  if (line <= 0) return file.empty() ? "<default>" : file;
  return file + ":" + std::to_string(line) + ":" + std::to_string(column);
}

Options::Options(std::string component, std::string path, SourceLocation location)
    : component_(std::move(component)), path_(std::move(path)), location_(std::move(location)) {}

void Options::set(const std::string& name, Value value) {
  values_[name] = std::move(value);
}

bool Options::is_null(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() || it->second.is_null;
}

const Options::Value& Options::at(const std::string& name, OptionType expected) const {
  auto it = values_.find(name);
  if (it == values_.end()) {
    throw ConfigError(component_, "option '" + name + "' of " + path_ +
                                      " was not declared by the plugin (plugin bug)");
  }
  if (it->second.is_null) fail(name, "has no value (null) but one is needed here");
  const bool numeric_ok = expected == OptionType::kFloat && it->second.type == OptionType::kInt;
  if (it->second.type != expected && !numeric_ok) {
    fail(name, std::string("is a ") + option_type_name(it->second.type) + ", expected " +
                   option_type_name(expected));
  }
  return it->second;
}

int64_t Options::get_int(const std::string& name) const {
  return at(name, OptionType::kInt).int_value;
}

double Options::get_float(const std::string& name) const {
  const Value& v = at(name, OptionType::kFloat);
  return v.type == OptionType::kInt ? static_cast<double>(v.int_value) : v.float_value;
}

bool Options::get_bool(const std::string& name) const {
  return at(name, OptionType::kBool).bool_value;
}

const std::string& Options::get_string(const std::string& name) const {
  return at(name, OptionType::kString).string_value;
}

SourceLocation Options::location_of(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end() || it->second.location.file.empty()) return location_;
  return it->second.location;
}

void Options::fail(const std::string& name, const std::string& message) const {
  const std::string key = path_.empty() ? name : path_ + "." + name;
  throw ConfigError(component_, key + " " + message + " (at " + location_of(name).str() + ")");
}

}  // namespace nnkit
