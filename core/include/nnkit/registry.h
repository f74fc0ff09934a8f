// Purpose: finds plugin libraries, checks their ABI version and build tag, and creates components
// by kind and name. Libraries that are not nnkit plugins, or were built for another ABI or
// toolchain, are skipped and remembered with the reason (`nnkit plugins` prints them).
// Search order (first match of a kind/name wins, later ones are recorded as shadowed):
//   1. paths given explicitly, in order (the CLI passes --plugin-path, then YAML `plugin_paths:`)
//   2. NNKIT_PLUGIN_PATH (colon-separated)
//   3. <directory of libnnkit_core>/nnkit/plugins (the build tree and the install prefix alike)
// Ownership: the Registry keeps every accepted library loaded; each created component holds a
// shared reference to its library as well, so components may outlive the Registry.
// Thread-safety: construct on one thread; const methods are safe to call concurrently.
#pragma once

#include <filesystem>
#include <memory>
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
  std::string path;  // library file
  std::vector<OptionSpec> options;
  std::string id() const { return kind + "/" + name; }
};

struct RejectedLibrary {
  std::string path;
  std::string reason;
};

class NNKIT_API Registry {
 public:
  // Scans `search_paths` (files or folders; missing folders are noted, not fatal).
  explicit Registry(std::vector<std::filesystem::path> search_paths);
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
  // config key asked for it ("model.attention.type at tiny.yaml:9:17").
  const PluginInfo& require(const std::string& kind, const std::string& name,
                            const std::string& where = "") const;
  std::vector<std::string> names_of_kind(const std::string& kind) const;

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

  std::vector<std::filesystem::path> search_paths_;
  std::vector<PluginInfo> plugins_;
  std::vector<std::shared_ptr<Library>> libraries_;  // parallel to plugins_
  std::vector<RejectedLibrary> rejected_;
};

}  // namespace nnkit
