// Purpose: the libFuzzer entry of one fuzz target; NNKIT_FUZZ_ENTRY names the parsers.h
// function it feeds (set per target in fuzz/CMakeLists.txt).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "parsers.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  NNKIT_FUZZ_ENTRY(std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
