// Purpose: loading YAML descriptions and applying dotted command-line overrides.
#include <fstream>
#include <sstream>

#include "config/document_impl.h"
#include "config/yaml_rules.h"
#include "nnkit/error.h"
#include "nnkit/registry.h"

namespace nnkit {

ConfigDocument::ConfigDocument() : impl_(std::make_unique<Impl>()) {}
ConfigDocument::ConfigDocument(ConfigDocument&&) noexcept = default;
ConfigDocument& ConfigDocument::operator=(ConfigDocument&&) noexcept = default;
ConfigDocument::~ConfigDocument() = default;

ConfigDocument ConfigDocument::parse(const std::string& text, const std::string& source_name) {
  ConfigDocument doc;
  doc.impl_->source_name = source_name;
  doc.impl_->root = config::load_checked(text, config::YamlSource{source_name});
  if (doc.impl_->root.IsNull()) doc.impl_->root = YAML::Node(YAML::NodeType::Map);
  if (!doc.impl_->root.IsMap()) {
    throw ConfigError("config", source_name +
                                    " must be a YAML mapping (key: value lines) at the "
                                    "top level, like configs/tiny.yaml");
  }
  doc.impl_->file_root = YAML::Clone(doc.impl_->root);
  return doc;
}

ConfigDocument ConfigDocument::load_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    throw ConfigError("config", "config file " + path.string() + " does not exist");
  }
  if (std::filesystem::is_directory(path, ec)) {
    throw ConfigError("config", path.string() +
                                    " is a directory; pass a YAML file such as "
                                    "configs/tiny.yaml");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError("config", "cannot read config file " + path.string());
  std::stringstream buffer;
  buffer << in.rdbuf();
  ConfigDocument doc = parse(buffer.str(), path.string());
  doc.impl_->base_dir = path.parent_path();
  return doc;
}

namespace {

// Splits "model.moe.router.top_k" at its dots. std::getline would drop a trailing empty segment
// ("model.n_layers.=4" would quietly set model.n_layers), so every segment is checked here.
std::vector<std::string> split_override_key(const std::string& key, const std::string& label) {
  auto refuse = [&](const std::string& why) {
    throw UsageError("config", label + ": the key '" + key + "' " + why +
                                   "; keys are names joined by single dots (model.n_layers=2)");
  };
  if (key.front() == '.') refuse("starts with a dot");
  if (key.back() == '.') refuse("ends with a dot");
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t dot = key.find('.', start);
    parts.push_back(key.substr(start, dot - start));
    if (parts.back().empty()) refuse("has an empty segment (two dots in a row)");
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return parts;
}

}  // namespace

void ConfigDocument::apply_override(const std::string& assignment, int argument_number) {
  std::string label = "command-line override '" + assignment + "'";
  if (argument_number > 0) label += " (argument " + std::to_string(argument_number) + ")";
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw UsageError("config",
                     label + " is not of the form key.path=value (e.g. model.n_layers=2)");
  }
  const std::string path = assignment.substr(0, eq);
  const std::vector<std::string> parts = split_override_key(path, label);
  // The value lands `parts.size()` mappings below the top level: the depth bound counts them.
  if (static_cast<int>(parts.size()) >= config::kMaxNestingDepth) {
    throw UsageError("config", "nesting deeper than " + std::to_string(config::kMaxNestingDepth) +
                                   " levels in " + label);
  }
  YAML::Node value;
  try {
    const config::YamlSource source{label, true, static_cast<int>(eq + 1)};
    value = config::load_checked(assignment.substr(eq + 1), source, path,
                                 static_cast<int>(parts.size()));
  } catch (const ConfigError& e) {
    // A malformed override is a usage error, like a malformed flag.
    throw UsageError(e.component(), e.detail());
  }
  YAML::Node current;
  current.reset(impl_->root);
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node child = current[parts[i]];
    if (!child.IsDefined() || child.IsNull()) {
      current[parts[i]] = YAML::Node(YAML::NodeType::Map);
      child = current[parts[i]];
    } else if (!child.IsMap()) {
      throw UsageError("config", label + ": '" + parts[i] +
                                     "' is not a mapping, so it has no key '" + parts[i + 1] + "'");
    }
    current.reset(child);
  }
  current[parts.back()] = value;
  // An earlier override below this key was just replaced with the rest of its mapping: values
  // there now come from this one.
  auto& origins = impl_->override_origin;
  for (auto it = origins.begin(); it != origins.end();) {
    const std::string& earlier = it->first;
    const bool below = earlier.rfind(path + ".", 0) == 0 || earlier.rfind(path + "[", 0) == 0;
    it = below ? origins.erase(it) : std::next(it);
  }
  origins[path] = label;
}

std::vector<std::filesystem::path> ConfigDocument::plugin_paths() const {
  std::vector<std::filesystem::path> paths;
  const YAML::Node list = impl_->root["plugin_paths"];
  if (!list.IsDefined() || list.IsNull()) return paths;
  const SourceLocation where = impl_->location(list, "plugin_paths");
  if (!list.IsSequence()) {
    throw ConfigError("config", "plugin_paths must be a list of folders (at " + where.str() + ")");
  }
  for (const YAML::Node& item : list) {
    if (!item.IsScalar()) {
      throw ConfigError("config", "plugin_paths entries must be strings (at " +
                                      impl_->location(item, "plugin_paths").str() + ")");
    }
    std::filesystem::path p(item.as<std::string>());
    if (p.is_relative() && !impl_->base_dir.empty()) p = impl_->base_dir / p;
    // Absolute, so that the config a run stores finds them from any working directory.
    paths.push_back(std::filesystem::absolute(p).lexically_normal());
  }
  return paths;
}

std::map<std::string, std::filesystem::path> ConfigDocument::plugin_prefer() const {
  std::map<std::string, std::filesystem::path> prefer;
  const YAML::Node map = impl_->root["plugin_prefer"];
  if (!map.IsDefined() || map.IsNull()) return prefer;
  const SourceLocation where = impl_->location(map, "plugin_prefer");
  if (!map.IsMap()) {
    throw ConfigError("config",
                      "plugin_prefer must map KIND/NAME to a library file, e.g. "
                      "{moe/swiglu: plugins/libnnkit_moe_swiglu.so} (at " +
                          where.str() + ")");
  }
  for (auto it = map.begin(); it != map.end(); ++it) {
    const std::string id = it->first.IsScalar() ? it->first.Scalar() : "";
    const std::string key_path = "plugin_prefer." + id;
    const size_t slash = id.find('/');
    if (slash == std::string::npos || !is_plain_plugin_name(id.substr(0, slash)) ||
        !is_plain_plugin_name(id.substr(slash + 1))) {
      throw ConfigError("config", "plugin_prefer keys are KIND/NAME (e.g. moe/swiglu), got '" + id +
                                      "' (at " + impl_->location(it->first, key_path).str() + ")");
    }
    if (!it->second.IsScalar() || it->second.Scalar().empty()) {
      throw ConfigError("config", key_path + " must be the path of a library file (at " +
                                      impl_->location(it->second, key_path).str() + ")");
    }
    std::filesystem::path p(it->second.Scalar());
    if (p.is_relative() && !impl_->base_dir.empty()) p = impl_->base_dir / p;
    prefer[id] = std::filesystem::absolute(p).lexically_normal();
  }
  return prefer;
}

const std::string& ConfigDocument::source_name() const {
  return impl_->source_name;
}

std::string ConfigDocument::dump() const {
  YAML::Emitter out;
  out << impl_->root;
  return out.c_str();
}

}  // namespace nnkit
