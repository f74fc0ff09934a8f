// Purpose: the numerical helpers and option plumbing of nnkit/testing.h (finite differences,
// the comparison rule, option values from text, the report table).
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "nnkit/error.h"
#include "nnkit/testing.h"

namespace nnkit::testing {

std::vector<double> numeric_gradient(std::vector<double>& values,
                                     const std::function<double()>& objective, double eps) {
  std::vector<size_t> all(values.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  return numeric_gradient_at(values, all, objective, eps);
}

std::vector<double> numeric_gradient_at(std::vector<double>& values,
                                        const std::vector<size_t>& indices,
                                        const std::function<double()>& objective, double eps) {
  std::vector<double> gradient(indices.size());
  for (size_t j = 0; j < indices.size(); ++j) {
    double& v = values[indices[j]];
    const double saved = v;
    v = saved + eps;
    const double up = objective();
    v = saved - eps;
    const double down = objective();
    v = saved;
    gradient[j] = (up - down) / (2.0 * eps);
  }
  return gradient;
}

std::vector<size_t> spread_indices(size_t n, size_t count) {
  std::vector<size_t> out;
  if (n == 0 || count == 0) return out;
  if (n <= count) {
    for (size_t i = 0; i < n; ++i) out.push_back(i);
    return out;
  }
  // A stride coprime-ish with common widths, so the points do not all fall in one column.
  for (size_t j = 0; j < count; ++j) out.push_back((j * (n - 1)) / (count - 1));
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

Comparison compare(const std::vector<double>& actual, const std::vector<double>& expected,
                   double abs_tol, double rel_tol) {
  Comparison c;
  if (actual.size() != expected.size()) {
    c.ok = false;
    c.max_abs_diff = INFINITY;
    return c;
  }
  for (double v : expected) c.max_expected = std::max(c.max_expected, std::abs(v));
  c.tolerance = abs_tol + rel_tol * c.max_expected;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double diff = std::abs(actual[i] - expected[i]);
    if (!std::isfinite(actual[i]) || !std::isfinite(diff)) {
      c.ok = false;
      c.max_abs_diff = INFINITY;
      c.worst = i;
      return c;
    }
    if (diff > c.max_abs_diff) c.max_abs_diff = diff, c.worst = i;
  }
  c.ok = c.max_abs_diff <= c.tolerance;
  return c;
}

Options make_options(const PluginInfo& info, const std::map<std::string, std::string>& values) {
  Options options(info.id(), info.kind, SourceLocation{"<check-plugin>", 0, 0});
  for (const OptionSpec& spec : info.options) {
    auto it = values.find(spec.name);
    const bool given = it != values.end();
    const std::string text = given ? it->second : spec.default_value;
    if (text.empty()) {
      throw ConfigError(info.id(), "option '" + spec.name +
                                       "' is required (give it with --options '{" + spec.name +
                                       ": ...}')");
    }
    if (!given) {
      if (const std::string problem = declared_default_problem(spec); !problem.empty()) {
        throw PluginError(info.id(), "the plugin declares option '" + spec.name + "' with " +
                                         problem + " (a bug in the plugin)");
      }
    }
    Options::Value v = parse_option_text(spec, text, info.id());
    v.location.file = given ? "<--options>" : "<default>";
    if (!v.is_null && (spec.type == OptionType::kInt || spec.type == OptionType::kFloat)) {
      const double number =
          spec.type == OptionType::kInt ? static_cast<double>(v.int_value) : v.float_value;
      if ((spec.min && number < *spec.min) || (spec.max && number > *spec.max)) {
        throw ConfigError(info.id(), spec.name + " = " + text + " is outside its declared range");
      }
    }
    options.set(spec.name, v);
  }
  for (const auto& [key, text] : values) {
    if (!options.has(key)) {
      throw ConfigError(info.id(), "unknown option '" + key + "' for " + info.id());
    }
  }
  return options;
}

namespace {

void flatten(const YAML::Node& node, const std::string& prefix,
             std::map<std::string, std::string>& out) {
  for (auto it = node.begin(); it != node.end(); ++it) {
    const std::string key = prefix.empty() ? it->first.Scalar() : prefix + "." + it->first.Scalar();
    if (it->second.IsMap()) {
      flatten(it->second, key, out);
    } else if (it->second.IsScalar()) {
      out[key] = it->second.Scalar();
    } else if (it->second.IsNull()) {
      out[key] = "null";
    } else {
      throw ConfigError("check-plugin", "option '" + key + "' must be a scalar");
    }
  }
}

}  // namespace

std::map<std::string, std::string> parse_option_values(const std::string& yaml) {
  std::string text = yaml;
  std::error_code ec;
  if (!yaml.empty() && yaml.front() != '{' && std::filesystem::is_regular_file(yaml, ec)) {
    std::ifstream in(yaml);
    std::stringstream buffer;
    buffer << in.rdbuf();
    text = buffer.str();
  }
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw ConfigError("check-plugin", std::string("--options is not valid YAML: ") + e.what());
  }
  std::map<std::string, std::string> out;
  if (root.IsNull()) return out;
  if (!root.IsMap()) {
    throw ConfigError("check-plugin", "--options must be a mapping, e.g. '{top_k: 2}'");
  }
  flatten(root, "", out);
  return out;
}

bool CheckReport::passed() const {
  for (const CheckResult& r : results) {
    if (!r.passed && !r.skipped) return false;
  }
  return true;
}

std::string CheckReport::table() const {
  size_t width = 5;
  for (const CheckResult& r : results) width = std::max(width, r.check.size());
  auto pad = [](std::string s, size_t n) {
    if (s.size() < n) s.resize(n, ' ');
    return s;
  };
  auto number = [](double v) {
    char buffer[32];
    std::snprintf(buffer, sizeof(buffer), "%.3g", v);
    return std::string(buffer);
  };
  std::string out = pad("check", width) + "  result  error      tolerance  detail\n";
  for (const CheckResult& r : results) {
    const bool measured = r.tolerance > 0.0 || r.error != 0.0;
    out += pad(r.check, width) + "  " + pad(r.skipped ? "skip" : (r.passed ? "PASS" : "FAIL"), 6) +
           "  " + pad(measured ? number(r.error) : "-", 9) + "  " +
           pad(r.tolerance > 0.0 ? number(r.tolerance) : "-", 9) + "  " + r.detail + "\n";
  }
  return out;
}

}  // namespace nnkit::testing
