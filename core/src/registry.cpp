// Purpose: plugin discovery and creation through Boost.DLL (see registry.h for the search order).
#include "nnkit/registry.h"

#include <algorithm>
#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <set>
#include <sstream>

#include "nnkit/layer.h"
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

bool world_writable(const fs::path& path) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  return !ec && (status.permissions() & fs::perms::others_write) != fs::perms::none;
}

std::string canonical_text(const fs::path& path) {
  std::error_code ec;
  fs::path canonical = fs::weakly_canonical(path, ec);
  if (ec) canonical = fs::absolute(path).lexically_normal();
  return canonical.string();
}

}  // namespace

bool is_plain_plugin_name(const std::string& name) {
  if (name.empty() || name.find("..") != std::string::npos) return false;
  for (unsigned char c : name) {
    if (!std::isalnum(c) && c != '_' && c != '-' && c != '.') return false;
  }
  return true;
}

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

Registry::Registry(std::vector<fs::path> search_paths)
    : Registry(std::move(search_paths), RegistryOptions{}) {}

Registry::Registry(std::vector<fs::path> search_paths, RegistryOptions options)
    : search_paths_(std::move(search_paths)), options_(std::move(options)) {
  // A preferred library is loaded first, so that it is the one kept whichever folder the other
  // copy sits in; the conflict check below then refuses the others quietly.
  for (const auto& [id, file] : options_.prefer) scan_file(file);
  for (const auto& [id, file] : options_.prefer_if_loadable) scan_file(file);
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
    scan_folder(path);
  }
}

std::string Registry::unsafe_reason(const fs::path& file) const {
  if (options_.allow_unsafe_dirs) return "";
  const fs::path folder = fs::absolute(file).parent_path();
  std::string what;
  if (world_writable(folder)) {
    what = "its folder " + folder.string() + " is world-writable";
  } else if (world_writable(file)) {
    what = "the file is world-writable";
  } else {
    return "";
  }
  return what +
         " (anyone on this machine could replace the code nnkit runs); remove the write "
         "permission for others (chmod o-w) or pass --allow-unsafe-plugin-dirs";
}

