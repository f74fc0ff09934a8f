// Purpose: see data_identity.h.
#include "data_identity.h"

#include <cstdio>
#include <fstream>
#include <system_error>
#include <vector>

#include "nnkit/error.h"
#include "nnkit/io/checksum.h"
#include "nnkit/logging.h"

namespace nnkit::cli {

namespace {

namespace fs = std::filesystem;

// The model file a tokenizer's `model:` option names, in tokenizer/sentencepiece's order.
fs::path model_file(const Options& options) {
  const fs::path given = options.get_string("model");
  if (given.empty() || given.is_absolute()) return given;
  std::error_code ec;
  const fs::path config_file = options.location_of("model").file;
  if (!config_file.empty() && fs::is_regular_file(config_file, ec)) {
    const fs::path beside = config_file.parent_path() / given;
    if (fs::exists(beside, ec)) return beside;
  }
  return given;
}

// "crc32c:<hex>:<bytes>" of a file, streamed in 1 MiB pieces.
std::string file_hash(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw IoError("data", "cannot read tokenizer model " + file.string() + " to hash it");
  std::vector<char> buffer(1 << 20);
  uint32_t crc = 0;
  uint64_t bytes = 0;
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const auto n = static_cast<size_t>(in.gcount());
    crc = crc32c(crc, buffer.data(), n);
    bytes += n;
  }
  return "crc32c:" + hex32(crc) + ":" + std::to_string(bytes);
}

}  // namespace

FlagSpec allow_tokenizer_mismatch_flag() {
  return {kAllowTokenizerMismatchFlag, "",
          "use a token file made by another tokenizer than the model's (its ids mean other text)"};
}

TokenizerIdentity tokenizer_identity(const Session& session, const Tokenizer& tokenizer) {
  const PluginChoice& choice = session.config.tokenizer;
  TokenizerIdentity identity;
  identity.kind = choice.kind.empty() ? "tokenizer" : choice.kind;
  identity.name = choice.name;
  identity.vocab_size = tokenizer.vocab_size();
  if (choice.options.has("model")) {
    const fs::path file = model_file(choice.options);
    if (!file.empty()) identity.model_hash = file_hash(file);
  }
  return identity;
}

void check_data_tokenizer(const fs::path& data, const TokenizerIdentity& expected,
                          const ParsedArgs& args) {
  std::error_code ec;
  if (!fs::is_regular_file(data, ec) || !is_token_file(data)) return;
  const TokenFile tokens(data);
  const std::optional<TokenizerIdentity>& recorded = tokens.tokenizer();
  if (!recorded) {
    logger()->info(
        "note: token file {} (format 1) does not record its tokenizer, so it cannot be checked "
        "against the model's {}; re-run `nnkit data prepare` to record it",
        data.string(), expected.describe());
    return;
  }
  if (*recorded == expected) return;
  const std::string message = "token file " + data.string() + " was made by " +
                              recorded->describe() + " but the model's tokenizer is " +
                              expected.describe() + "; its ids would mean other text";
  if (args.has(kAllowTokenizerMismatchFlag)) {
    logger()->warn("{} (used anyway: {})", message, kAllowTokenizerMismatchFlag);
    return;
  }
  throw IoError("data", message +
                            ". Re-tokenise the text with the model's config (`nnkit data "
                            "prepare INPUT... -o FILE --config CONFIG`), or pass " +
                            std::string(kAllowTokenizerMismatchFlag) + " to use it anyway");
}

}  // namespace nnkit::cli
