// Purpose: plugin discovery and creation through Boost.DLL (see registry.h for the search order).
#include "nnkit/registry.h"

#include <algorithm>
#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <cstdlib>
#include <cstring>
#include <set>
#include <sstream>

#include "nnkit/logging.h"
#include "nnkit/plugin.h"
#include "nnkit/version.h"

namespace nnkit {

namespace fs = std::filesystem;

struct Registry::Library {
  boost::dll::shared_library library;
  const PluginDescriptor* descriptor = nullptr;
};

namespace {

bool looks_like_shared_library(const fs::path& file) {
  const std::string name = file.filename().string();
  return name.size() > 3 && (name.ends_with(".so") || name.find(".so.") != std::string::npos ||
                             name.ends_with(".dylib"));
}

}  // namespace

std::vector<fs::path> Registry::default_search_paths(const std::vector<fs::path>& explicit_paths) {
  std::vector<fs::path> paths = explicit_paths;
  if (const char* env = std::getenv("NNKIT_PLUGIN_PATH"); env != nullptr && *env != '\0') {
    std::stringstream stream(env);
    std::string item;
    while (std::getline(stream, item, ':')) {
      if (!item.empty()) paths.emplace_back(item);
    }
  }
  // The folder next to the core library: build/lib/nnkit/plugins or <prefix>/lib/nnkit/plugins.
  const fs::path core_dir = boost::dll::this_line_location().parent_path();
  paths.push_back(core_dir / "nnkit" / "plugins");
  return paths;
}

Registry::Registry(std::vector<fs::path> search_paths) : search_paths_(std::move(search_paths)) {
  for (const fs::path& path : search_paths_) {
    std::error_code ec;
    if (fs::is_regular_file(path, ec)) {
      scan_file(path);
      continue;
    }
    if (!fs::is_directory(path, ec)) {
      logger()->debug("plugin search path {} does not exist; skipped", path.string());
      continue;
    }
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(path, ec)) {
      if (entry.is_regular_file(ec) && looks_like_shared_library(entry.path())) {
        files.push_back(entry.path());
      }
    }
    std::sort(files.begin(), files.end());  // deterministic order across file systems
    for (const fs::path& file : files) scan_file(file);
  }
}

Registry::~Registry() = default;

void Registry::scan_file(const fs::path& file) {
  auto reject = [&](const std::string& reason) {
    logger()->warn("skipping {}: {}", file.string(), reason);
    rejected_.push_back({file.string(), reason});
  };
  auto library = std::make_shared<Library>();
  try {
    library->library.load(file,
                          boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local);
  } catch (const std::exception& e) {
    reject(std::string("cannot be loaded: ") + e.what());
    return;
  }
  if (!library->library.has(NNKIT_PLUGIN_ENTRY_SYMBOL)) {
    reject("not an nnkit plugin (it does not export '" NNKIT_PLUGIN_ENTRY_SYMBOL "')");
    return;
  }
  using EntryFn = const PluginDescriptor*() noexcept;
  const PluginDescriptor* descriptor = library->library.get<EntryFn>(NNKIT_PLUGIN_ENTRY_SYMBOL)();
  if (descriptor == nullptr) {
    reject("its entry point returned no descriptor");
    return;
  }
  // ABI version and build tag first: nothing else in the descriptor is trusted before this.
  if (descriptor->abi_version != kPluginAbiVersion) {
    reject("built for plugin ABI version " + std::to_string(descriptor->abi_version) +
           ", this nnkit uses ABI version " + std::to_string(kPluginAbiVersion) +
           "; rebuild the plugin against this nnkit SDK");
    return;
  }
  if (descriptor->build_tag == nullptr ||
      std::strcmp(descriptor->build_tag, NNKIT_BUILD_TAG) != 0) {
    reject(std::string("built with '") + (descriptor->build_tag ? descriptor->build_tag : "?") +
           "', this nnkit was built with '" NNKIT_BUILD_TAG
           "'; rebuild the plugin with the same "
           "compiler and standard library");
    return;
  }
  PluginInfo info;
  info.kind = descriptor->kind ? descriptor->kind : "";
  info.name = descriptor->name ? descriptor->name : "";
  info.version = descriptor->version ? descriptor->version : "";
  info.summary = descriptor->summary ? descriptor->summary : "";
  info.path = fs::absolute(file).lexically_normal().string();
  if (info.kind.empty() || info.name.empty() || descriptor->create == nullptr) {
    reject("its descriptor has no kind, name or factory");
    return;
  }
  try {
    if (descriptor->options) info.options = descriptor->options();
  } catch (const std::exception& e) {
    reject(std::string("its option list threw: ") + e.what());
    return;
  }
  if (const PluginInfo* existing = find(info.kind, info.name)) {
    reject(info.id() + " is shadowed by " + existing->path + " (found earlier in the search path)");
    return;
  }
  library->descriptor = descriptor;
  logger()->debug("loaded plugin {} {} from {}", info.id(), info.version, info.path);
  plugins_.push_back(std::move(info));
  libraries_.push_back(std::move(library));
}

const PluginInfo* Registry::find(const std::string& kind, const std::string& name) const {
  for (const PluginInfo& info : plugins_) {
    if (info.kind == kind && info.name == name) return &info;
  }
  return nullptr;
}

std::vector<std::string> Registry::names_of_kind(const std::string& kind) const {
  std::vector<std::string> names;
  for (const PluginInfo& info : plugins_) {
    if (info.kind == kind) names.push_back(info.name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

const PluginInfo& Registry::require(const std::string& kind, const std::string& name,
                                    const std::string& where) const {
  if (const PluginInfo* info = find(kind, name)) return *info;
  std::string message = "unknown " + kind + " plugin '" + name + "'";
  if (!where.empty()) message += " (" + where + ")";
  const std::vector<std::string> names = names_of_kind(kind);
  if (names.empty()) {
    message += "; no " + kind + " plugins were found in:";
    for (const fs::path& p : search_paths_) message += " " + p.string();
    message += " (run `nnkit plugins` to see what was found and skipped)";
  } else {
    message += "; available " + kind + " plugins:";
    for (const std::string& n : names) message += " " + n;
  }
  throw PluginError("registry", message);
}

std::shared_ptr<Component> Registry::create_component(const std::string& kind,
                                                      const std::string& name,
                                                      const CreateArgs& args) const {
  const PluginInfo& info = require(kind, name);
  const size_t index = static_cast<size_t>(&info - plugins_.data());
  std::shared_ptr<Library> library = libraries_[index];
  Component* raw = nullptr;
  try {
    raw = library->descriptor->create(args);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw PluginError(info.id(), std::string("failed to create: ") + e.what());
  }
  if (raw == nullptr) throw PluginError(info.id(), "its factory returned nothing");
  raw->set_id(info.id());
  // The deleter holds the library: the object's code stays mapped until the object is gone.
  return std::shared_ptr<Component>(raw, [library](Component* c) { delete c; });
}

}  // namespace nnkit
