// Purpose: where each resolved value came from (ConfigDocument::origin_of, value_origins), for
// `nnkit validate --show-origin`: a file position, a command-line override, or a default, and
// the ${...} references a value was copied through.
#include "config/document_impl.h"
#include "config/references.h"

namespace nnkit {

namespace {

// "file:line" (the column matters to an error message, not to a listing); an override's label.
std::string brief(const SourceLocation& where) {
  return where.line > 0 ? where.file + ":" + std::to_string(where.line) : where.file;
}

std::string describe_origin(const ConfigDocument::Impl& doc, const std::string& path, int hops) {
  const YAML::Node node = config::find_path(doc.root_with_variables, path);
  if (!node.IsDefined()) return "default";
  std::string use_path;
  const config::ReferenceUse* use = doc.origins.reference_above(path, &use_path);
  const bool traced = use != nullptr && hops < config::kMaxReferenceChain;
  if (traced && use->whole) {
    // The value is (or lies inside) a copy of the target: its origin is the target's.
    const std::string target = use->targets.front() + path.substr(use_path.size());
    return describe_origin(doc, target, hops + 1) + ", via " + use->text + " at " + brief(use->at);
  }
  std::string origin = brief(doc.location(node, path));
  if (traced && use_path == path) {
    origin += " (interpolating";
    for (const std::string& target : use->targets) {
      origin += " ${" + target + "} from " + describe_origin(doc, target, hops + 1);
    }
    origin += ")";
  }
  return origin;
}

std::string value_text(const YAML::Node& node) {
  if (node.IsNull()) return "null";
  if (node.IsScalar()) return node.Scalar();
  return node.IsMap() ? "{}" : "[]";  // only empty collections are listed as values
}

void flatten(const YAML::Node& node, const std::string& path, const ConfigDocument& document,
             std::vector<ValueOrigin>& out) {
  const bool collection = node.IsMap() || node.IsSequence();
  if (!collection || node.size() == 0) {
    out.push_back({path, value_text(node), document.origin_of(path)});
    return;
  }
  if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) {
      flatten(node[i], path + "[" + std::to_string(i) + "]", document, out);
    }
    return;
  }
  for (auto it = node.begin(); it != node.end(); ++it) {
    const std::string key = it->first.Scalar();
    flatten(it->second, path.empty() ? key : path + "." + key, document, out);
  }
}

}  // namespace

std::string ConfigDocument::origin_of(const std::string& path) const {
  return describe_origin(impl(), path, 0);
}

std::vector<ValueOrigin> value_origins(const RunConfig& config, const ConfigDocument& document) {
  std::vector<ValueOrigin> out;
  flatten(YAML::Load(config.to_yaml()), "", document, out);
  return out;
}

}  // namespace nnkit