void Registry::scan_folder(const fs::path& path) {
  std::error_code ec;
  if (!options_.allow_unsafe_dirs && world_writable(path)) {
    const std::string reason =
        "the folder is world-writable (anyone on this machine could plant "
        "a library in it); no library in it is loaded. Remove the write "
        "permission for others (chmod o-w) or pass "
        "--allow-unsafe-plugin-dirs";
    logger()->warn("skipping {}: {}", path.string(), reason);
    rejected_.push_back({path.string(), reason});
    return;
  }
  {
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
  // The same file reached twice (a folder listed twice, a symlink) is one library, not a
  // conflict with itself.
  const std::string canonical = canonical_text(file);
  if (std::find(scanned_.begin(), scanned_.end(), canonical) != scanned_.end()) {
    logger()->debug("{} was already scanned", file.string());
    return;
  }
  scanned_.push_back(canonical);
  if (const std::string unsafe = unsafe_reason(file); !unsafe.empty()) {
    reject("refused: " + unsafe);
    return;
  }
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
           "'; rebuild the plugin with the same compiler and standard library against "
           "this nnkit's headers (the 'headers-' part is a hash of the SDK headers a plugin was "
           "compiled with: a different one means a stale build)");
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
  if (!is_plain_plugin_name(info.kind) || !is_plain_plugin_name(info.name)) {
    reject("its kind/name '" + info.id() +
           "' is not a plain name (letters, digits, '_', '-', '.'; no path separators or '..')");
    return;
  }
  try {
    if (descriptor->options) info.options = descriptor->options();
  } catch (const std::exception& e) {
    reject(std::string("its option list threw: ") + e.what());
    return;
  } catch (...) {
    reject("its option list threw something that is not a std::exception (a plugin bug)");
    return;
  }
  for (PluginInfo& existing : plugins_) {
    if (existing.kind != info.kind || existing.name != info.name) continue;
    auto preferred = options_.prefer.find(info.id());
    if (preferred == options_.prefer.end()) {
      preferred = options_.prefer_if_loadable.find(info.id());
      if (preferred == options_.prefer_if_loadable.end()) preferred = options_.prefer.end();
    }
    if (preferred != options_.prefer.end() &&
        canonical_text(preferred->second) == canonical_text(existing.path)) {
      logger()->debug("{} from {} not used: plugin_prefer chose {}", info.id(), info.path,
                      existing.path);
      return;
    }
    // Neither file is chosen: keep the first for listing, remember the other, refuse to use it.
    existing.conflicts.push_back(info.path);
    reject("conflicts with " + existing.path + ": both provide " + info.id() +
           " (choose one with plugin_prefer: {" + info.id() + ": PATH})");
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
  if (const PluginInfo* info = find(kind, name)) {
    const std::string asked = where.empty() ? "" : " (" + where + ")";
    auto preferred = options_.prefer.find(info->id());
    if (preferred != options_.prefer.end() &&
        canonical_text(preferred->second) != canonical_text(info->path)) {
      throw PluginError("registry", "plugin_prefer chooses " + preferred->second.string() +
                                        " for " + info->id() + asked +
                                        ", but that file does not provide it (" + info->id() +
                                        " comes from " + info->path +
                                        "; run `nnkit plugins` to see what the file is)");
    }
    if (!info->conflicts.empty()) {
      std::string message = info->id() + asked + " is provided by " +
                            std::to_string(info->conflicts.size() + 1) +
                            " libraries: " + info->path;
      for (const std::string& other : info->conflicts) message += " and " + other;
      message +=
          "; remove all but one from the search path, or choose one in the config: "
          "plugin_prefer: {" +
          info->id() + ": " + info->path + "}";
      throw PluginError("registry", message);
    }
    return *info;
  }
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
  } catch (...) {
    // `throw 42` in a constructor must not take the process down (nor pass for success).
    throw PluginError(info.id(),
                      "failed to create: its factory threw something that is not a "
                      "std::exception (a plugin bug; library " +
                          info.path + ")");
  }
  if (raw == nullptr) throw PluginError(info.id(), "its factory returned nothing");
  raw->set_id(info.id());
  // The deleter holds the library: the object's code stays mapped until the object is gone.
  return std::shared_ptr<Component>(raw, [library](Component* c) { delete c; });
}

std::string Registry::role_of(const PluginInfo& info) const {
  if (info.kind != "moe") return "";
  const std::lock_guard<std::mutex> lock(roles_mutex_);
  if (auto it = roles_.find(info.id()); it != roles_.end()) return it->second;
  Options options(info.id(), "role probe", SourceLocation{"<default>", 0, 0});
  int64_t n_experts = 4;
  for (const OptionSpec& spec : info.options) {
    Options::Value v;
    try {
      if (!spec.default_value.empty() && declared_default_problem(spec).empty()) {
        v = parse_option_text(spec, spec.default_value, info.id());
      } else {
        // Required (or broken) numbers at their lower bound, so the probe can be built.
        v.type = spec.type;
        v.int_value = spec.min ? static_cast<int64_t>(std::ceil(*spec.min)) : 1;
        v.float_value = spec.min ? *spec.min : 1.0;
      }
    } catch (const Error&) {
      roles_[info.id()] = "";
      return "";
    }
    if (spec.name == "n_experts" && spec.type == OptionType::kInt) n_experts = v.int_value;
    options.set(spec.name, v);
  }
  std::string role;
  try {
    const ModelDims dims{64, 16, 1, 16, 0, n_experts};
    std::shared_ptr<Component> probe =
        create_component(info.kind, info.name, CreateArgs{options, dims, nullptr});
    if (dynamic_cast<Router*>(probe.get()) != nullptr) role = "router";
    if (dynamic_cast<Experts*>(probe.get()) != nullptr) role = "experts";
  } catch (const Error&) {
    role = "";  // not buildable from defaults: the config's own checks will speak
  }
  roles_[info.id()] = role;
  return role;
}

std::vector<std::string> Registry::names_with_role(const std::string& kind,
                                                   const std::string& role) const {
  std::vector<std::string> names;
  for (const PluginInfo& info : plugins_) {
    if (info.kind == kind && role_of(info) == role) names.push_back(info.name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace nnkit
