// Purpose: which tokenizer made a token file, and refusing data from another one. `nnkit data
// prepare` records the config's tokenizer in the file (nnkit/io/token_file.h, version 2); `train`
// and `eval` compare it with the model's tokenizer before any work and refuse a mismatch (the
// ids would mean other text) unless --allow-tokenizer-mismatch. Version-1 files, written before
// the record existed, still load with a note.
#pragma once

#include <filesystem>
#include <string>

#include "args.h"
#include "common.h"
#include "nnkit/io/token_file.h"
#include "nnkit/tokenizer.h"

namespace nnkit::cli {

inline constexpr const char* kAllowTokenizerMismatchFlag = "--allow-tokenizer-mismatch";
FlagSpec allow_tokenizer_mismatch_flag();

// The identity of the session's tokenizer: its plugin name, the CRC-32C and size of its model
// file when its options name one (`model:`, resolved as tokenizer/sentencepiece does: absolute,
// beside the config file, or from the working directory), and its vocabulary size.
TokenizerIdentity tokenizer_identity(const Session& session, const Tokenizer& tokenizer);

// When `data` is a token file, compares its recorded tokenizer with `expected`: throws
// IoError("data", ...) naming both and the fix on a mismatch (a warning instead with the flag);
// logs a note for a version-1 file. Text files are tokenised by the model's own tokenizer and
// need no check.
void check_data_tokenizer(const std::filesystem::path& data, const TokenizerIdentity& expected,
                          const ParsedArgs& args);

}  // namespace nnkit::cli
