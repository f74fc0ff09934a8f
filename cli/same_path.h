// Purpose: refusing an output path that names one of a command's inputs (`data prepare a.txt -o
// a.txt` used to overwrite its own input; `tokenizer train x.model -o x`, `convert ... -o` the
// same folder likewise). Two paths are the same when they resolve to the same file or folder
// (symbolic links and `..` followed), or, when the output does not exist yet, to the same
// absolute path.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace nnkit::cli {

// Throws UsageError("cli", "<what> names the input <input>; ...") when `output` is one of
// `inputs`; `what` says which output, e.g. "-o corpus.txt".
void refuse_output_equal_to_input(const std::filesystem::path& output,
                                  const std::vector<std::filesystem::path>& inputs,
                                  const std::string& what);

}  // namespace nnkit::cli
