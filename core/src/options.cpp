// Purpose: Options accessors and their position-tagged errors.
#include "nnkit/options.h"

#include <charconv>
#include <cmath>
#include <cstdlib>

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

Options::Value parse_option_text(const OptionSpec& spec, const std::string& text,
                                 const std::string& component) {
  Options::Value v;
  v.type = spec.type;
  v.location.file = "<default>";
  if (text == "null" || text == "~") {
    v.is_null = true;
    return v;
  }
  auto wrong = [&]() -> Options::Value {
    throw ConfigError(component, "'" + text + "' is not a " + option_type_name(spec.type) +
                                     " (option " + spec.name + ")");
  };
  switch (spec.type) {
    case OptionType::kInt: {
      auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v.int_value);
      if (ec != std::errc() || ptr != text.data() + text.size()) return wrong();
      break;
    }
    case OptionType::kFloat: {
      char* end = nullptr;
      v.float_value = std::strtod(text.c_str(), &end);
      if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(v.float_value)) {
        return wrong();
      }
      break;
    }
    case OptionType::kBool:
      if (text == "true" || text == "yes" || text == "on") {
        v.bool_value = true;
      } else if (text == "false" || text == "no" || text == "off") {
        v.bool_value = false;
      } else {
        return wrong();
      }
      break;
    case OptionType::kString:
      v.string_value = text;
      break;
  }
  return v;
}

std::string declared_default_problem(const OptionSpec& spec) {
  if (spec.default_value.empty() || spec.default_value == "null") return "";
  Options::Value v;
  try {
    v = parse_option_text(spec, spec.default_value, "");
  } catch (const ConfigError&) {
    return "default '" + spec.default_value + "' is not a " + option_type_name(spec.type);
  }
  if (spec.type != OptionType::kInt && spec.type != OptionType::kFloat) return "";
  const double number =
      spec.type == OptionType::kInt ? static_cast<double>(v.int_value) : v.float_value;
  if ((spec.min && number < *spec.min) || (spec.max && number > *spec.max)) {
    auto bound = [](const std::optional<double>& b, const char* none) {
      if (!b) return std::string(none);
      std::string s = std::to_string(*b);
      s.erase(s.find_last_not_of('0') + 1);
      if (!s.empty() && s.back() == '.') s.pop_back();
      return s;
    };
    return "default " + spec.default_value + " is outside its own range [" +
           bound(spec.min, "-inf") + ", " + bound(spec.max, "inf") + "]";
  }
  return "";
}

}  // namespace nnkit
