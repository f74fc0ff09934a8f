// Purpose: tests of `tokenizer/byte`: the id layout (4 specials, then bytes), exact round trips of
// arbitrary bytes and UTF-8 text, and decode skipping special and out-of-range ids.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "nnkit/tokenizer.h"
#include "support/test_support.h"

namespace nnkit {
namespace {

std::shared_ptr<Tokenizer> byte_tokenizer() {
  return test::create<Tokenizer>("tokenizer", "byte");
}

TEST(ByteTokenizer, SpecialIdsAndVocabulary) {
  auto tokenizer = byte_tokenizer();
  EXPECT_EQ(tokenizer->id(), "tokenizer/byte");
  EXPECT_EQ(tokenizer->pad_id(), 0);
  EXPECT_EQ(tokenizer->unk_id(), 1);
  EXPECT_EQ(tokenizer->bos_id(), 2);
  EXPECT_EQ(tokenizer->eos_id(), 3);
  EXPECT_EQ(tokenizer->vocab_size(), 260);
}

TEST(ByteTokenizer, ByteBIsIdBPlusFour) {
  auto tokenizer = byte_tokenizer();
  EXPECT_EQ(tokenizer->encode("A"), (std::vector<int32_t>{'A' + 4}));
  EXPECT_EQ(tokenizer->encode(std::string(1, '\0')), (std::vector<int32_t>{4}));
  EXPECT_EQ(tokenizer->encode("\xff"), (std::vector<int32_t>{259}));
  EXPECT_EQ(tokenizer->encode("\x80"), (std::vector<int32_t>{132}));
  EXPECT_TRUE(tokenizer->encode("").empty());  // no BOS/EOS added
}

TEST(ByteTokenizer, EveryByteValueRoundTrips) {
  auto tokenizer = byte_tokenizer();
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const std::vector<int32_t> ids = tokenizer->encode(all);
  ASSERT_EQ(ids.size(), 256u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[static_cast<size_t>(b)], b + 4);
  EXPECT_EQ(tokenizer->decode(ids), all);
}

TEST(ByteTokenizer, RandomBytesRoundTrip) {
  auto tokenizer = byte_tokenizer();
  std::mt19937_64 rng(99);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int trial = 0; trial < 50; ++trial) {
    std::string bytes(static_cast<size_t>(trial * 37), '\0');
    for (char& c : bytes) c = static_cast<char>(byte(rng));
    const std::vector<int32_t> ids = tokenizer->encode(bytes);
    for (int32_t id : ids) {
      EXPECT_GE(id, 4);
      EXPECT_LT(id, tokenizer->vocab_size());
    }
    EXPECT_EQ(tokenizer->decode(ids), bytes);
  }
}

TEST(ByteTokenizer, Utf8TextRoundTrips) {
  auto tokenizer = byte_tokenizer();
  const std::string text =
      "h\xc3\xa9llo, \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x99\x82\n";  // héllo, 世界 🙂
  const std::vector<int32_t> ids = tokenizer->encode(text);
  EXPECT_EQ(ids.size(), text.size());  // one id per byte, not per code point
  EXPECT_EQ(tokenizer->decode(ids), text);
  // Invalid UTF-8 (a lone continuation byte, a truncated sequence) is just bytes.
  const std::string invalid = "a\x80z\xe4\xb8";
  EXPECT_EQ(tokenizer->decode(tokenizer->encode(invalid)), invalid);
}

TEST(ByteTokenizer, DecodeSkipsSpecialAndOutOfRangeIds) {
  auto tokenizer = byte_tokenizer();
  std::vector<int32_t> ids{tokenizer->bos_id()};
  for (int32_t id : tokenizer->encode("hi")) ids.push_back(id);
  ids.insert(ids.end(), {0, 1, -5, 260, 1000, 'x' + 4, 3});
  EXPECT_EQ(tokenizer->decode(ids), "hix");
  EXPECT_EQ(tokenizer->decode({0, 1, 2, 3}), "");
}

}  // namespace
}  // namespace nnkit
