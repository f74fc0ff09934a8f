#include "nnkit/io/token_file.h"

#include <gtest/gtest.h>

#include "io_test_util.h"
#include "nnkit/io/atomic_file.h"

namespace nnkit {
namespace {

using test::expect_io_error;
using test::TempDir;

std::vector<int32_t> all_ids(const TokenFile& f) {
  std::vector<int32_t> out(static_cast<size_t>(f.size()));
  f.read(0, f.size(), out.data());
  return out;
}

TEST(TokenFile, RoundTripUint16) {
  TempDir dir;
  const std::vector<int32_t> ids = {0, 1, 255, 256, 65535, 42};
  write_token_file(dir / "t.bin", ids, 65536);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"t.bin"});
  EXPECT_EQ(std::filesystem::file_size(dir / "t.bin"), 32u + 2 * ids.size());
  TokenFile f(dir / "t.bin");
  EXPECT_EQ(f.size(), 6);
  EXPECT_EQ(f.vocab_size(), 65536);
  EXPECT_EQ(f.bytes_per_id(), 2);
  EXPECT_EQ(all_ids(f), ids);
  EXPECT_EQ(f.at(4), 65535);
  expect_io_error([&] { f.at(6); }, {"index 6 is outside [0, 6)"});
  expect_io_error([&] { f.at(-1); }, {"outside"});
  int32_t x[4];
  expect_io_error([&] { f.read(4, 3, x); }, {"outside"});
}

TEST(TokenFile, RoundTripUint32) {
  TempDir dir;
  const std::vector<int32_t> ids = {0, 65536, 100000, 151935, 7};
  write_token_file(dir / "t.bin", ids, 151936);
  TokenFile f(dir / "t.bin");
  EXPECT_EQ(f.bytes_per_id(), 4);
  EXPECT_EQ(f.vocab_size(), 151936);
  EXPECT_EQ(all_ids(f), ids);
  TokenFile moved = std::move(f);
  EXPECT_EQ(moved.at(3), 151935);
}

TEST(TokenFile, EmptyPayloadIsAValidFile) {
  TempDir dir;
  write_token_file(dir / "e.bin", {}, 256);
  TokenFile f(dir / "e.bin");
  EXPECT_EQ(f.size(), 0);
}

TEST(TokenFile, WriterRejectsOutOfRangeIds) {
  TempDir dir;
  expect_io_error(
      [&] {
        write_token_file(dir / "t.bin", {1, 300}, 256);
      },
      {"t.bin", "token 1 has id 300", "outside [0, 256)"});
  expect_io_error([&] { write_token_file(dir / "t.bin", {-1}, 256); }, {"has id -1"});
  expect_io_error([&] { write_token_file(dir / "t.bin", {0}, 0); }, {"vocab size 0"});
  EXPECT_TRUE(dir.entries().empty());
}

TEST(TokenFile, TextFilePassedByMistake) {
  TempDir dir;
  test::write_raw(dir / "corpus.txt", "Once upon a time there was a tokenizer.\n");
  expect_io_error([&] { TokenFile f(dir / "corpus.txt"); },
                  {"corpus.txt", "not an nnkit token file",
                   "create one with `nnkit data prepare INPUT... -o FILE`"});
}

TEST(TokenFile, WrongMagic) {
  TempDir dir;
  write_token_file(dir / "t.bin", {1, 2, 3}, 10);
  std::string raw = read_file(dir / "t.bin");
  raw[7] = '2';  // "NNKTOK02"
  test::write_raw(dir / "t.bin", raw);
  expect_io_error([&] { TokenFile f(dir / "t.bin"); }, {"not an nnkit token file"});
  test::write_raw(dir / "empty.bin", "");
  expect_io_error([&] { TokenFile f(dir / "empty.bin"); }, {"is empty"});
}

TEST(TokenFile, UnsupportedVersion) {
  TempDir dir;
  write_token_file(dir / "t.bin", {1, 2, 3}, 10);
  std::string raw = read_file(dir / "t.bin");
  raw[8] = 3;
  test::write_raw(dir / "t.bin", raw);
  expect_io_error([&] { TokenFile f(dir / "t.bin"); }, {"format version 3 is not supported"});
}

TokenizerIdentity sentencepiece_identity() {
  TokenizerIdentity t;
  t.name = "sentencepiece";
  t.model_hash = "crc32c:1234abcd:250000";
  t.vocab_size = 8000;
  return t;
}

