// Purpose: backend/cuda attention forward for bf16/f16 on tensor cores: the flash-attention
// kernel and its launcher (strategy in attention_lowp.cuh, fragment layouts in
// attention_lowp_mma.cuh). Owned by backend/cuda.
#include "attention_lowp.cuh"
#include "attention_lowp_mma.cuh"

namespace nnkit::cuda {

namespace {

constexpr int kForwardKeys = 64;  // keys per K/V tile

// Rows per warp: kGroups groups of 16 (the m of one mma). With two groups every K/V fragment
// read from shared memory feeds two products, halving the shared-memory traffic per product
// (the forward's limit at head_dim 64); at 128 the second group's registers do not fit.
template <int kGroups>
constexpr int forward_block_rows() {
  return 16 * kGroups * kLowpWarps;
}

// Q tile plus two buffers each of K and V.
template <int kD, int kGroups>
constexpr size_t lowp_forward_shared_bytes() {
  return sizeof(uint16_t) * size_t(forward_block_rows<kGroups>() + 4 * kForwardKeys) *
         lowp_ld<kD>();
}

// One block per (batch, KV head, tile of 64 kGroups folded query rows); latest tiles (the most
// keys under the causal mask) first, as in the f32 kernel. Warp w owns rows 16 kGroups w onward
// (16 per group); it keeps their Q fragments, running max and sum (log2 domain: scores are
// scaled by scale * log2(e) so exp is one ex2) and their 16 x kD outputs in registers; each
// thread holds two rows of each group (quad_row and quad_row + 8).
template <typename T, int kD, int kGroups>
__global__ void __launch_bounds__(kLowpThreads, kGroups == 1 && kD <= 64 ? 4 : 2)
    lowp_attention_forward_kernel(const AttentionArgsOf<T> a) {
  constexpr int kRows = forward_block_rows<kGroups>();
  constexpr int kLd = lowp_ld<kD>();
  constexpr int kDimSteps = kD / 16;           // k-steps of S = Q K^T
  constexpr int kKeyTiles = kForwardKeys / 8;  // 8-key column tiles of S
  constexpr int kDimTiles = kD / 8;            // 8-column tiles of O
  extern __shared__ uint4 lowp_shared[];
  T* q_tile = reinterpret_cast<T*>(lowp_shared);
  T* k_tiles = q_tile + kRows * kLd;  // [2][kForwardKeys][kLd]
  T* v_tiles = k_tiles + 2 * kForwardKeys * kLd;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int quad_row = lane / 4, quad_col = lane % 4;
  const int row_tiles = (a.rows + kRows - 1) / kRows;
  const int64_t heads_total = static_cast<int64_t>(a.batch) * a.kv_heads;
  const int tile = row_tiles - 1 - static_cast<int>(blockIdx.x / heads_total);
  const int b = static_cast<int>(blockIdx.x % heads_total / a.kv_heads);
  const int kvh = static_cast<int>(blockIdx.x % a.kv_heads);
  const int r0 = tile * kRows, r1 = min(r0 + kRows, a.rows);
  const int warp_row0 = warp * 16 * kGroups;  // within the tile
  const int lo = first_key(a, b);
  const int hi = key_end(a, (r1 - 1) / a.group);  // may be <= lo: no key for anyone
  const int key_tiles = hi > lo ? (hi - lo + kForwardKeys - 1) / kForwardKeys : 0;

  stage_tile_async<kD, kRows>(q_tile, a.q, a.dim, [&](int i) {
    return r0 + i < r1 ? query_offset(a, b, kvh, r0 + i) : int64_t{-1};
  });
  auto stage_keys = [&](int n) {
    const int k0 = lo + n * kForwardKeys;
    auto key_row = [&](int i) { return k0 + i < hi ? key_offset(a, b, kvh, k0 + i) : int64_t{-1}; };
    stage_tile_async<kD, kForwardKeys>(k_tiles + (n & 1) * kForwardKeys * kLd, a.k, a.dim, key_row);
    stage_tile_async<kD, kForwardKeys>(v_tiles + (n & 1) * kForwardKeys * kLd, a.v, a.dim, key_row);
  };
  if (key_tiles > 0) stage_keys(0);
  cp_async_commit();

  int limit[kGroups][2];  // one past the last key each of this thread's rows may use
  float running_max[kGroups][2], running_sum[kGroups][2];
  int fewest = INT_MAX, most = INT_MIN;
#pragma unroll
  for (int m = 0; m < kGroups; ++m) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = r0 + warp_row0 + 16 * m + quad_row + 8 * h;
      limit[m][h] = r < r1 ? min(key_end(a, r / a.group), hi) : lo;
      running_max[m][h] = -INFINITY;
      running_sum[m][h] = 0.0f;
      fewest = min(fewest, limit[m][h]);
      most = max(most, limit[m][h]);
    }
  }
  // Rows only grow in position, but the warp reduction also covers rows past the end (limit lo).
  const int warp_first_limit = warp_min_int(fewest);
  const int warp_last_limit = warp_max_int(most);
  const float scale_log2 = a.scale * kLog2e;

