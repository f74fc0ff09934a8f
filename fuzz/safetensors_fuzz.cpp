// Purpose: libFuzzer target for the safetensors reader. Feeds arbitrary bytes to
// SafetensorsFile::from_bytes (the same parser the mmap path uses, minus the file) and, when a
// header is accepted, touches every tensor's bytes so AddressSanitizer sees any span that escapes
// the buffer. The only acceptable failure is a thrown nnkit::IoError.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "nnkit/error.h"
#include "nnkit/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const nnkit::SafetensorsFile file = nnkit::SafetensorsFile::from_bytes(
        std::string_view(reinterpret_cast<const char*>(data), size), "fuzz-input");
    unsigned checksum = 0;
    for (const std::string& name : file.names()) {
      const nnkit::TensorInfo& info = file.info(name);
      const auto bytes = file.bytes(name);
      if (bytes.size() != info.nbytes()) __builtin_trap();
      for (std::byte b : bytes) checksum += static_cast<unsigned>(b);
    }
    for (const auto& [key, value] : file.metadata()) checksum += key.size() + value.size();
    volatile unsigned sink = checksum;  // keep the reads
    (void)sink;
  } catch (const nnkit::IoError&) {
    // A clean rejection.
  }
  return 0;
}
