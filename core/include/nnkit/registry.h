// Purpose: finds plugin libraries, checks their ABI version and build tag, and creates components
// by kind and name. Libraries that are not nnkit plugins, or were built for another ABI or
// toolchain, are skipped and remembered with the reason (`nnkit plugins` prints them).
// Search order:
//   1. paths given explicitly, in order (the CLI passes --plugin-path, then YAML `plugin_paths:`)
//   2. NNKIT_PLUGIN_PATH (colon-separated)
//   3. <directory of libnnkit_core>/nnkit/plugins (the build tree and the install prefix alike)
// Two different library files providing the same kind/name are a conflict, not a silent win:
// using that kind/name is an error naming both files, unless RegistryOptions::prefer (YAML
// `plugin_prefer:`) names the one to use. The same file reached twice is loaded once.
// Safety: kind and name must be plain names (letters, digits, '_', '-', '.', never '..'), and
// libraries in a world-writable folder (or world-writable themselves) are refused unless
// RegistryOptions::allow_unsafe_dirs (`--allow-unsafe-plugin-dirs`).
// Ownership: the Registry keeps every accepted library loaded; each created component holds a
// shared reference to its library as well, so components may outlive the Registry.
// Thread-safety: construct on one thread; const methods are safe to call concurrently.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "nnkit/component.h"
#include "nnkit/error.h"
#include "nnkit/options.h"

namespace nnkit {

struct PluginInfo {
  std::string kind;
  std::string name;
  std::string version;
  std::string summary;
  std::string path;  // library file (absolute)
  std::vector<OptionSpec> options;
  // Other library files that provide the same kind/name (absolute); non-empty = a conflict that
  // require() and create() refuse. Appended in ABI 3.
  std::vector<std::string> conflicts;
  std::string id() const { return kind + "/" + name; }
};

struct RejectedLibrary {
  std::string path;
  std::string reason;
};

// How a Registry treats what it finds (appended in ABI 3).
struct RegistryOptions {
  // "kind/name" -> the library file to take it from when several provide it (`plugin_prefer:`).
  std::map<std::string, std::filesystem::path> prefer;
  // Like prefer, but a file that cannot be loaded (moved, rebuilt for another nnkit) or does
  // not provide the plugin is ignored instead of being an error: a run's recorded libraries
  // (RUN/plugins.json), which should win when they still work.
  std::map<std::string, std::filesystem::path> prefer_if_loadable;
  // Load libraries from folders anyone may write to (`--allow-unsafe-plugin-dirs`).
  bool allow_unsafe_dirs = false;
};

// Whether `name` may be a plugin kind or name: non-empty, only [A-Za-z0-9_.-], no "..". Keeps
// a name from ever being read as a path.
NNKIT_API bool is_plain_plugin_name(const std::string& name);

class NNKIT_API Registry {
 public:
  // Scans `search_paths` (files or folders; missing folders are noted, not fatal).
  explicit Registry(std::vector<std::filesystem::path> search_paths);
  Registry(std::vector<std::filesystem::path> search_paths, RegistryOptions options);
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // The default search paths, with `explicit_paths` first (see the order above).
  static std::vector<std::filesystem::path> default_search_paths(
      const std::vector<std::filesystem::path>& explicit_paths = {});

  const std::vector<std::filesystem::path>& search_paths() const { return search_paths_; }
  const std::vector<PluginInfo>& plugins() const { return plugins_; }
  const std::vector<RejectedLibrary>& rejected() const { return rejected_; }

  const PluginInfo* find(const std::string& kind, const std::string& name) const;
  // Like find, but throws PluginError listing the available names of `kind`; `where` says which
  // config key asked for it ("model.attention.type at tiny.yaml:9:17"). Also throws for a
  // kind/name that several libraries provide (naming every file and how to choose one).
  const PluginInfo& require(const std::string& kind, const std::string& name,
                            const std::string& where = "") const;
  std::vector<std::string> names_of_kind(const std::string& kind) const;
  // For kind "moe": "router" or "experts", the interface the plugin's objects implement, learnt
  // once by creating one with its declared defaults (required numbers at their lower bound) on
  // no backend; "" when that fails or for other kinds. Lets a config slot say "topk is a router".
  std::string role_of(const PluginInfo& info) const;
  // Names of `kind` whose role_of is `role`, sorted.
  std::vector<std::string> names_with_role(const std::string& kind, const std::string& role) const;

  // Creates kind/name and checks it implements T; the result keeps the library loaded.
  template <typename T>
  std::shared_ptr<T> create(const std::string& kind, const std::string& name,
                            const CreateArgs& args) const {
    std::shared_ptr<Component> component = create_component(kind, name, args);
    std::shared_ptr<T> typed = std::dynamic_pointer_cast<T>(component);
    if (!typed) {
      throw PluginError(kind + "/" + name,
                        "the plugin created an object that does not implement the '" + kind +
                            "' interface (built against another nnkit SDK?)");
    }
    return typed;
  }

 private:
  struct Library;
  std::shared_ptr<Component> create_component(const std::string& kind, const std::string& name,
                                              const CreateArgs& args) const;
  void scan_file(const std::filesystem::path& file);

  void scan_folder(const std::filesystem::path& folder);
  // "" when `path` may be loaded from, else why not (world-writable).
  std::string unsafe_reason(const std::filesystem::path& file) const;

  std::vector<std::filesystem::path> search_paths_;
  RegistryOptions options_;
  std::vector<PluginInfo> plugins_;
  mutable std::mutex roles_mutex_;                    // role_of may be called concurrently
  mutable std::map<std::string, std::string> roles_;  // role_of cache, by id
  std::vector<std::shared_ptr<Library>> libraries_;   // parallel to plugins_
  std::vector<RejectedLibrary> rejected_;
  std::vector<std::string> scanned_;  // canonical paths of the library files seen
};

}  // namespace nnkit
