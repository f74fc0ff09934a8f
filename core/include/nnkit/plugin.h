// Purpose: the plugin boundary. Each plugin library exports exactly one symbol,
// `nnkit_plugin_descriptor`, an extern "C" noexcept function returning a PluginDescriptor.
// The registry reads `abi_version` and `build_tag` first and refuses a mismatch before touching any
// other field. Fields are only ever appended, never reordered (the ABI version guards the rest).
// Ownership: the descriptor is static data inside the plugin; `create` returns a heap object that
// the registry wraps in a shared_ptr holding the library.
#pragma once

#include <cstdint>
#include <vector>

#include "nnkit/component.h"
#include "nnkit/options.h"
#include "nnkit/version.h"

namespace nnkit {

struct PluginDescriptor {
  uint32_t abi_version;   // must equal kPluginAbiVersion; always the first field
  const char* build_tag;  // NNKIT_BUILD_TAG as seen by the plugin's compiler
  const char* kind;       // "backend", "attention", "moe", "ffn", "norm", "optim", "schedule", ...
  const char* name;       // "cpu", "mqa", "topk", ...
  const char* version;    // the plugin's own version
  const char* summary;    // one line for `nnkit plugins`
  std::vector<OptionSpec> (*options)();          // declared options (may be empty)
  Component* (*create)(const CreateArgs& args);  // throws nnkit::Error on bad options
};

}  // namespace nnkit

#define NNKIT_PLUGIN_ENTRY_SYMBOL "nnkit_plugin_descriptor"

// Defines the exported entry point of a plugin library. Use once per library:
//   NNKIT_PLUGIN(attention, mqa, "0.1.0", "multi-query attention", &mqa_options, &create_mqa)
#define NNKIT_PLUGIN(KIND, NAME, VERSION, SUMMARY, OPTIONS_FN, CREATE_FN)            \
  extern "C" __attribute__((visibility("default"))) const ::nnkit::PluginDescriptor* \
  nnkit_plugin_descriptor() noexcept {                                               \
    static const ::nnkit::PluginDescriptor descriptor{::nnkit::kPluginAbiVersion,    \
                                                      NNKIT_BUILD_TAG,               \
                                                      #KIND,                         \
                                                      #NAME,                         \
                                                      VERSION,                       \
                                                      SUMMARY,                       \
                                                      OPTIONS_FN,                    \
                                                      CREATE_FN};                    \
    return &descriptor;                                                              \
  }