// Version 2 records the tokenizer after the payload; the ids keep their offset.
TEST(TokenFile, Version2RecordsTheTokenizer) {
  TempDir dir;
  const std::vector<int32_t> ids = {5, 7999, 0};
  write_token_file(dir / "t.bin", ids, 8000, sentencepiece_identity());
  TokenFile f(dir / "t.bin");
  EXPECT_EQ(f.format_version(), 2);
  ASSERT_TRUE(f.tokenizer().has_value());
  EXPECT_EQ(*f.tokenizer(), sentencepiece_identity());
  EXPECT_EQ(f.tokenizer()->describe(),
            "tokenizer/sentencepiece (vocab 8000, model crc32c:1234abcd:250000)");
  EXPECT_EQ(all_ids(f), ids);
  // Without an identity the writer keeps version 1, which still loads with no record.
  write_token_file(dir / "v1.bin", ids, 8000);
  TokenFile v1(dir / "v1.bin");
  EXPECT_EQ(v1.format_version(), 1);
  EXPECT_FALSE(v1.tokenizer().has_value());
  EXPECT_EQ(all_ids(v1), ids);
  EXPECT_EQ(std::filesystem::file_size(dir / "v1.bin"), 32u + 2 * ids.size());
  EXPECT_TRUE(is_token_file(dir / "t.bin"));
  test::write_raw(dir / "text.txt", "NNKTOK0 is not quite the magic");
  EXPECT_FALSE(is_token_file(dir / "text.txt"));
}

TEST(TokenFile, DamagedTokenizerRecordIsRefused) {
  TempDir dir;
  write_token_file(dir / "t.bin", {1, 2}, 10, sentencepiece_identity());
  const std::string raw = read_file(dir / "t.bin");
  const size_t record = 32 + 2 * 2;  // after the payload: u32 length, u32 CRC, JSON
  std::string flipped = raw;
  flipped[record + 8 + 3] ^= 0x20;
  test::write_raw(dir / "crc.bin", flipped);
  expect_io_error([&] { TokenFile f(dir / "crc.bin"); },
                  {"crc.bin", "tokenizer record's checksum does not match"});
  std::string huge = raw;
  huge[record + 3] = '\x7f';
  test::write_raw(dir / "len.bin", huge);
  expect_io_error([&] { TokenFile f(dir / "len.bin"); }, {"tokenizer record is", "at most 65536"});
  test::write_raw(dir / "cut.bin", raw.substr(0, raw.size() - 5));
  expect_io_error([&] { TokenFile f(dir / "cut.bin"); }, {"truncated", "tokenizer record"});
}

TEST(TokenFile, Truncated) {
  TempDir dir;
  write_token_file(dir / "t.bin", {1, 2, 3, 4}, 10);
  std::string raw = read_file(dir / "t.bin");
  test::write_raw(dir / "t.bin", raw.substr(0, raw.size() - 3));
  expect_io_error([&] { TokenFile f(dir / "t.bin"); },
                  {"t.bin", "truncated", "expected 40 bytes", "4 tokens x 2 bytes", "found 37"});
  test::write_raw(dir / "h.bin", raw.substr(0, 20));
  expect_io_error([&] { TokenFile f(dir / "h.bin"); }, {"truncated", "header needs 32 bytes"});
  test::write_raw(dir / "long.bin", raw + "xx");
  expect_io_error([&] { TokenFile f(dir / "long.bin"); }, {"trailing bytes", "found 42"});
}

TEST(TokenFile, FlippedPayloadByteFailsChecksum) {
  TempDir dir;
  write_token_file(dir / "t.bin", {1, 2, 3, 4}, 10);
  std::string raw = read_file(dir / "t.bin");
  raw[34] ^= 0x01;  // token 1: 2 -> 3, still a valid id
  test::write_raw(dir / "t.bin", raw);
  expect_io_error([&] { TokenFile f(dir / "t.bin"); }, {"t.bin", "checksum mismatch", "corrupt"});
}

TEST(TokenFile, IdOutOfVocabWithValidChecksum) {
  TempDir dir;
  // Write with a large vocab, then lower the vocab field: the checksum covers only the payload.
  write_token_file(dir / "t.bin", {1, 9}, 10);
  std::string raw = read_file(dir / "t.bin");
  raw[24] = 5;
  test::write_raw(dir / "t.bin", raw);
  expect_io_error([&] { TokenFile f(dir / "t.bin"); },
                  {"token 1 has id 9, not below the vocab size 5"});
}

TEST(TokenFile, ImpossibleCountAndWidth) {
  TempDir dir;
  write_token_file(dir / "t.bin", {1}, 10);
  std::string raw = read_file(dir / "t.bin");
  std::string wide = raw;
  wide[12] = 3;
  test::write_raw(dir / "w.bin", wide);
  expect_io_error([&] { TokenFile f(dir / "w.bin"); }, {"bytes per id is 3"});
  std::string huge = raw;
  for (int i = 16; i < 24; ++i) huge[static_cast<size_t>(i)] = '\xFF';
  test::write_raw(dir / "c.bin", huge);
  expect_io_error([&] { TokenFile f(dir / "c.bin"); }, {"impossible"});
}

}  // namespace
}  // namespace nnkit
