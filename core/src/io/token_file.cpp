// Purpose: see nnkit/io/token_file.h.
#include "nnkit/io/token_file.h"

#include <bit>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/mapped_file.h"
#include "io/quote.h"
#include "nnkit/error.h"
#include "nnkit/io/atomic_file.h"
#include "nnkit/io/checksum.h"

namespace nnkit {
namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little,
              "token ids are stored little-endian; a big-endian host needs byte swapping here");

namespace {

constexpr const char* kPrepareHint = "create one with `nnkit data prepare INPUT... -o FILE`";

void put_u32(unsigned char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
void put_u64(unsigned char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
uint32_t get_u32(const std::byte* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = v << 8 | static_cast<uint8_t>(p[i]);
  return v;
}
uint64_t get_u64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | static_cast<uint8_t>(p[i]);
  return v;
}

std::string identity_json(const TokenizerIdentity& t) {
  return nlohmann::json{{"kind", t.kind},
                        {"name", t.name},
                        {"model_hash", t.model_hash},
                        {"vocab_size", t.vocab_size}}
      .dump();
}

}  // namespace

bool is_token_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[8] = {};
  return in.read(magic, sizeof(magic)) && std::memcmp(magic, kTokenFileMagic, 8) == 0;
}

std::string TokenizerIdentity::describe() const {
  std::string out = kind + "/" + name + " (vocab " + std::to_string(vocab_size);
  if (!model_hash.empty()) out += ", model " + model_hash;
  return out + ")";
}

void write_token_file(const fs::path& path, const std::vector<int32_t>& ids, int64_t vocab_size,
                      const std::optional<TokenizerIdentity>& identity) {
  const std::string file = io_detail::quoted(path);
  if (vocab_size < 1 || vocab_size > int64_t{0xFFFFFFFF}) {
    throw IoError("io", "cannot write token file " + file + ": vocab size " +
                            std::to_string(vocab_size) + " is outside [1, 4294967295]");
  }
  const uint32_t width = vocab_size <= 65536 ? 2 : 4;
  std::vector<unsigned char> payload(ids.size() * width);
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab_size) {
      throw IoError("io", "cannot write token file " + file + ": token " + std::to_string(i) +
                              " has id " + std::to_string(id) + ", outside [0, " +
                              std::to_string(vocab_size) +
                              "); the tokenizer and vocab size "
                              "disagree");
    }
    const auto v = static_cast<uint32_t>(id);
    unsigned char* p = payload.data() + i * width;
    p[0] = static_cast<unsigned char>(v);
    p[1] = static_cast<unsigned char>(v >> 8);
    if (width == 4) {
      p[2] = static_cast<unsigned char>(v >> 16);
      p[3] = static_cast<unsigned char>(v >> 24);
    }
  }
  unsigned char header[kTokenFileHeaderBytes] = {};
  std::memcpy(header, kTokenFileMagic, 8);
  put_u32(header + 8, identity ? 2 : 1);
  put_u32(header + 12, width);
  put_u64(header + 16, ids.size());
  put_u32(header + 24, static_cast<uint32_t>(vocab_size));
  put_u32(header + 28, crc32c(0, payload.data(), payload.size()));
  AtomicFileWriter writer(path);
  writer.write(header, sizeof(header));
  writer.write(payload.data(), payload.size());
  if (identity) {
    const std::string json = identity_json(*identity);
    unsigned char trailer[8];
    put_u32(trailer, static_cast<uint32_t>(json.size()));
    put_u32(trailer + 4, crc32c(json));
    writer.write(trailer, sizeof(trailer));
    writer.write(json.data(), json.size());
  }
  writer.commit();
}

struct TokenFile::Impl {
  fs::path path;
  io_detail::MappedFile file;
  const std::byte* ids = nullptr;
  int64_t count = 0;
  int64_t vocab = 0;
  int width = 0;
  int version = 1;
  std::optional<TokenizerIdentity> tokenizer;

  [[noreturn]] void fail(const std::string& message) const {
    throw IoError("io", "token file " + io_detail::quoted(path) + ": " + message);
  }

  int32_t load(int64_t i) const {
    const std::byte* p = ids + i * width;
    return width == 2
               ? static_cast<int32_t>(static_cast<uint8_t>(p[0]) | static_cast<uint8_t>(p[1]) << 8)
               : static_cast<int32_t>(get_u32(p));
  }
};

