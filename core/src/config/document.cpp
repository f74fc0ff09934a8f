// Purpose: loading YAML descriptions and applying dotted command-line overrides.
#include <fstream>
#include <sstream>

#include "config/document_impl.h"
#include "nnkit/error.h"

namespace nnkit {

ConfigDocument::ConfigDocument() : impl_(std::make_unique<Impl>()) {}
ConfigDocument::ConfigDocument(ConfigDocument&&) noexcept = default;
ConfigDocument& ConfigDocument::operator=(ConfigDocument&&) noexcept = default;
ConfigDocument::~ConfigDocument() = default;

namespace {

std::string syntax_error(const YAML::Exception& e, const std::string& source) {
  // yaml-cpp's what() repeats the position; use the bare message with our own file:line:col.
  return "YAML syntax error at " + source + ":" + std::to_string(e.mark.line + 1) + ":" +
         std::to_string(e.mark.column + 1) + ": " + e.msg;
}

}  // namespace

ConfigDocument ConfigDocument::parse(const std::string& text, const std::string& source_name) {
  ConfigDocument doc;
  doc.impl_->source_name = source_name;
  try {
    doc.impl_->root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw ConfigError("config", syntax_error(e, source_name));
  }
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

void ConfigDocument::apply_override(const std::string& assignment) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw UsageError("config", "override '" + assignment +
                                   "' is not of the form key.path=value (e.g. model.n_layers=2)");
  }
  const std::string path = assignment.substr(0, eq);
  const std::string text = assignment.substr(eq + 1);
  YAML::Node value;
  try {
    value = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw UsageError("config", "override '" + assignment + "': value is not valid YAML: " + e.msg);
  }
  std::vector<std::string> parts;
  std::stringstream stream(path);
  std::string part;
  while (std::getline(stream, part, '.')) {
    if (part.empty()) {
      throw UsageError("config", "override '" + assignment + "' has an empty key segment");
    }
    parts.push_back(part);
  }
  YAML::Node current;
  current.reset(impl_->root);
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node child = current[parts[i]];
    if (!child.IsDefined() || child.IsNull()) {
      current[parts[i]] = YAML::Node(YAML::NodeType::Map);
      child = current[parts[i]];
    } else if (!child.IsMap()) {
      throw UsageError("config", "override '" + assignment + "': '" + parts[i] +
                                     "' is not a mapping, so it has no key '" + parts[i + 1] + "'");
    }
    current.reset(child);
  }
  current[parts.back()] = value;
  impl_->override_text[path] = assignment;
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
    paths.push_back(p);
  }
  return paths;
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
