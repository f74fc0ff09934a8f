// Purpose: see args.h.
#include "args.h"

#include <charconv>
#include <cmath>
#include <sstream>

#include "nnkit/config.h"
#include "nnkit/error.h"

namespace nnkit::cli {

namespace {

const FlagSpec* find_flag(const CommandSpec& spec, const std::string& name) {
  for (const FlagSpec& f : spec.flags) {
    if (f.name == name || (!f.short_name.empty() && f.short_name == name)) return &f;
  }
  return nullptr;
}

[[noreturn]] void unknown_flag(const CommandSpec& spec, const std::string& name) {
  std::string best;
  size_t best_distance = SIZE_MAX;
  for (const FlagSpec& f : spec.flags) {
    const size_t d = edit_distance(name, f.name);
    if (d < best_distance) best_distance = d, best = f.name;
  }
  std::string message = "unknown flag '" + name + "' for `nnkit " + spec.name + "`";
  if (!best.empty() && best_distance <= 3) message += "; did you mean '" + best + "'?";
  message += " (see `nnkit " + spec.name + " --help`)";
  throw UsageError("cli", message);
}

}  // namespace

std::optional<std::string> ParsedArgs::get(const std::string& flag) const {
  auto it = values_.find(flag);
  if (it == values_.end() || it->second.empty()) return std::nullopt;
  return it->second.back();
}

std::string ParsedArgs::get_or(const std::string& flag, const std::string& fallback) const {
  auto v = get(flag);
  return v ? *v : fallback;
}

std::vector<std::string> ParsedArgs::get_all(const std::string& flag) const {
  auto it = values_.find(flag);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

int64_t ParsedArgs::get_int(const std::string& flag, int64_t fallback, int64_t min,
                            int64_t max) const {
  auto v = get(flag);
  if (!v) return fallback;
  int64_t value = 0;
  auto [ptr, ec] = std::from_chars(v->data(), v->data() + v->size(), value);
  if (ec != std::errc() || ptr != v->data() + v->size()) {
    throw UsageError("cli", flag + " expects an integer, got '" + *v + "'");
  }
  if (value < min || value > max) {
    throw UsageError("cli", flag + " = " + *v + " is out of range [" + std::to_string(min) + ", " +
                                std::to_string(max) + "]");
  }
  return value;
}

double ParsedArgs::get_double(const std::string& flag, double fallback, double min,
                              double max) const {
  auto v = get(flag);
  if (!v) return fallback;
  char* end = nullptr;
  const double value = std::strtod(v->c_str(), &end);
  if (v->empty() || end != v->c_str() + v->size() || !std::isfinite(value)) {
    throw UsageError("cli", flag + " expects a number, got '" + *v + "'");
  }
  if (value < min || value > max) {
    std::ostringstream range;
    range << "[" << min << ", " << max << "]";
    throw UsageError("cli", flag + " = " + *v + " is out of range " + range.str());
  }
  return value;
}

int ParsedArgs::argument_number(const std::string& override_text) const {
  for (size_t i = 0; i < overrides_.size(); ++i) {
    if (overrides_[i] == override_text) return override_arguments_[i];
  }
  return 0;
}

ParsedArgs parse_args(const CommandSpec& spec, const std::vector<std::string>& args) {
  ParsedArgs parsed;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      parsed.help_ = true;
      continue;
    }
    if (arg.size() > 1 && arg[0] == '-' && !(arg.size() > 1 && std::isdigit(arg[1]))) {
      std::string name = arg;
      std::optional<std::string> inline_value;
      if (const size_t eq = arg.find('='); eq != std::string::npos && arg.rfind("--", 0) == 0) {
        name = arg.substr(0, eq);
        inline_value = arg.substr(eq + 1);
      }
      const FlagSpec* flag = find_flag(spec, name);
      if (flag == nullptr) unknown_flag(spec, name);
      std::vector<std::string>& slot = parsed.values_[flag->name];
      if (!slot.empty() && !flag->repeatable) {
        throw UsageError("cli", flag->name + " was given twice");
      }
      if (flag->value_name.empty()) {
        if (inline_value) throw UsageError("cli", flag->name + " takes no value");
        slot.push_back("true");
      } else if (inline_value) {
        slot.push_back(*inline_value);
      } else {
        if (i + 1 >= args.size()) {
          throw UsageError(
              "cli", flag->name + " needs a value (" + flag->name + " " + flag->value_name + ")");
        }
        slot.push_back(args[++i]);
      }
      continue;
    }
    if (spec.accepts_overrides && arg.find('=') != std::string::npos) {
      parsed.overrides_.push_back(arg);
      // Commands see argv from the word after the command name: argv[0] is nnkit, argv[1] the
      // command.
      parsed.override_arguments_.push_back(static_cast<int>(i) + 2);
      continue;
    }
    parsed.positionals_.push_back(arg);
  }
  return parsed;
}

std::string format_help(const CommandSpec& spec) {
  std::ostringstream out;
  out << "Usage: " << spec.usage << "\n\n" << spec.summary << "\n";
  if (!spec.positional_help.empty()) out << "\n" << spec.positional_help << "\n";
  if (spec.accepts_overrides) {
    out << "\nConfig overrides: key.path=value (YAML value), e.g. model.n_layers=2 "
           "train.optimizer.lr=1e-3\n";
  }
  out << "\nOptions:\n";
  for (const FlagSpec& f : spec.flags) {
    std::string left = "  " + (f.short_name.empty() ? "" : f.short_name + ", ") + f.name;
    if (!f.value_name.empty()) left += " " + f.value_name;
    if (left.size() < 28)
      left.resize(28, ' ');
    else
      left += "  ";
    out << left << f.help << (f.repeatable ? " (repeatable)" : "") << "\n";
  }
  out << "  -h, --help                  show this help\n";
  return out.str();
}

}  // namespace nnkit::cli
