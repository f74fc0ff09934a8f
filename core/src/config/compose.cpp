// Purpose: see compose.h.
#include "config/compose.h"

#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <vector>

#include "config/yaml_rules.h"
#include "nnkit/error.h"

namespace nnkit::config {

namespace fs = std::filesystem;

std::optional<std::string> read_text_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return buffer.str();
}

namespace {

[[noreturn]] void refuse(const std::string& message) {
  throw ConfigError("config", message);
}

std::string join_key(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

std::string describe(const YAML::Node& node) {
  if (node.IsMap()) return "a mapping";
  if (node.IsSequence()) return "a list";
  return "'" + node.Scalar() + "'";
}

// One `include:` entry as written, with its position in the including file.
struct IncludeEntry {
  std::string file;
  std::string at;
};

std::vector<IncludeEntry> include_entries(const YAML::Node& value, const YamlSource& source) {
  std::vector<IncludeEntry> entries;
  if (!value.IsDefined() || value.IsNull()) return entries;
  auto entry = [&](const YAML::Node& item, const std::string& label) {
    if (!item.IsScalar()) {
      refuse(label + " must be a file name, got " + describe(item) + " (at " +
             source.at(item.Mark()) + "); e.g. include: [base.yaml, moe.yaml]");
    }
    if (item.Scalar().empty()) {
      refuse(label + " is an empty file name (at " + source.at(item.Mark()) +
             "); name a YAML file, relative to this file's folder");
    }
    entries.push_back({item.Scalar(), source.at(item.Mark())});
  };
  if (value.IsScalar()) {
    entry(value, "include");
  } else if (value.IsSequence()) {
    for (size_t i = 0; i < value.size(); ++i) {
      entry(value[i], "include[" + std::to_string(i) + "]");
    }
  } else {
    refuse("include must be a file name or a list of file names, got a mapping (at " +
           source.at(value.Mark()) + "); e.g. include: [base.yaml, moe.yaml]");
  }
  return entries;
}

// The location of `node` at `path` of a document described by `origins`.
SourceLocation location_in(const OriginTable& origins, const YAML::Node& node,
                           const std::string& path) {
  return origins.locate(node, path, "");
}

// Merges the mapping `over` (described by `over_origins`) onto the mapping `base` at `path`.
// `origins` describes `base` on entry and the merged mapping on return. Builds new mappings and
// shares every other node, so that the parsed files (and their aliases) stay as they were.
YAML::Node merge_maps(const YAML::Node& base, const YAML::Node& over, const std::string& path,
                      OriginTable& origins, const OriginTable& over_origins) {
  std::map<std::string, std::pair<YAML::Node, YAML::Node>> over_entries;
  for (auto it = over.begin(); it != over.end(); ++it) {
    if (it->first.IsScalar()) over_entries[it->first.Scalar()] = {it->first, it->second};
  }
  YAML::Node merged(YAML::NodeType::Map);
  std::set<std::string> taken;
  auto take_over = [&](const YAML::Node& key, const YAML::Node& value, const std::string& child) {
    merged.force_insert(key, value);
    origins.graft(over_origins, child, child);
  };
  for (auto it = base.begin(); it != base.end(); ++it) {
    const auto found =
        it->first.IsScalar() ? over_entries.find(it->first.Scalar()) : over_entries.end();
    if (found == over_entries.end()) {
      merged.force_insert(it->first, it->second);
      if (it->first.IsScalar()) {
        const std::string child = join_key(path, it->first.Scalar());
        origins.pin(child, origins.source_for(child));
      }
      continue;
    }
    const std::string child = join_key(path, found->first);
    const auto& [over_key, over_value] = found->second;
    taken.insert(found->first);
    if (it->second.IsMap() && over_value.IsMap()) {
      merged.force_insert(over_key,
                          merge_maps(it->second, over_value, child, origins, over_origins));
    } else {
      take_over(over_key, over_value, child);
    }
  }
  for (auto it = over.begin(); it != over.end(); ++it) {
    if (!it->first.IsScalar()) {
      merged.force_insert(it->first, it->second);
    } else if (taken.count(it->first.Scalar()) == 0) {
      take_over(it->first, it->second, join_key(path, it->first.Scalar()));
    }
  }
  // The merged mapping is reported where the later file has it.
  origins.pin(path, over_origins.source_for(path));
  origins.set_position(path, location_in(over_origins, over, path));
  return merged;
}

// A file on the include chain, outermost first.
struct ChainLink {
  fs::path canonical;
  std::string name;
  std::string included_at;  // position of the include entry in the previous link ("" for the top)
};

class Composer {
 public:
  ComposedDocument compose(const std::string& text, const std::string& name,
                           const fs::path& folder) {
    const YamlSource source{name};
    YAML::Node own = load_checked(text, source);
    if (own.IsNull()) own.reset(YAML::Node(YAML::NodeType::Map));
    if (!own.IsMap()) {
      std::string message = name +
                            " must be a YAML mapping (key: value lines) at the top level, like "
                            "configs/tiny.yaml";
      if (!chain_.empty()) message += " (included at " + chain_.back().included_at + ")";
      refuse(message);
    }
    const OriginTable own_origins(ValueSource{name});
    const YAML::Node include_value = own["include"];
    if (!include_value.IsDefined()) return {own, own_origins};

    ComposedDocument result{YAML::Node(YAML::NodeType::Map), own_origins};
    for (const IncludeEntry& entry : include_entries(include_value, source)) {
      ComposedDocument included = compose_included(entry, name, folder);
      result.root.reset(
          merge_maps(result.root, included.root, "", result.origins, included.origins));
    }
    YAML::Node body(YAML::NodeType::Map);
    for (auto it = own.begin(); it != own.end(); ++it) {
      if (!(it->first.IsScalar() && it->first.Scalar() == "include")) {
        body.force_insert(it->first, it->second);
      }
    }
    OriginTable body_origins = own_origins;
    body_origins.set_position("", location_in(own_origins, own, ""));
    result.root.reset(merge_maps(result.root, body, "", result.origins, body_origins));
    return result;
  }

  void enter_top_file(const fs::path& file, const std::string& name) {
    std::error_code ec;
    chain_.push_back({fs::weakly_canonical(file, ec), name, ""});
  }

 private:
  ComposedDocument compose_included(const IncludeEntry& entry, const std::string& including,
                                    const fs::path& folder) {
    const std::string label = "include '" + entry.file + "' (at " + entry.at + ")";
    fs::path file(entry.file);
    if (file.is_relative()) file = folder / file;
    file = file.lexically_normal();
    const std::string name = file.string();
    const std::string relative_to =
        folder.empty() ? "the working directory"
                       : "the folder of " + including + " (" + folder.string() + ")";
    std::error_code ec;
    if (!fs::exists(file, ec)) {
      refuse(label + ": no file " + name + "; include paths are relative to " + relative_to +
             "; fix the path or create the file");
    }
    if (fs::is_directory(file, ec)) {
      refuse(label + ": " + name + " is a directory; include a YAML file");
    }
    const fs::path canonical = fs::weakly_canonical(file, ec);
    for (size_t i = 0; i < chain_.size(); ++i) {
      if (chain_[i].canonical != canonical) continue;
      std::string cycle = "include cycle: ";
      for (size_t j = i; j < chain_.size(); ++j) {
        const std::string& next = j + 1 < chain_.size() ? chain_[j + 1].name : name;
        const std::string& at = j + 1 < chain_.size() ? chain_[j + 1].included_at : entry.at;
        cycle += (j > i ? ", which includes " : chain_[j].name + " includes ") + next + " (at " +
                 at + ")";
      }
      refuse(cycle + "; remove one of these includes");
    }
    if (static_cast<int>(chain_.size()) >= kMaxIncludeDepth) {
      refuse(label + ": includes nested deeper than " + std::to_string(kMaxIncludeDepth) +
             " files (" + chain_.front().name + " -> ... -> " + including + " -> " + name +
             "); flatten some of them");
    }
    const std::optional<std::string> text = read_text_file(file);
    if (!text) refuse(label + ": cannot read " + name + "; check its permissions");
    chain_.push_back({canonical, name, entry.at});
    ComposedDocument included = compose(*text, name, file.parent_path());
    chain_.pop_back();
    return included;
  }

  std::vector<ChainLink> chain_;
};

}  // namespace

ComposedDocument compose(const std::string& text, const std::string& source_name,
                         const fs::path& file) {
  Composer composer;
  if (!file.empty()) composer.enter_top_file(file, source_name);
  return composer.compose(text, source_name, file.parent_path());
}

}  // namespace nnkit::config
