// Purpose: see plugin_record.h. SHA-256 is written here from FIPS 180-4 (no crypto dependency
// for one file hash per plugin per run).
#include "nnkit/plugin_record.h"

#include <array>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "nnkit/error.h"
#include "nnkit/io/atomic_file.h"

namespace nnkit {

namespace {

namespace fs = std::filesystem;

// FIPS 180-4, section 4.2.2: the first 32 bits of the fractional parts of the cube roots of the
// first 64 primes.
constexpr std::array<uint32_t, 64> kRound = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

uint32_t rotr(uint32_t x, int n) {
  return (x >> n) | (x << (32 - n));
}

class Sha256 {
 public:
  void update(const unsigned char* data, size_t n) {
    bytes_ += n;
    while (n > 0) {
      const size_t take = std::min(n, size_t{64} - fill_);
      std::copy(data, data + take, block_.begin() + static_cast<std::ptrdiff_t>(fill_));
      fill_ += take, data += take, n -= take;
      if (fill_ == 64) compress(), fill_ = 0;
    }
  }
  std::string hex() {
    // Padding (5.1.1): a 1 bit, zeros to 56 mod 64 bytes, the message length in bits (64 bits).
    const uint64_t bits = bytes_ * 8;
    const unsigned char one = 0x80, zero = 0;
    update(&one, 1);
    while (fill_ != 56) update(&zero, 1);
    unsigned char length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(bits >> (56 - 8 * i));
    update(length, 8);
    std::string out;
    char buffer[9];
    for (uint32_t h : state_) {
      std::snprintf(buffer, sizeof(buffer), "%08x", h);
      out += buffer;
    }
    return out;
  }

 private:
  void compress() {
    uint32_t w[64];
    for (int t = 0; t < 16; ++t) {
      w[t] = uint32_t(block_[4 * t]) << 24 | uint32_t(block_[4 * t + 1]) << 16 |
             uint32_t(block_[4 * t + 2]) << 8 | uint32_t(block_[4 * t + 3]);
    }
    for (int t = 16; t < 64; ++t) {
      const uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
      const uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
      w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    uint32_t a = state_[0], b = state_[1], c = state_[2], d = state_[3], e = state_[4],
             f = state_[5], g = state_[6], h = state_[7];
    for (int t = 0; t < 64; ++t) {
      const uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) +
                          kRound[static_cast<size_t>(t)] + w[t];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    const uint32_t add[8] = {a, b, c, d, e, f, g, h};
    for (int i = 0; i < 8; ++i) state_[static_cast<size_t>(i)] += add[i];
  }

  // Initial hash value (5.3.3): square roots of the first 8 primes.
  std::array<uint32_t, 8> state_ = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::array<unsigned char, 64> block_{};
  size_t fill_ = 0;
  uint64_t bytes_ = 0;
};

}  // namespace

std::string sha256_hex(const std::string& bytes) {
  Sha256 sha;
  sha.update(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  return sha.hex();
}

std::string sha256_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw IoError("plugins", "cannot read " + file.string() + " to hash it");
  Sha256 sha;
  std::array<char, 1 << 16> buffer;
  while (in.read(buffer.data(), buffer.size()) || in.gcount() > 0) {
    sha.update(reinterpret_cast<const unsigned char*>(buffer.data()),
               static_cast<size_t>(in.gcount()));
  }
  return sha.hex();
}

std::vector<PluginRecord> plugin_records(const RunConfig& config, const Registry& registry) {
  std::vector<const PluginChoice*> choices = {&config.model.norm, &config.model.attention};
  if (config.model.is_moe) {
    choices.push_back(&config.model.router);
    choices.push_back(&config.model.experts);
  } else {
    choices.push_back(&config.model.ffn);
  }
  for (const PluginChoice* c :
       {&config.backend, &config.tokenizer, &config.train.optimizer, &config.train.schedule}) {
    choices.push_back(c);
  }
  for (const PluginChoice& d : config.decode) choices.push_back(&d);
  std::vector<PluginRecord> records;
  for (const PluginChoice* c : choices) {
    if (c->name.empty()) continue;
    const PluginInfo& info = registry.require(c->kind, c->name);
    bool seen = false;
    for (const PluginRecord& r : records)
      seen = seen || (r.kind == info.kind && r.name == info.name);
    if (seen) continue;
    records.push_back({info.kind, info.name, info.version, info.path, sha256_file(info.path)});
  }
  return records;
}

void write_plugin_records(const fs::path& run_dir, const std::vector<PluginRecord>& records) {
  nlohmann::json list = nlohmann::json::array();
  for (const PluginRecord& r : records) {
    list.push_back({{"id", r.id()},
                    {"kind", r.kind},
                    {"name", r.name},
                    {"version", r.version},
                    {"path", r.path},
                    {"sha256", r.sha256}});
  }
  write_file_atomic(run_dir / "plugins.json", nlohmann::json{{"plugins", list}}.dump(2) + "\n");
}

std::vector<PluginRecord> read_plugin_records(const fs::path& run_dir) {
  const fs::path file = run_dir / "plugins.json";
  std::error_code ec;
  if (!fs::exists(file, ec)) return {};
  std::vector<PluginRecord> records;
  try {
    const nlohmann::json doc = nlohmann::json::parse(read_file(file));
    for (const nlohmann::json& r : doc.at("plugins")) {
      records.push_back({r.at("kind").get<std::string>(), r.at("name").get<std::string>(),
                         r.at("version").get<std::string>(), r.at("path").get<std::string>(),
                         r.at("sha256").get<std::string>()});
    }
  } catch (const nlohmann::json::exception& e) {
    throw IoError("plugins", file.string() + " is not a plugin record: " + e.what());
  }
  return records;
}

std::vector<std::string> plugin_record_changes(const std::vector<PluginRecord>& before,
                                               const std::vector<PluginRecord>& now) {
  std::vector<std::string> changes;
  for (const PluginRecord& n : now) {
    for (const PluginRecord& b : before) {
      if (b.id() != n.id()) continue;
      if (b.path != n.path) {
        changes.push_back(n.id() + " now comes from " + n.path + " (the run started with " +
                          b.path + ")");
      } else if (b.sha256 != n.sha256) {
        changes.push_back(n.id() + ": " + n.path + " changed since the run started (SHA-256 " +
                          b.sha256.substr(0, 12) + "... then, " + n.sha256.substr(0, 12) +
                          "... now; version " + b.version + " then, " + n.version + " now)");
      }
    }
  }
  return changes;
}

}  // namespace nnkit
