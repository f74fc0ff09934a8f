// Purpose: the nnkit version and the plugin ABI identity (ABI version + build tag).
// Ownership: constants only. The build tag is computed from the *including* translation unit's
// compiler and standard library, so the core and each plugin bake their own copy; the registry
// compares the two before calling anything else in a plugin.
#pragma once

#include <cstdint>

#include "nnkit/header_hash.h"

#define NNKIT_VERSION_STRING "0.1.0"

#define NNKIT_STRINGIFY_IMPL(x) #x
#define NNKIT_STRINGIFY(x) NNKIT_STRINGIFY_IMPL(x)

#if defined(__clang__)
#define NNKIT_COMPILER_TAG "clang-" __clang_version__
#elif defined(__GNUC__)
#define NNKIT_COMPILER_TAG "gcc-" NNKIT_STRINGIFY(__GNUC__)
#else
#define NNKIT_COMPILER_TAG "unknown-compiler"
#endif

#if defined(_GLIBCXX_RELEASE)
#define NNKIT_STDLIB_TAG "libstdc++-" NNKIT_STRINGIFY(_GLIBCXX_RELEASE)
#elif defined(_LIBCPP_VERSION)
#define NNKIT_STDLIB_TAG "libc++-" NNKIT_STRINGIFY(_LIBCPP_VERSION)
#else
#define NNKIT_STDLIB_TAG "unknown-stdlib"
#endif

// Identifies everything that must match for C++ objects to cross the plugin boundary safely:
// compiler, standard library, nnkit version, C++ standard, and the SDK headers themselves (a
// hash, nnkit/header_hash.h), so a plugin compiled against other headers is refused.
#define NNKIT_BUILD_TAG                                                  \
  NNKIT_COMPILER_TAG ";" NNKIT_STDLIB_TAG ";nnkit-" NNKIT_VERSION_STRING \
                     ";cxx" NNKIT_STRINGIFY(__cplusplus) ";headers-" NNKIT_HEADERS_HASH

namespace nnkit {

// Bumped whenever any interface in core/include/nnkit changes layout or virtual-table order.
inline constexpr uint32_t kPluginAbiVersion = 8;

inline constexpr const char* kVersion = NNKIT_VERSION_STRING;

}  // namespace nnkit
