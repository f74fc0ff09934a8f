# nnkit_add_plugin(<kind> <name> SOURCES ... [LIBS ...])
# Builds a MODULE library `nnkit_<kind>_<name>` with hidden symbols (only the descriptor entry is
# exported), into the build tree's plugin folder and, on install, <libdir>/nnkit/plugins.
# Used both in-tree and by third-party plugins through the installed nnkit package.
function(nnkit_add_plugin kind name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
  set(target nnkit_${kind}_${name})
  add_library(${target} MODULE ${ARG_SOURCES})
  target_link_libraries(${target} PRIVATE nnkit::core ${ARG_LIBS})
  set_target_properties(${target} PROPERTIES
    PREFIX "lib"
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  if(DEFINED NNKIT_PLUGIN_OUTPUT_DIR)
    set_target_properties(${target} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${NNKIT_PLUGIN_OUTPUT_DIR})
  endif()
  if(NOT DEFINED NNKIT_PLUGIN_INSTALL_DIR)
    set(NNKIT_PLUGIN_INSTALL_DIR ${CMAKE_INSTALL_LIBDIR}/nnkit/plugins)
  endif()
  install(TARGETS ${target} LIBRARY DESTINATION ${NNKIT_PLUGIN_INSTALL_DIR})
endfunction()
