// Purpose: `tokenizer/sentencepiece`: a SentencePiece model file (unigram or BPE; the ones
// `nnkit tokenizer train` writes, or a Llama/Mistral `tokenizer.model`) through Debian's
// libsentencepiece. Special ids are the model's own: models trained by nnkit use pad 0, unk 1,
// bos 2, eos 3; HF Llama-family models use unk 0, bos 1, eos 2 and have no pad, in which case
// pad_id() reports the unk id (pad positions are never predicted, only skipped).
// `model:` may be absolute, relative to the folder of the config file that names it (so a run
// directory can be moved), or relative to the working directory, tried in that order.
// Text must be UTF-8: SentencePiece replaces every byte that is not part of a valid UTF-8
// sequence with U+FFFD before its byte fallback sees it, so such text cannot round-trip, and
// encode() refuses it with the byte offset instead of changing it silently (tokenizer/byte takes
// any bytes).
// Ownership: the tokenizer owns its SentencePieceProcessor; encode/decode are const and
// thread-safe (SentencePieceProcessor's encode/decode are const and keep no per-call state).
#include <sentencepiece_processor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "nnkit/error.h"
#include "nnkit/plugin.h"
#include "nnkit/tokenizer.h"

namespace nnkit::tokenizer {
namespace {

namespace fs = std::filesystem;

// Where `model` points: see the header comment for the order.
fs::path resolve_model_path(const Options& options) {
  const fs::path given = options.get_string("model");
  if (given.empty())
    options.fail("model", "is empty; give the path of a SentencePiece .model file");
  if (given.is_absolute()) return given;
  std::error_code ec;
  const fs::path config_file = options.location_of("model").file;
  if (!config_file.empty() && fs::is_regular_file(config_file, ec)) {
    const fs::path beside = config_file.parent_path() / given;
    if (fs::exists(beside, ec)) return beside;
  }
  return given;
}

// The offset of the first byte of `text` that is not part of a well-formed UTF-8 sequence
// (Unicode 15, table 3-7: no overlong forms, no surrogates, nothing above U+10FFFF), or npos.
size_t first_invalid_utf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (i + len > n || s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k) {
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const Options& options) {
    const fs::path path = resolve_model_path(options);
    std::error_code ec;
    if (fs::is_directory(path, ec)) {
      options.fail("model", "SentencePiece model file " + path.string() +
                                " is a directory; pass the .model file (PREFIX.model from "
                                "`nnkit tokenizer train`)");
    }
    if (!fs::is_regular_file(path, ec)) {
      options.fail("model", "SentencePiece model file " + path.string() +
                                " does not exist (train one with `nnkit tokenizer train`)");
    }
    sentencepiece::util::Status status;
    try {
      status = processor_.Load(path.string());
    } catch (const std::exception& e) {
      // libsentencepiece's trie builder throws (instead of returning a status) for some damaged
      // models, e.g. a zero-length piece (found by the sentencepiece_model fuzz target).
      options.fail("model", "cannot load SentencePiece model " + path.string() +
                                ": the file is corrupt (" + e.what() + ")");
    }
    if (!status.ok()) {
      options.fail("model",
                   "cannot load SentencePiece model " + path.string() + ": " + status.ToString());
    }
    vocab_size_ = processor_.GetPieceSize();
    unk_id_ = processor_.unk_id();
    bos_id_ = processor_.bos_id();
    eos_id_ = processor_.eos_id();
    pad_id_ = processor_.pad_id() >= 0 ? processor_.pad_id() : unk_id_;
    if (bos_id_ < 0 || eos_id_ < 0) {
      options.fail("model", "SentencePiece model " + path.string() +
                                " has no BOS or EOS piece; nnkit needs both (train with "
                                "`nnkit tokenizer train`, which sets pad 0, unk 1, bos 2, eos 3)");
    }
  }

  int64_t vocab_size() const override { return vocab_size_; }
  int32_t pad_id() const override { return pad_id_; }
  int32_t unk_id() const override { return unk_id_; }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }

  std::vector<int32_t> encode(std::string_view text) const override {
    const size_t bad = first_invalid_utf8(text);
    if (bad != std::string_view::npos) {
      static const char* const kHex = "0123456789abcdef";
      const auto byte = static_cast<unsigned char>(text[bad]);
      throw Error(id(), std::string("text is not valid UTF-8 at byte ") + std::to_string(bad) +
                            " (0x" + kHex[byte >> 4] + kHex[byte & 15] +
                            "); SentencePiece would replace it with U+FFFD, so it could not be "
                            "decoded back. Convert the text to UTF-8 (e.g. iconv), or use "
                            "tokenizer/byte, which takes any bytes");
    }
    std::vector<int> ids;
    const auto status = processor_.Encode(text, &ids);
    if (!status.ok()) throw Error(id(), "cannot encode text: " + status.ToString());
    return {ids.begin(), ids.end()};
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    // Ids past this vocabulary (a model head larger than the tokenizer) carry no text; the
    // library would refuse the whole sequence for one of them.
    std::vector<int> kept;
    kept.reserve(ids.size());
    for (int32_t id : ids) {
      if (id >= 0 && id < vocab_size_) kept.push_back(id);
    }
    std::string text;
    const auto status = processor_.Decode(kept, &text);
    if (!status.ok()) throw Error(id(), "cannot decode ids: " + status.ToString());
    return text;
  }

 private:
  sentencepiece::SentencePieceProcessor processor_;
  int32_t vocab_size_ = 0;
  int32_t pad_id_ = 0;
  int32_t unk_id_ = 0;
  int32_t bos_id_ = 0;
  int32_t eos_id_ = 0;
};

std::vector<OptionSpec> sentencepiece_options() {
  return {
      {"model", OptionType::kString, "", std::nullopt, std::nullopt,
       "path of the SentencePiece .model file (absolute, beside the config, or from the working "
       "directory)"},
  };
}

Component* create_sentencepiece(const CreateArgs& args) {
  return new SentencePieceTokenizer(args.options);
}

}  // namespace
}  // namespace nnkit::tokenizer

NNKIT_PLUGIN(tokenizer, sentencepiece, "0.1.0",
             "SentencePiece unigram/BPE model file (libsentencepiece)",
             &nnkit::tokenizer::sentencepiece_options, &nnkit::tokenizer::create_sentencepiece)
