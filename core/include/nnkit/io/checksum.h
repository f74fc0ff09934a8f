// Purpose: CRC-32C (Castagnoli polynomial, as used by iSCSI, ext4 and LevelDB) for file payloads,
// computed in software (slicing-by-8 tables) so results never depend on the CPU.
// Thread-safety: pure functions. Ownership: none.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "nnkit/export.h"

namespace nnkit {

// Extends `crc` (the value returned for the preceding bytes; 0 to start) with n bytes at `data`:
//   crc32c(crc32c(0, a, na), b, nb) == crc32c(0, ab, na + nb).
// crc32c(0, "123456789", 9) == 0xE3069283.
NNKIT_API uint32_t crc32c(uint32_t crc, const void* data, size_t n);

inline uint32_t crc32c(std::string_view bytes) {
  return crc32c(0, bytes.data(), bytes.size());
}

// Eight lower-case hex digits: 0xE3069283 -> "e3069283". For messages and manifests.
NNKIT_API std::string hex32(uint32_t value);

}  // namespace nnkit
