// Purpose: the binary token file that training reads (written by `nnkit data prepare`).
// Layout (all little-endian), 32-byte header then the payload:
//   offset  0  char[8]  magic "NNKTOK01"
//   offset  8  u32      format version (1 or 2)
//   offset 12  u32      bytes per id: 2 (vocab <= 65536) or 4
//   offset 16  u64      token count
//   offset 24  u32      vocab size (every id is < this)
//   offset 28  u32      CRC-32C of the payload
//   offset 32  ids      count * bytes-per-id bytes
// Version 2 appends the identity of the tokenizer that made the ids, after the payload (so the
// ids keep their offset and version-1 readers' layout):
//   u32 n, u32 CRC-32C of the n bytes, n bytes of JSON
//   {"kind": "tokenizer", "name": "sentencepiece", "model_hash": "crc32c:...", "vocab_size": N}
// Version-1 files (written before nnkit recorded the tokenizer) still load; tokenizer() is then
// empty and callers say that the tokenizer cannot be checked.
// The reader validates everything when the file is opened (including a full checksum pass and the
// id range), so training never starts on a damaged file.
// Thread-safety: a TokenFile is immutable after construction; const methods may be called
// concurrently. Ownership: TokenFile owns its read-only memory mapping. Errors throw IoError.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nnkit/export.h"

namespace nnkit {

inline constexpr char kTokenFileMagic[8] = {'N', 'N', 'K', 'T', 'O', 'K', '0', '1'};
// The newest version (written when a tokenizer identity is given; version 1 otherwise).
inline constexpr uint32_t kTokenFileVersion = 2;
inline constexpr size_t kTokenFileHeaderBytes = 32;
// The identity trailer is JSON of a few hundred bytes; anything larger is a corrupt length.
inline constexpr uint32_t kTokenFileMaxIdentityBytes = 65536;

// Which tokenizer made a file's ids. model_hash is "crc32c:<8 hex digits>:<bytes>" of the
// tokenizer's model file (empty for tokenizers without one, like tokenizer/byte): it tells two
// model files apart, it does not authenticate one.
struct TokenizerIdentity {
  std::string kind = "tokenizer";
  std::string name;  // the plugin name: "byte", "sentencepiece"
  std::string model_hash;
  int64_t vocab_size = 0;
  bool operator==(const TokenizerIdentity&) const = default;
  // "tokenizer/sentencepiece (vocab 8000, model crc32c:1234abcd:250000)".
  NNKIT_API std::string describe() const;
};

// Writes `ids` atomically. Uses 2 bytes per id when vocab_size <= 65536, else 4. Every id must be
// in [0, vocab_size); vocab_size must be in [1, 2^32 - 1]. With `identity`, writes version 2 and
// records it. Throws IoError naming the file.
NNKIT_API void write_token_file(const std::filesystem::path& path, const std::vector<int32_t>& ids,
                                int64_t vocab_size,
                                const std::optional<TokenizerIdentity>& identity = std::nullopt);

// True when `path` starts with the token file magic (a text file does not); reads 8 bytes and
// validates nothing else.
NNKIT_API bool is_token_file(const std::filesystem::path& path);

class NNKIT_API TokenFile {
 public:
  // Maps and validates `path`. Throws IoError (not a token file, unsupported version, truncated,
  // checksum mismatch, id out of range).
  explicit TokenFile(const std::filesystem::path& path);
  ~TokenFile();
  TokenFile(TokenFile&&) noexcept;
  TokenFile& operator=(TokenFile&&) noexcept;
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  const std::filesystem::path& path() const;
  // Number of tokens.
  int64_t size() const;
  int64_t vocab_size() const;
  // 2 or 4.
  int bytes_per_id() const;
  // 1 or 2.
  int format_version() const;
  // The tokenizer recorded by a version-2 file; nullopt for version 1.
  const std::optional<TokenizerIdentity>& tokenizer() const;
  // Token i; throws IoError when i is out of [0, size()).
  int32_t at(int64_t i) const;
  // Copies tokens [begin, begin + count) to out (count values); throws when out of range.
  void read(int64_t begin, int64_t count, int32_t* out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nnkit
