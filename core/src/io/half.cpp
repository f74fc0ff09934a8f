// Purpose: bulk forms of the conversions in nnkit/io/half.h. Sources may be unaligned (they often
// point into a memory-mapped file), so elements are loaded with memcpy.
#include "nnkit/io/half.h"

#include <cstring>

namespace nnkit {
namespace {

template <typename In, typename Out, typename Fn>
void convert(const void* src, Out* dst, size_t n, Fn fn) {
  const auto* p = static_cast<const unsigned char*>(src);
  for (size_t i = 0; i < n; ++i) {
    In v;
    std::memcpy(&v, p + i * sizeof(In), sizeof(In));
    dst[i] = fn(v);
  }
}

}  // namespace

void bf16_to_f32(const void* src, float* dst, size_t n) {
  convert<uint16_t>(src, dst, n, [](uint16_t h) { return bf16_to_f32(h); });
}
void f16_to_f32(const void* src, float* dst, size_t n) {
  convert<uint16_t>(src, dst, n, [](uint16_t h) { return f16_to_f32(h); });
}
void f32_to_bf16(const void* src, uint16_t* dst, size_t n) {
  convert<float>(src, dst, n, [](float f) { return f32_to_bf16(f); });
}
void f32_to_f16(const void* src, uint16_t* dst, size_t n) {
  convert<float>(src, dst, n, [](float f) { return f32_to_f16(f); });
}

}  // namespace nnkit
