// Purpose: loading YAML descriptions (with their includes), applying dotted command-line
// overrides, and resolving ${...} references once the document is complete.
#include "config/compose.h"
#include "config/document_impl.h"
#include "config/references.h"
#include "config/yaml_rules.h"
#include "nnkit/error.h"
#include "nnkit/registry.h"

namespace nnkit {

ConfigDocument::ConfigDocument() : impl_(std::make_unique<Impl>()) {}
ConfigDocument::ConfigDocument(ConfigDocument&&) noexcept = default;
ConfigDocument& ConfigDocument::operator=(ConfigDocument&&) noexcept = default;
ConfigDocument::~ConfigDocument() = default;

namespace {

ConfigDocument::Impl composed(const std::string& text, const std::string& source_name,
                              const std::filesystem::path& file) {
  config::ComposedDocument document = config::compose(text, source_name, file);
  ConfigDocument::Impl impl;
  impl.source_name = source_name;
  // reset() binds; yaml-cpp's operator= would overwrite the node already bound.
  impl.written_root.reset(document.root);
  impl.written_origins = document.origins;
  impl.written_file_root.reset(YAML::Clone(document.root));
  impl.file_origins = std::move(document.origins);
  return impl;
}

}  // namespace

ConfigDocument ConfigDocument::parse(const std::string& text, const std::string& source_name) {
  ConfigDocument doc;
  *doc.impl_ = composed(text, source_name, {});
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
  const std::optional<std::string> text = config::read_text_file(path);
  if (!text) throw ConfigError("config", "cannot read config file " + path.string());
  ConfigDocument doc;
  *doc.impl_ = composed(*text, path.string(), path);
  doc.impl_->base_dir = path.parent_path();
  return doc;
}

void ConfigDocument::Impl::resolve() {
  if (resolved) return;
  config::ResolvedDocument full =
      config::resolve_references(written_root, written_origins, source_name);
  // reset(), not operator=: the old nodes may be shared with the written tree, and yaml-cpp's
  // operator= would overwrite them.
  root_with_variables.reset(full.root);
  root.reset(config::without_variables(full.root));
  origins = std::move(full.origins);
  try {
    file_root.reset(config::without_variables(
        config::resolve_references(written_file_root, file_origins, source_name).root));
  } catch (const ConfigError&) {
    // A reference only an override completes: the files alone chose nothing to compare with.
    file_root.reset(root);
  }
  resolved = true;
}

const ConfigDocument::Impl& ConfigDocument::impl() const {
  impl_->resolve();
  return *impl_;
}

std::filesystem::path ConfigDocument::Impl::folder_for(const std::string& path) const {
  const config::ValueSource& source = origins.source_for(path);
  if (source.from_override || source.name.empty() || source.name == source_name) return base_dir;
  return std::filesystem::path(source.name).parent_path();  // an included file
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
  if (parts.front() == "include") {
    throw UsageError("config", label +
                                   ": include: belongs in a config file (overrides apply after "
                                   "the includes are merged); write a YAML file that includes "
                                   "the others and pass it as CONFIG");
  }
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
  current.reset(impl_->written_root);
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
  // Everything below this key now comes from this override, including what earlier overrides
  // set there. References are resolved again on next use, so that they follow the override.
  impl_->written_origins.assign(path, config::ValueSource{label, true});
  impl_->resolved = false;
}

std::vector<std::filesystem::path> ConfigDocument::plugin_paths() const {
  std::vector<std::filesystem::path> paths;
  const Impl& doc = impl();
  const YAML::Node list = doc.root["plugin_paths"];
  if (!list.IsDefined() || list.IsNull()) return paths;
  const SourceLocation where = doc.location(list, "plugin_paths");
  if (!list.IsSequence()) {
    throw ConfigError("config", "plugin_paths must be a list of folders (at " + where.str() + ")");
  }
  for (size_t i = 0; i < list.size(); ++i) {
    const YAML::Node item = list[i];
    const std::string item_path = "plugin_paths[" + std::to_string(i) + "]";
    if (!item.IsScalar()) {
      throw ConfigError("config", "plugin_paths entries must be strings (at " +
                                      doc.location(item, item_path).str() + ")");
    }
    std::filesystem::path p(item.as<std::string>());
    const std::filesystem::path folder = doc.folder_for(item_path);
    if (p.is_relative() && !folder.empty()) p = folder / p;
    // Absolute, so that the config a run stores finds them from any working directory.
    paths.push_back(std::filesystem::absolute(p).lexically_normal());
  }
  return paths;
}

std::map<std::string, std::filesystem::path> ConfigDocument::plugin_prefer() const {
  std::map<std::string, std::filesystem::path> prefer;
  const Impl& doc = impl();
  const YAML::Node map = doc.root["plugin_prefer"];
  if (!map.IsDefined() || map.IsNull()) return prefer;
  const SourceLocation where = doc.location(map, "plugin_prefer");
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
                                      "' (at " + doc.location(it->first, key_path).str() + ")");
    }
    if (!it->second.IsScalar() || it->second.Scalar().empty()) {
      throw ConfigError("config", key_path + " must be the path of a library file (at " +
                                      doc.location(it->second, key_path).str() + ")");
    }
    std::filesystem::path p(it->second.Scalar());
    const std::filesystem::path folder = doc.folder_for(key_path);
    if (p.is_relative() && !folder.empty()) p = folder / p;
    prefer[id] = std::filesystem::absolute(p).lexically_normal();
  }
  return prefer;
}

const std::string& ConfigDocument::source_name() const {
  return impl_->source_name;
}

std::string ConfigDocument::dump() const {
  YAML::Emitter out;
  out << impl().root;
  return out.c_str();
}

}  // namespace nnkit