TokenFile::TokenFile(const fs::path& path) : impl_(new Impl) {
  Impl& m = *impl_;
  m.path = path;
  m.file = io_detail::MappedFile(path);
  const std::span<const std::byte> b = m.file.bytes();
  if (b.empty()) m.fail(std::string("is empty (0 bytes), not a token file; ") + kPrepareHint);
  const size_t magic_seen = b.size() < 8 ? b.size() : 8;
  if (std::memcmp(b.data(), kTokenFileMagic, magic_seen) != 0) {
    m.fail(std::string("not an nnkit token file (wrong magic; expected \"NNKTOK01\"); ") +
           kPrepareHint);
  }
  if (b.size() < kTokenFileHeaderBytes) {
    m.fail("truncated: the header needs " + std::to_string(kTokenFileHeaderBytes) +
           " bytes, the file has " + std::to_string(b.size()) + "; " + kPrepareHint + " again");
  }
  const uint32_t version = get_u32(b.data() + 8);
  if (version != 1 && version != 2) {
    m.fail("format version " + std::to_string(version) + " is not supported (this nnkit reads " +
           "version " + std::to_string(kTokenFileVersion) + "); " + kPrepareHint + " again");
  }
  const uint32_t width = get_u32(b.data() + 12);
  if (width != 2 && width != 4) {
    m.fail("bytes per id is " + std::to_string(width) + " (must be 2 or 4); the file is corrupt");
  }
  const uint64_t count = get_u64(b.data() + 16);
  const uint32_t vocab = get_u32(b.data() + 24);
  const uint32_t stored_crc = get_u32(b.data() + 28);
  if (vocab == 0) m.fail("vocab size is 0; the file is corrupt");
  uint64_t payload = 0;
  uint64_t expected = 0;
  if (count > static_cast<uint64_t>(INT64_MAX) ||
      __builtin_mul_overflow(count, uint64_t{width}, &payload) ||
      __builtin_add_overflow(payload, uint64_t{kTokenFileHeaderBytes}, &expected)) {
    m.fail("token count " + std::to_string(count) + " is impossible; the file is corrupt");
  }
  // Version 2: the tokenizer identity follows the payload (u32 length, u32 CRC-32C, JSON).
  uint32_t identity_bytes = 0;
  if (version == 2 && b.size() >= expected && b.size() - expected >= 8) {
    identity_bytes = get_u32(b.data() + expected);
    if (identity_bytes > kTokenFileMaxIdentityBytes) {
      m.fail("the tokenizer record is " + std::to_string(identity_bytes) + " bytes (at most " +
             std::to_string(kTokenFileMaxIdentityBytes) + "); the file is corrupt; " +
             kPrepareHint + " again");
    }
  }
  if (version == 2) expected += 8 + identity_bytes;
  if (expected != b.size()) {
    m.fail(std::string(expected > b.size() ? "truncated" : "has trailing bytes") + ": expected " +
           std::to_string(expected) + " bytes (32-byte header + " + std::to_string(count) +
           " tokens x " + std::to_string(width) + " bytes" +
           (version == 2 ? " + " + std::to_string(8 + identity_bytes) + "-byte tokenizer record"
                         : std::string()) +
           "), found " + std::to_string(b.size()) + "; " + kPrepareHint + " again");
  }
  const uint32_t actual_crc = crc32c(0, b.data() + kTokenFileHeaderBytes, payload);
  if (actual_crc != stored_crc) {
    m.fail("checksum mismatch (stored " + hex32(stored_crc) + ", computed " + hex32(actual_crc) +
           "); the file is corrupt; " + kPrepareHint + " again");
  }
  if (version == 2) {
    const std::byte* record = b.data() + kTokenFileHeaderBytes + payload;
    const std::string json(reinterpret_cast<const char*>(record + 8), identity_bytes);
    if (crc32c(json) != get_u32(record + 4)) {
      m.fail("the tokenizer record's checksum does not match; the file is corrupt; " +
             std::string(kPrepareHint) + " again");
    }
    const nlohmann::json j = nlohmann::json::parse(json, nullptr, false);
    TokenizerIdentity t;
    const bool ok = j.is_object() && j.contains("kind") && j["kind"].is_string() &&
                    j.contains("name") && j["name"].is_string() && j.contains("model_hash") &&
                    j["model_hash"].is_string() && j.contains("vocab_size") &&
                    j["vocab_size"].is_number_integer();
    if (!ok) {
      m.fail(
          "the tokenizer record is not {kind, name, model_hash, vocab_size} JSON; the file "
          "is corrupt; " +
          std::string(kPrepareHint) + " again");
    }
    t.kind = j["kind"].get<std::string>();
    t.name = j["name"].get<std::string>();
    t.model_hash = j["model_hash"].get<std::string>();
    t.vocab_size = j["vocab_size"].get<int64_t>();
    m.tokenizer = std::move(t);
  }
  m.version = static_cast<int>(version);
  m.ids = b.data() + kTokenFileHeaderBytes;
  m.count = static_cast<int64_t>(count);
  m.vocab = vocab;
  m.width = static_cast<int>(width);
  for (int64_t i = 0; i < m.count; ++i) {
    const auto id = static_cast<uint32_t>(m.load(i));
    if (id >= vocab) {
      m.fail("token " + std::to_string(i) + " has id " + std::to_string(id) +
             ", not below the vocab size " + std::to_string(vocab) + "; the file is corrupt");
    }
  }
}

TokenFile::~TokenFile() = default;
TokenFile::TokenFile(TokenFile&&) noexcept = default;
TokenFile& TokenFile::operator=(TokenFile&&) noexcept = default;

const fs::path& TokenFile::path() const {
  return impl_->path;
}
int64_t TokenFile::size() const {
  return impl_->count;
}
int64_t TokenFile::vocab_size() const {
  return impl_->vocab;
}
int TokenFile::bytes_per_id() const {
  return impl_->width;
}
int TokenFile::format_version() const {
  return impl_->version;
}
const std::optional<TokenizerIdentity>& TokenFile::tokenizer() const {
  return impl_->tokenizer;
}

int32_t TokenFile::at(int64_t i) const {
  if (i < 0 || i >= impl_->count) {
    impl_->fail("index " + std::to_string(i) + " is outside [0, " + std::to_string(impl_->count) +
                ")");
  }
  return impl_->load(i);
}

void TokenFile::read(int64_t begin, int64_t count, int32_t* out) const {
  if (begin < 0 || count < 0 || begin > impl_->count || count > impl_->count - begin) {
    impl_->fail("range [" + std::to_string(begin) + ", " + std::to_string(begin) + " + " +
                std::to_string(count) + ") is outside [0, " + std::to_string(impl_->count) + ")");
  }
  for (int64_t i = 0; i < count; ++i) out[i] = impl_->load(begin + i);
}

}  // namespace nnkit
