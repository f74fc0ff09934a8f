// Purpose: `tokenizer/byte`: one token per byte, after the four special ids every nnkit model
// shares (pad 0, unk 1, bos 2, eos 3), so byte b is id b + 4 and the vocabulary has 260 ids.
// Any byte string (invalid UTF-8, NUL included) round-trips exactly; it needs no vocabulary file,
// which makes it the tokenizer of tests and toy models.
// Ownership: no state; const and thread-safe.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "nnkit/plugin.h"
#include "nnkit/tokenizer.h"

namespace nnkit::tokenizer {
namespace {

constexpr int32_t kPadId = 0;
constexpr int32_t kUnkId = 1;
constexpr int32_t kBosId = 2;
constexpr int32_t kEosId = 3;
constexpr int32_t kFirstByteId = 4;
constexpr int32_t kByteValues = 256;

class ByteTokenizer final : public Tokenizer {
 public:
  int64_t vocab_size() const override { return kFirstByteId + kByteValues; }
  int32_t pad_id() const override { return kPadId; }
  int32_t unk_id() const override { return kUnkId; }
  int32_t bos_id() const override { return kBosId; }
  int32_t eos_id() const override { return kEosId; }

  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> ids;
    ids.reserve(text.size());
    // Through unsigned char: a plain char may be signed, and bytes >= 0x80 must map to 132..259.
    for (char c : text) ids.push_back(kFirstByteId + static_cast<unsigned char>(c));
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string text;
    text.reserve(ids.size());
    for (int32_t id : ids) {
      // Specials carry no text, and ids past the vocabulary (a larger model head) have none either.
      if (id < kFirstByteId || id >= kFirstByteId + kByteValues) continue;
      text.push_back(static_cast<char>(static_cast<unsigned char>(id - kFirstByteId)));
    }
    return text;
  }
};

std::vector<OptionSpec> byte_options() {
  return {};
}

Component* create_byte(const CreateArgs&) {
  return new ByteTokenizer();
}

}  // namespace
}  // namespace nnkit::tokenizer

NNKIT_PLUGIN(tokenizer, byte, "0.1.0", "one token per byte after 4 special ids (vocab 260)",
             &nnkit::tokenizer::byte_options, &nnkit::tokenizer::create_byte)
