// Purpose: where the running nnkit binary came from: the git commit of its source tree and
// whether tracked files had uncommitted changes, both taken when it was built
// (cmake/git_state.cmake generates the definitions). Run records store them.
// Thread-safety: constants. Ownership: none.
#pragma once

namespace nnkit::cli {

// 40 hex digits, or "unknown" when the source was not a git checkout.
const char* build_git_commit();
// True when tracked files differed from build_git_commit() at build time.
bool build_git_dirty();

}  // namespace nnkit::cli
