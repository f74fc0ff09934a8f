// Purpose: see same_path.h.
#include "same_path.h"

#include <system_error>

#include "nnkit/error.h"

namespace nnkit::cli {

namespace {

namespace fs = std::filesystem;

bool same_path(const fs::path& a, const fs::path& b) {
  std::error_code ec;
  if (fs::exists(a, ec) && fs::exists(b, ec)) return fs::equivalent(a, b, ec) && !ec;
  const fs::path ca = fs::weakly_canonical(fs::absolute(a, ec), ec);
  const fs::path cb = fs::weakly_canonical(fs::absolute(b, ec), ec);
  return !ec && ca == cb;
}

}  // namespace

void refuse_output_equal_to_input(const fs::path& output, const std::vector<fs::path>& inputs,
                                  const std::string& what) {
  for (const fs::path& input : inputs) {
    if (!same_path(output, input)) continue;
    throw UsageError("cli",
                     what + " names the input " + input.string() +
                         "; writing it would replace that input. Choose another output path");
  }
}

}  // namespace nnkit::cli
