// Purpose: the rotary frequency base^(-2i/D) of pair i, in double, on the host: one formula for
// rope.cu's kernels and attention_decode.cu's fused rotation, so both rotate by the same angles
// bit for bit. Owned by backend/cuda.
#pragma once

#include <cmath>
#include <cstdint>

namespace nnkit::cuda {

inline double rope_frequency(float base, int64_t pair, int64_t head_dim) {
  return std::pow(static_cast<double>(base), -2.0 * double(pair) / double(head_dim));
}

}  // namespace nnkit::cuda