  float o[kGroups][kDimTiles][4];
#pragma unroll
  for (int m = 0; m < kGroups; ++m) {
#pragma unroll
    for (int d = 0; d < kDimTiles; ++d) o[m][d][0] = o[m][d][1] = o[m][d][2] = o[m][d][3] = 0.0f;
  }
  uint32_t q_frag[kGroups][kDimSteps][4];

  for (int n = 0; n < key_tiles; ++n) {
    const int k0 = lo + n * kForwardKeys;
    if (n + 1 < key_tiles) stage_keys(n + 1);  // into the buffer the previous step released
    cp_async_commit();
    cp_async_wait<1>();  // everything but the copy just started has landed
    __syncthreads();
    if (n == 0) {
#pragma unroll
      for (int m = 0; m < kGroups; ++m) {
#pragma unroll
        for (int ks = 0; ks < kDimSteps; ++ks) {
          load_a_fragment<kLd>(q_frag[m][ks], q_tile, warp_row0 + 16 * m, ks * 16, lane);
        }
      }
    }
    const T* k_tile = k_tiles + (n & 1) * kForwardKeys * kLd;
    const T* v_tile = v_tiles + (n & 1) * kForwardKeys * kLd;
    if (k0 < warp_last_limit) {  // warp-uniform: some row of the warp sees a key of this tile
      float s[kGroups][kKeyTiles][4];
#pragma unroll
      for (int m = 0; m < kGroups; ++m) {
#pragma unroll
        for (int j = 0; j < kKeyTiles; ++j)
          s[m][j][0] = s[m][j][1] = s[m][j][2] = s[m][j][3] = 0.0f;
      }
#pragma unroll
      for (int ks = 0; ks < kDimSteps; ++ks) {
#pragma unroll
        for (int np = 0; np < kKeyTiles / 2; ++np) {
          uint32_t kb[4];
          load_b_fragments_of_rows<kLd>(kb, k_tile, np * 16, ks * 16, lane);
#pragma unroll
          for (int m = 0; m < kGroups; ++m) {
            mma_16x8x16<T>(s[m][2 * np], q_frag[m][ks], kb[0], kb[1]);
            mma_16x8x16<T>(s[m][2 * np + 1], q_frag[m][ks], kb[2], kb[3]);
          }
        }
      }

      const bool masked = k0 + kForwardKeys > warp_first_limit;
#pragma unroll
      for (int m = 0; m < kGroups; ++m) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float tile_max = -INFINITY;
#pragma unroll
          for (int j = 0; j < kKeyTiles; ++j) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              float x = s[m][j][2 * h + e] * scale_log2;
              if (masked && k0 + j * 8 + quad_col * 2 + e >= limit[m][h]) x = -INFINITY;
              s[m][j][2 * h + e] = x;
              tile_max = fmaxf(tile_max, x);
            }
          }
          const float new_max = fmaxf(running_max[m][h], quad_max(tile_max));
          // A row that has seen no key yet keeps max -inf; exponentiate against 0 so it stays 0.
          const float reference = new_max == -INFINITY ? 0.0f : new_max;
          const float rescale = fast_exp2(running_max[m][h] - reference);
          running_max[m][h] = new_max;
          running_sum[m][h] *= rescale;
#pragma unroll
          for (int d = 0; d < kDimTiles; ++d) {
            o[m][d][2 * h] *= rescale;
            o[m][d][2 * h + 1] *= rescale;
          }
#pragma unroll
          for (int j = 0; j < kKeyTiles; ++j) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float p = fast_exp2(s[m][j][2 * h + e] - reference);
              running_sum[m][h] += p;
              s[m][j][2 * h + e] = p;
            }
          }
        }
      }

      // O += P V, P rounded to T straight from the accumulators.
