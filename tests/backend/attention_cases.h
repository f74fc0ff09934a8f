// Purpose: the attention geometries every backend's tests run (tests/backend for the CPU against a
// double reference, tests/backend_cuda for the GPU against the CPU): MHA, GQA, MQA, causal masks
// across query blocks, KV-cache offsets with spare capacity, kv_start, rows with no visible key,
// and queries past kv_len. Owned by the backend tests; header-only.
#pragma once

#include <cmath>
#include <cstdint>
#include <ostream>
#include <vector>

#include "nnkit/backend.h"

namespace nnkit::test {

struct AttentionCase {
  const char* name;
  AttentionShape shape;
  std::vector<int32_t> kv_start;       // empty = undefined tensor
  bool nan_in_spare_capacity = false;  // k/v rows at or past kv_len hold NaN (must not be read)
};

// gtest prints the case by name (test listings, ctest names, failure messages).
inline void PrintTo(const AttentionCase& c, std::ostream* os) {
  *os << c.name;
}

inline AttentionShape make_attention_shape(int64_t B, int64_t Tq, int64_t kv_len, int64_t cap,
                                           int64_t H, int64_t Hkv, int64_t D, int64_t q_offset) {
  AttentionShape s;
  s.batch = B;
  s.q_len = Tq;
  s.kv_len = kv_len;
  s.kv_capacity = cap;
  s.n_heads = H;
  s.n_kv_heads = Hkv;
  s.head_dim = D;
  s.q_offset = q_offset;
  s.scale = static_cast<float>(1.0 / std::sqrt(double(D)));
  return s;
}

inline std::vector<AttentionCase> common_attention_cases() {
  return {
      {"mha_two_query_blocks", make_attention_shape(2, 70, 70, 70, 2, 2, 8, 0), {}},
      {"gqa", make_attention_shape(2, 67, 67, 67, 4, 2, 16, 0), {}},
      {"mqa_odd_head_dim", make_attention_shape(1, 9, 9, 9, 3, 1, 5, 0), {}},
      {"cache_offset_spare_capacity", make_attention_shape(2, 3, 13, 20, 4, 2, 8, 10), {}},
      {"kv_start", make_attention_shape(2, 12, 12, 12, 2, 1, 4, 0), {0, 5}},
      {"decode_with_empty_row", make_attention_shape(3, 1, 7, 16, 2, 2, 6, 6), {0, 2, 7}},
      {"queries_past_kv_len", make_attention_shape(1, 70, 40, 80, 2, 1, 4, 5), {}},
  };
}

}  // namespace nnkit::test
