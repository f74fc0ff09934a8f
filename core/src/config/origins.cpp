// Purpose: see origins.h.
#include "config/origins.h"

namespace nnkit::config {

namespace {

// "a.b[0]" -> "a.b", "a.b" -> "a", "a" -> "".
std::string parent_of(const std::string& path) {
  const size_t cut = path.find_last_of(".[");
  return cut == std::string::npos ? std::string() : path.substr(0, cut);
}

// The entry of `table` at `path` or nearest above it.
template <typename T>
const T* nearest(const std::map<std::string, T>& table, const std::string& path,
                 std::string* found_at = nullptr) {
  std::string probe = path;
  while (true) {
    if (const auto it = table.find(probe); it != table.end()) {
      if (found_at != nullptr) *found_at = probe;
      return &it->second;
    }
    if (probe.empty()) return nullptr;
    probe = parent_of(probe);
  }
}

template <typename T>
void erase_at_or_below(std::map<std::string, T>& table, const std::string& path) {
  for (auto it = table.begin(); it != table.end();) {
    it = is_at_or_below(it->first, path) ? table.erase(it) : std::next(it);
  }
}

// `path` (at or below `from`) moved under `to`.
std::string rerooted(const std::string& path, const std::string& from, const std::string& to) {
  const std::string rest = path.substr(from.size());
  if (to.empty() && !rest.empty() && rest.front() == '.') return rest.substr(1);
  if (from.empty() && !rest.empty() && rest.front() != '[') return to + "." + rest;
  return to + rest;
}

template <typename T>
void copy_rerooted(const std::map<std::string, T>& from, const std::string& from_path,
                   const std::string& to, std::map<std::string, T>& into) {
  std::vector<std::pair<std::string, T>> copied;  // `from` may be `into`
  for (const auto& [path, value] : from) {
    if (is_at_or_below(path, from_path)) copied.emplace_back(rerooted(path, from_path, to), value);
  }
  erase_at_or_below(into, to);
  for (auto& [path, value] : copied) into[path] = std::move(value);
}

}  // namespace

bool is_at_or_below(const std::string& path, const std::string& prefix) {
  if (prefix.empty() || path == prefix) return true;
  return path.size() > prefix.size() && path.compare(0, prefix.size(), prefix) == 0 &&
         (path[prefix.size()] == '.' || path[prefix.size()] == '[');
}

const ValueSource& OriginTable::source_for(const std::string& path) const {
  static const ValueSource kNone;
  const ValueSource* source = nearest(sources_, path);
  return source != nullptr ? *source : kNone;
}

SourceLocation OriginTable::locate(const YAML::Node& node, const std::string& path,
                                   const std::string& fallback_name) const {
  const ValueSource& source = source_for(path);
  const std::string& name = source.name.empty() ? fallback_name : source.name;
  if (source.from_override || !node.IsDefined()) return SourceLocation{name, 0, 0};
  const YAML::Mark mark = node.Mark();
  if (mark.line >= 0) return SourceLocation{name, mark.line + 1, mark.column + 1};
  if (const auto it = positions_.find(path); it != positions_.end()) return it->second;
  return SourceLocation{name, 0, 0};
}

void OriginTable::assign(const std::string& path, const ValueSource& source) {
  erase_at_or_below(sources_, path);
  erase_at_or_below(positions_, path);
  erase_at_or_below(references_, path);
  sources_[path] = source;
}

void OriginTable::pin(const std::string& path, const ValueSource& source) {
  sources_[path] = source;
}

void OriginTable::set_position(const std::string& path, const SourceLocation& where) {
  positions_[path] = where;
}

void OriginTable::set_reference(const std::string& path, ReferenceUse use) {
  references_[path] = std::move(use);
}

const ReferenceUse* OriginTable::reference_above(const std::string& path,
                                                 std::string* at_path) const {
  return nearest(references_, path, at_path);
}

void OriginTable::graft(const OriginTable& from, const std::string& from_path,
                        const std::string& to) {
  const ValueSource source = from.source_for(from_path);
  copy_rerooted(from.sources_, from_path, to, sources_);
  copy_rerooted(from.positions_, from_path, to, positions_);
  copy_rerooted(from.references_, from_path, to, references_);
  sources_[to] = source;
}

}  // namespace nnkit::config