#pragma unroll
      for (int kk = 0; kk < kForwardKeys / 16; ++kk) {
        uint32_t p_frag[kGroups][4];
#pragma unroll
        for (int m = 0; m < kGroups; ++m) {
          a_fragment_from_c<T>(p_frag[m], s[m][2 * kk], s[m][2 * kk + 1]);
        }
#pragma unroll
        for (int dp = 0; dp < kDimTiles / 2; ++dp) {
          uint32_t vb[4];
          load_b_fragments_of_columns<kLd>(vb, v_tile, kk * 16, dp * 16, lane);
#pragma unroll
          for (int m = 0; m < kGroups; ++m) {
            mma_16x8x16<T>(o[m][2 * dp], p_frag[m], vb[0], vb[1]);
            mma_16x8x16<T>(o[m][2 * dp + 1], p_frag[m], vb[2], vb[3]);
          }
        }
      }
    }
    __syncthreads();  // every warp is done with this buffer before it is refilled
  }
  cp_async_wait<0>();  // the Q copy is still in flight when no key tile was read

  float sum[kGroups][2];
#pragma unroll
  for (int m = 0; m < kGroups; ++m) {
#pragma unroll
    for (int h = 0; h < 2; ++h) sum[m][h] = quad_sum(running_sum[m][h]);  // every lane takes part
  }
#pragma unroll
  for (int m = 0; m < kGroups; ++m) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = r0 + warp_row0 + 16 * m + quad_row + 8 * h;
      if (r >= r1) continue;
      const bool seen = sum[m][h] > 0.0f;  // false: the row sees no key (output 0, lse -inf)
      const float inv = seen ? 1.0f / sum[m][h] : 0.0f;
      T* out = a.out + query_offset(a, b, kvh, r);
#pragma unroll
      for (int d = 0; d < kDimTiles; ++d) {
        const int c = d * 8 + quad_col * 2;
        if (c < a.dim) store_pair<T>(out + c, o[m][d][2 * h] * inv, o[m][d][2 * h + 1] * inv);
      }
      if (quad_col == 0) {
        a.lse[head_row_index(a, b, kvh, r)] =
            seen ? running_max[m][h] * kLn2 + logf(sum[m][h]) : -INFINITY;
      }
    }
  }
}

template <typename T, int kD, int kGroups>
void launch_lowp_forward(CudaBackend& backend, const char* op, const AttentionArgsOf<T>& a) {
  const int64_t blocks =
      static_cast<int64_t>(a.batch) * a.kv_heads * ceil_div(a.rows, forward_block_rows<kGroups>());
  launch_blocks(op, lowp_attention_forward_kernel<T, kD, kGroups>, blocks, kLowpThreads,
                lowp_forward_shared_bytes<kD, kGroups>(), backend, a);
}

}  // namespace

template <typename T>
void attention_forward_tensor_cores(CudaBackend& backend, const char* op,
                                    const AttentionArgsOf<T>& a) {
  // Two row groups per warp at head_dim <= 64 once there are more rows than one 64-row tile
  // (short prefills keep the smaller tile: more blocks, fewer padded rows). Measured on an H200
  // at B=8 T=2048 H=12 Hkv=1 D=64 causal bf16: 0.229 ms against 0.242 ms with one group.
  if (a.dim <= 64 && a.rows > forward_block_rows<1>()) {
    launch_lowp_forward<T, 64, 2>(backend, op, a);
  } else if (a.dim <= 64) {
    launch_lowp_forward<T, 64, 1>(backend, op, a);
  } else {
    launch_lowp_forward<T, 128, 1>(backend, op, a);
  }
}

template void attention_forward_tensor_cores<__nv_bfloat16>(CudaBackend&, const char*,
                                                            const AttentionArgsOf<__nv_bfloat16>&);
template void attention_forward_tensor_cores<__half>(CudaBackend&, const char*,
                                                     const AttentionArgsOf<__half>&);

}  // namespace nnkit::cuda
