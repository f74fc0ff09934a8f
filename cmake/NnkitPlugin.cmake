# nnkit_add_plugin(<kind> <name> SOURCES ... [LIBS ...])
# Builds a MODULE library `nnkit_<kind>_<name>` with hidden symbols (only the descriptor entry is
# exported) and installs it into NNKIT_PLUGIN_INSTALL_DIR (default <libdir>/nnkit/plugins,
# relative to the install prefix of the project that calls it).
# Used both in-tree and by third-party plugins through the installed nnkit package
# (find_package(nnkit) includes this file; see docs/plugins.md and examples/third_party_sampler).
#   - In-tree, NNKIT_PLUGIN_OUTPUT_DIR puts the library into build/lib/nnkit/plugins, where the
#     build tree's CLI finds it. Outside the tree it is not set: the library lands in
#     CMAKE_LIBRARY_OUTPUT_DIRECTORY if set, else the calling folder's binary dir; load it from
#     there with --plugin-path, NNKIT_PLUGIN_PATH or `plugin_paths:`.
#   - The C++ standard is pinned to nnkit's own (NNKIT_CXX_STANDARD): it is part of the build tag
#     the registry compares, so a plugin compiled as C++23 would be refused by a C++20 nnkit.
include_guard(GLOBAL)
include(GNUInstallDirs)

if(NOT DEFINED NNKIT_CXX_STANDARD)
  if(CMAKE_CXX_STANDARD)
    set(NNKIT_CXX_STANDARD ${CMAKE_CXX_STANDARD})
  else()
    set(NNKIT_CXX_STANDARD 20)
  endif()
endif()
set(NNKIT_PLUGIN_INSTALL_DIR "${CMAKE_INSTALL_LIBDIR}/nnkit/plugins" CACHE STRING
  "where nnkit_add_plugin() installs plugins (relative paths are under CMAKE_INSTALL_PREFIX)")

function(nnkit_add_plugin kind name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
  if(NOT TARGET nnkit::core)
    message(FATAL_ERROR "nnkit_add_plugin(${kind} ${name}): nnkit::core is not defined; "
                        "call find_package(nnkit REQUIRED) first")
  endif()
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "nnkit_add_plugin(${kind} ${name}): no SOURCES given")
  endif()
  set(target nnkit_${kind}_${name})
  add_library(${target} MODULE ${ARG_SOURCES})
  target_link_libraries(${target} PRIVATE nnkit::core ${ARG_LIBS})
  set_target_properties(${target} PROPERTIES
    PREFIX "lib"
    CXX_STANDARD ${NNKIT_CXX_STANDARD}
    CXX_STANDARD_REQUIRED ON
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  if(DEFINED NNKIT_PLUGIN_OUTPUT_DIR)
    set_target_properties(${target} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${NNKIT_PLUGIN_OUTPUT_DIR})
  endif()
  install(TARGETS ${target} LIBRARY DESTINATION ${NNKIT_PLUGIN_INSTALL_DIR})
endfunction()
