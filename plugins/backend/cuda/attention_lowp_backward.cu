// Purpose: backend/cuda attention backward for bf16/f16 on tensor cores: the dq kernel (per
// query tile), the dk/dv kernel (per key tile and chunk of the group's heads), the ordered sum of
// the chunks' partials and their launcher (strategy in attention_lowp.cuh, fragment layouts in
// attention_lowp_mma.cuh). delta = rowsum(dout * out) comes from attention_backward.cu.
// Owned by backend/cuda.
#include "attention_lowp.cuh"
#include "attention_lowp_mma.cuh"

namespace nnkit::cuda {

namespace {

constexpr int kDqRows = 64;    // folded query rows per dq block, 16 per warp
constexpr int kTileKeys = 64;  // keys per K/V tile (dq) and per dk/dv block (16 per warp)

// dk/dv: query positions per step; 32 at kD = 128 keeps the four 16 x kD accumulators
// (dk, dv) and the two 16 x kBQ score tiles in registers.
template <int kD>
constexpr int key_grad_query_rows() {
  return kD <= 64 ? 64 : 32;
}

// dq: Q and dO tiles plus two buffers each of K and V.
template <int kD>
constexpr size_t lowp_dq_shared_bytes() {
  return sizeof(uint16_t) * size_t(2 * kDqRows + 4 * kTileKeys) * lowp_ld<kD>();
}

// dk/dv: K and V tiles, two buffers each of Q and dO, and the two buffers' lse and delta.
template <int kD>
constexpr size_t lowp_key_grad_shared_bytes() {
  constexpr int kBQ = key_grad_query_rows<kD>();
  return sizeof(uint16_t) * size_t(2 * kTileKeys + 4 * kBQ) * lowp_ld<kD>() +
         sizeof(float) * 4 * kBQ;
}

// log2-domain lse of a row as the kernels use it: P = 2^(S scale log2(e) - lse2). A row that saw
// no key (lse -inf) gets +inf, so its P is 0 everywhere.
__device__ __forceinline__ float lse_log2(float lse) {
  return isinf(lse) ? INFINITY : lse * kLog2e;
}

// dq for one (batch, KV head, tile of 64 folded query rows), latest tiles first: over the key
// tiles the rows may see, S = Q K^T and dP = dO V^T, dS = P (dP - delta), dq += dS K.
template <typename T, int kD, int kBlocksPerSm>
__global__ void __launch_bounds__(kLowpThreads, kBlocksPerSm)
    lowp_attention_dq_kernel(const AttentionArgsOf<T> a) {
  constexpr int kLd = lowp_ld<kD>();
  constexpr int kDimSteps = kD / 16;
  constexpr int kKeyTiles = kTileKeys / 8;
  constexpr int kDimTiles = kD / 8;
  extern __shared__ uint4 lowp_shared[];
  T* q_tile = reinterpret_cast<T*>(lowp_shared);
  T* do_tile = q_tile + kDqRows * kLd;
  T* k_tiles = do_tile + kDqRows * kLd;  // [2][kTileKeys][kLd]
  T* v_tiles = k_tiles + 2 * kTileKeys * kLd;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int quad_row = lane / 4, quad_col = lane % 4;
  const int row_tiles = (a.rows + kDqRows - 1) / kDqRows;
  const int64_t heads_total = static_cast<int64_t>(a.batch) * a.kv_heads;
  const int tile = row_tiles - 1 - static_cast<int>(blockIdx.x / heads_total);
  const int b = static_cast<int>(blockIdx.x % heads_total / a.kv_heads);
  const int kvh = static_cast<int>(blockIdx.x % a.kv_heads);
  const int r0 = tile * kDqRows, r1 = min(r0 + kDqRows, a.rows);
  const int lo = first_key(a, b);
  const int hi = key_end(a, (r1 - 1) / a.group);
  const int key_tiles = hi > lo ? (hi - lo + kTileKeys - 1) / kTileKeys : 0;

  auto query_row = [&](int i) {
    return r0 + i < r1 ? query_offset(a, b, kvh, r0 + i) : int64_t{-1};
  };
  stage_tile_async<kD, kDqRows>(q_tile, a.q, a.dim, query_row);
  stage_tile_async<kD, kDqRows>(do_tile, a.dout, a.dim, query_row);
  auto stage_keys = [&](int n) {
    const int k0 = lo + n * kTileKeys;
    auto key_row = [&](int i) { return k0 + i < hi ? key_offset(a, b, kvh, k0 + i) : int64_t{-1}; };
    stage_tile_async<kD, kTileKeys>(k_tiles + (n & 1) * kTileKeys * kLd, a.k, a.dim, key_row);
    stage_tile_async<kD, kTileKeys>(v_tiles + (n & 1) * kTileKeys * kLd, a.v, a.dim, key_row);
  };
  if (key_tiles > 0) stage_keys(0);
  cp_async_commit();

  int limit[2];
  float row_lse2[2], row_delta[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = r0 + warp * 16 + quad_row + 8 * h;
    limit[h] = lo;
    row_lse2[h] = INFINITY;
    row_delta[h] = 0.0f;
    if (r < r1) {
      const int64_t index = head_row_index(a, b, kvh, r);
      limit[h] = min(key_end(a, r / a.group), hi);
      row_lse2[h] = lse_log2(a.lse[index]);
      row_delta[h] = a.delta[index];
    }
  }
  const int warp_first_limit = warp_min_int(min(limit[0], limit[1]));
  const int warp_last_limit = warp_max_int(max(limit[0], limit[1]));
  const float scale_log2 = a.scale * kLog2e;

  float dq[kDimTiles][4];
#pragma unroll
  for (int d = 0; d < kDimTiles; ++d) dq[d][0] = dq[d][1] = dq[d][2] = dq[d][3] = 0.0f;

  for (int n = 0; n < key_tiles; ++n) {
    const int k0 = lo + n * kTileKeys;
    if (n + 1 < key_tiles) stage_keys(n + 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* k_tile = k_tiles + (n & 1) * kTileKeys * kLd;
    const T* v_tile = v_tiles + (n & 1) * kTileKeys * kLd;
    if (k0 < warp_last_limit) {
      float s[kKeyTiles][4], dp[kKeyTiles][4];
#pragma unroll
      for (int j = 0; j < kKeyTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.0f;
      }
#pragma unroll
      for (int ks = 0; ks < kDimSteps; ++ks) {
        uint32_t qa[4], da[4];
        load_a_fragment<kLd>(qa, q_tile, warp * 16, ks * 16, lane);
        load_a_fragment<kLd>(da, do_tile, warp * 16, ks * 16, lane);
#pragma unroll
        for (int np = 0; np < kKeyTiles / 2; ++np) {
          uint32_t kb[4], vb[4];
          load_b_fragments_of_rows<kLd>(kb, k_tile, np * 16, ks * 16, lane);
          mma_16x8x16<T>(s[2 * np], qa, kb[0], kb[1]);
          mma_16x8x16<T>(s[2 * np + 1], qa, kb[2], kb[3]);
          load_b_fragments_of_rows<kLd>(vb, v_tile, np * 16, ks * 16, lane);
          mma_16x8x16<T>(dp[2 * np], da, vb[0], vb[1]);
          mma_16x8x16<T>(dp[2 * np + 1], da, vb[2], vb[3]);
        }
      }
      const bool masked = k0 + kTileKeys > warp_first_limit;
#pragma unroll
      for (int j = 0; j < kKeyTiles; ++j) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float p = fast_exp2(fmaf(s[j][2 * h + e], scale_log2, -row_lse2[h]));
            if (masked && k0 + j * 8 + quad_col * 2 + e >= limit[h]) p = 0.0f;
            s[j][2 * h + e] = p * (dp[j][2 * h + e] - row_delta[h]);  // dS
          }
        }
      }
#pragma unroll
      for (int kk = 0; kk < kTileKeys / 16; ++kk) {
        uint32_t ds_frag[4];
        a_fragment_from_c<T>(ds_frag, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int d2 = 0; d2 < kDimTiles / 2; ++d2) {
          uint32_t kb[4];
          load_b_fragments_of_columns<kLd>(kb, k_tile, kk * 16, d2 * 16, lane);
          mma_16x8x16<T>(dq[2 * d2], ds_frag, kb[0], kb[1]);
          mma_16x8x16<T>(dq[2 * d2 + 1], ds_frag, kb[2], kb[3]);
        }
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = r0 + warp * 16 + quad_row + 8 * h;
    if (r >= r1) continue;
    T* dst = a.dq + query_offset(a, b, kvh, r);
#pragma unroll
    for (int d = 0; d < kDimTiles; ++d) {
      const int c = d * 8 + quad_col * 2;
      if (c < a.dim) store_pair<T>(dst + c, dq[d][2 * h] * a.scale, dq[d][2 * h + 1] * a.scale);
    }
  }
}

// dk, dv for one (batch, KV head, tile of 64 keys of the capacity, chunk of the group's heads),
// earliest key tiles (the most query rows) first. Over the chunk's heads in order and, per head,
// the query positions that may see the tile in steps of kBQ: S^T = K Q^T and dP^T = V dO^T,
// P^T = 2^(S^T scale log2(e) - lse2), dS^T = P^T (dP^T - delta), dv += P^T dO, dk += dS^T Q.
// With one chunk the results go to dk/dv; otherwise (f32, dk already scaled) to
// partial[chunk] (dk) and partial[chunks + chunk] (dv), each of `slice` floats laid out as dk.
// Keys nobody sees (before kv_start, at or past kv_len) get zeros.
template <typename T, int kD, int kBlocksPerSm>
__global__ void __launch_bounds__(kLowpThreads, kBlocksPerSm)
    lowp_attention_dkdv_kernel(const AttentionArgsOf<T> a, int chunks, int heads_per_chunk,
                               float* partial, int64_t slice) {
  constexpr int kBQ = key_grad_query_rows<kD>();
  constexpr int kLd = lowp_ld<kD>();
  constexpr int kDimSteps = kD / 16;
  constexpr int kQueryTiles = kBQ / 8;
  constexpr int kDimTiles = kD / 8;
  extern __shared__ uint4 lowp_shared[];
  T* k_tile = reinterpret_cast<T*>(lowp_shared);
  T* v_tile = k_tile + kTileKeys * kLd;
  T* q_tiles = v_tile + kTileKeys * kLd;                                   // [2][kBQ][kLd]
  T* do_tiles = q_tiles + 2 * kBQ * kLd;                                   // [2][kBQ][kLd]
  float* lse2_tiles = reinterpret_cast<float*>(do_tiles + 2 * kBQ * kLd);  // [2][kBQ]
  float* delta_tiles = lse2_tiles + 2 * kBQ;                               // [2][kBQ]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int quad_row = lane / 4, quad_col = lane % 4;
  const int64_t blocks_per_tile = static_cast<int64_t>(a.batch) * a.kv_heads * chunks;
  const int tile = static_cast<int>(blockIdx.x / blocks_per_tile);
  const int rest = static_cast<int>(blockIdx.x % blocks_per_tile);
  const int chunk = rest % chunks;
  const int kvh = rest / chunks % a.kv_heads;
  const int b = rest / chunks / a.kv_heads;
  const int j0 = tile * kTileKeys;
  const int visible_lo = max(j0, first_key(a, b));
  const int visible_hi = min(j0 + kTileKeys, a.kv_len);
  const int head_begin = chunk * heads_per_chunk;
  const int head_end = min(a.group, head_begin + heads_per_chunk);
  // The first query position that sees the tile's first visible key (earlier ones see none).
  const int64_t first_position = max(int64_t{0}, static_cast<int64_t>(visible_lo) - a.q_offset);
  const float scale_log2 = a.scale * kLog2e;

  float dk[kDimTiles][4], dv[kDimTiles][4];
#pragma unroll
  for (int d = 0; d < kDimTiles; ++d) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[d][e] = dv[d][e] = 0.0f;
  }

  if (visible_lo < visible_hi && first_position < a.q_len && head_begin < head_end) {
    const int first = static_cast<int>(first_position);
    const int position_steps = (a.q_len - first + kBQ - 1) / kBQ;
    const int steps = (head_end - head_begin) * position_steps;
    auto key_row = [&](int i) {
      const int j = j0 + i;
      return j >= visible_lo && j < visible_hi ? key_offset(a, b, kvh, j) : int64_t{-1};
    };
    stage_tile_async<kD, kTileKeys>(k_tile, a.k, a.dim, key_row);
    stage_tile_async<kD, kTileKeys>(v_tile, a.v, a.dim, key_row);
    // Step `step` covers head kvh * group + head_begin + step / position_steps, positions
    // first + (step % position_steps) * kBQ onward.
    auto stage_queries = [&](int step) {
      const int buffer = step & 1;
      const int h = kvh * a.group + head_begin + step / position_steps;
      const int t0 = first + step % position_steps * kBQ;
      auto query_row = [&](int i) {
        const int t = t0 + i;
        return t < a.q_len ? (static_cast<int64_t>(b) * a.q_len + t) * a.q_ld +
                                 static_cast<int64_t>(h) * a.dim
                           : int64_t{-1};
      };
      stage_tile_async<kD, kBQ>(q_tiles + buffer * kBQ * kLd, a.q, a.dim, query_row);
      stage_tile_async<kD, kBQ>(do_tiles + buffer * kBQ * kLd, a.dout, a.dim, query_row);
      if (threadIdx.x < kBQ) {
        const int t = t0 + threadIdx.x;
        float lse2 = INFINITY, delta = 0.0f;  // past the last position: P = 0
        if (t < a.q_len) {
          const int64_t index = (static_cast<int64_t>(b) * a.q_len + t) * a.heads + h;
          lse2 = lse_log2(a.lse[index]);
          delta = a.delta[index];
        }
        lse2_tiles[buffer * kBQ + threadIdx.x] = lse2;
        delta_tiles[buffer * kBQ + threadIdx.x] = delta;
      }
    };
    stage_queries(0);
    cp_async_commit();

    const int warp_key0 = j0 + warp * 16;
    const bool warp_has_keys = warp_key0 + 16 > visible_lo && warp_key0 < visible_hi;
    const bool edge_keys = warp_key0 < visible_lo || warp_key0 + 16 > visible_hi;
    for (int step = 0; step < steps; ++step) {
      if (step + 1 < steps) stage_queries(step + 1);
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();
      const int buffer = step & 1;
      const int64_t t0 = first + step % position_steps * kBQ;
      const T* q_tile = q_tiles + buffer * kBQ * kLd;
      const T* do_tile = do_tiles + buffer * kBQ * kLd;
      const float* lse2_tile = lse2_tiles + buffer * kBQ;
      const float* delta_tile = delta_tiles + buffer * kBQ;
      // Warp-uniform: the step's last position sees the warp's first key.
      if (warp_has_keys && warp_key0 <= a.q_offset + t0 + kBQ - 1) {
        const bool masked = edge_keys || warp_key0 + 15 > a.q_offset + t0;
        float s[kQueryTiles][4], dp[kQueryTiles][4];
#pragma unroll
        for (int j = 0; j < kQueryTiles; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.0f;
        }
#pragma unroll
        for (int ks = 0; ks < kDimSteps; ++ks) {
          uint32_t ka[4], va[4];
          load_a_fragment<kLd>(ka, k_tile, warp * 16, ks * 16, lane);
          load_a_fragment<kLd>(va, v_tile, warp * 16, ks * 16, lane);
#pragma unroll
          for (int np = 0; np < kQueryTiles / 2; ++np) {
            uint32_t qb[4], db[4];
            load_b_fragments_of_rows<kLd>(qb, q_tile, np * 16, ks * 16, lane);
            mma_16x8x16<T>(s[2 * np], ka, qb[0], qb[1]);
            mma_16x8x16<T>(s[2 * np + 1], ka, qb[2], qb[3]);
            load_b_fragments_of_rows<kLd>(db, do_tile, np * 16, ks * 16, lane);
            mma_16x8x16<T>(dp[2 * np], va, db[0], db[1]);
            mma_16x8x16<T>(dp[2 * np + 1], va, db[2], db[3]);
          }
        }
        // Rows of the fragments are keys, columns query positions: s becomes P^T, dp dS^T.
#pragma unroll
        for (int j = 0; j < kQueryTiles; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int column = j * 8 + quad_col * 2 + e;
            const float lse2 = lse2_tile[column], delta = delta_tile[column];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int key = warp_key0 + quad_row + 8 * h;
              float p = fast_exp2(fmaf(s[j][2 * h + e], scale_log2, -lse2));
              if (masked &&
                  !(key >= visible_lo && key < visible_hi && key <= a.q_offset + t0 + column)) {
                p = 0.0f;
              }
              s[j][2 * h + e] = p;
              dp[j][2 * h + e] = p * (dp[j][2 * h + e] - delta);
            }
          }
        }
#pragma unroll
        for (int kk = 0; kk < kBQ / 16; ++kk) {
          uint32_t p_frag[4], ds_frag[4];
          a_fragment_from_c<T>(p_frag, s[2 * kk], s[2 * kk + 1]);
          a_fragment_from_c<T>(ds_frag, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
          for (int d2 = 0; d2 < kDimTiles / 2; ++d2) {
            uint32_t ob[4], qb[4];
            load_b_fragments_of_columns<kLd>(ob, do_tile, kk * 16, d2 * 16, lane);
            mma_16x8x16<T>(dv[2 * d2], p_frag, ob[0], ob[1]);
            mma_16x8x16<T>(dv[2 * d2 + 1], p_frag, ob[2], ob[3]);
            load_b_fragments_of_columns<kLd>(qb, q_tile, kk * 16, d2 * 16, lane);
            mma_16x8x16<T>(dk[2 * d2], ds_frag, qb[0], qb[1]);
            mma_16x8x16<T>(dk[2 * d2 + 1], ds_frag, qb[2], qb[3]);
          }
        }
      }
      __syncthreads();
    }
    cp_async_wait<0>();
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int j = j0 + warp * 16 + quad_row + 8 * h;
    if (j >= a.kv_capacity) continue;
    const int64_t base = key_offset(a, b, kvh, j);
#pragma unroll
    for (int d = 0; d < kDimTiles; ++d) {
      const int c = d * 8 + quad_col * 2;
      if (c >= a.dim) continue;
      const float dk0 = dk[d][2 * h] * a.scale, dk1 = dk[d][2 * h + 1] * a.scale;
      if (chunks == 1) {
        store_pair<T>(a.dk + base + c, dk0, dk1);
        store_pair<T>(a.dv + base + c, dv[d][2 * h], dv[d][2 * h + 1]);
      } else {
        *reinterpret_cast<float2*>(partial + chunk * slice + base + c) = make_float2(dk0, dk1);
        *reinterpret_cast<float2*>(partial + (chunks + chunk) * slice + base + c) =
            make_float2(dv[d][2 * h], dv[d][2 * h + 1]);
      }
    }
  }
}

// dk[i] = sum over chunks in order of partial[chunk][i], dv likewise from partial[chunks + chunk];
// four elements per thread (slice is a multiple of 8: kv_ld is).
template <typename T>
__global__ void lowp_sum_key_grad_chunks_kernel(const float* __restrict__ partial, int chunks,
                                                int64_t slice, T* dk, T* dv) {
  const int64_t quads = slice / 4;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < quads;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float4 sum_dk = make_float4(0.0f, 0.0f, 0.0f, 0.0f), sum_dv = sum_dk;
    for (int c = 0; c < chunks; ++c) {
      const float4 x = reinterpret_cast<const float4*>(partial + c * slice)[q];
      const float4 y = reinterpret_cast<const float4*>(partial + (chunks + c) * slice)[q];
      sum_dk.x += x.x;
      sum_dk.y += x.y;
      sum_dk.z += x.z;
      sum_dk.w += x.w;
      sum_dv.x += y.x;
      sum_dv.y += y.y;
      sum_dv.z += y.z;
      sum_dv.w += y.w;
    }
    store_pair<T>(dk + 4 * q, sum_dk.x, sum_dk.y);
    store_pair<T>(dk + 4 * q + 2, sum_dk.z, sum_dk.w);
    store_pair<T>(dv + 4 * q, sum_dv.x, sum_dv.y);
    store_pair<T>(dv + 4 * q + 2, sum_dv.z, sum_dv.w);
  }
}

// kBlocksPerSm: the register budget both kernels are compiled for. At head_dim 64 three blocks
// fit (168 registers without spilling; 3 x 55 KB of shared memory): on an H200 at B=8 T=2048
// H=12 Hkv=1 causal bf16 the backward takes 0.845 ms against 0.949 ms with two (of which dq
// ~0.31 ms, dk/dv ~0.48 ms, delta and the chunk sum ~0.05 ms).
template <typename T, int kD, int kBlocksPerSm>
void launch_lowp_backward(CudaBackend& backend, const char* op, const AttentionArgsOf<T>& a) {
  launch_blocks(op, lowp_attention_dq_kernel<T, kD, kBlocksPerSm>,
                static_cast<int64_t>(a.batch) * a.kv_heads * ceil_div(a.rows, kDqRows),
                kLowpThreads, lowp_dq_shared_bytes<kD>(), backend, a);
  if (a.kv_capacity == 0) return;

  // Enough blocks for a few per SM: split the group's heads into chunks when the key tiles
  // alone are too few (MQA). Each chunk costs one f32 write and read of dk and dv. (Measured at
  // the shape above: 2 blocks per SM wanted 0.953 ms, 4: 0.845 ms, 16: 0.838 ms.)
  const int64_t key_blocks =
      static_cast<int64_t>(a.batch) * a.kv_heads * ceil_div(a.kv_capacity, kTileKeys);
  const int64_t wanted = 4 * int64_t{backend.limits().sms};
  int64_t chunks = std::min<int64_t>(a.group, std::max<int64_t>(1, ceil_div(wanted, key_blocks)));
  const int64_t heads_per_chunk = ceil_div(a.group, chunks);
  chunks = ceil_div(a.group, heads_per_chunk);
  const int64_t slice = static_cast<int64_t>(a.batch) * a.kv_capacity * a.kv_ld;
  Tensor partials;
  float* partial = nullptr;
  if (chunks > 1) {
    partials = backend.scratch(static_cast<size_t>(2 * chunks * slice) * sizeof(float));
    partial = ptr<float>(partials);
  }
  launch_blocks(op, lowp_attention_dkdv_kernel<T, kD, kBlocksPerSm>, key_blocks * chunks,
                kLowpThreads, lowp_key_grad_shared_bytes<kD>(), backend, a,
                static_cast<int>(chunks), static_cast<int>(heads_per_chunk), partial, slice);
  if (chunks > 1) {
    constexpr int kSumThreads = 256;
    const int64_t blocks = std::min<int64_t>(ceil_div(slice / 4, kSumThreads), 65535 * 8);
    launch_blocks(op, lowp_sum_key_grad_chunks_kernel<T>, blocks, kSumThreads, 0, backend,
                  static_cast<const float*>(partial), static_cast<int>(chunks), slice, a.dk, a.dv);
  }
}

}  // namespace

template <typename T>
void attention_backward_tensor_cores(CudaBackend& backend, const char* op,
                                     const AttentionArgsOf<T>& a) {
  if (a.dim <= 64) {
    launch_lowp_backward<T, 64, 3>(backend, op, a);
  } else {
    launch_lowp_backward<T, 128, 2>(backend, op, a);
  }
}

template void attention_backward_tensor_cores<__nv_bfloat16>(CudaBackend&, const char*,
                                                             const AttentionArgsOf<__nv_bfloat16>&);
template void attention_backward_tensor_cores<__half>(CudaBackend&, const char*,
                                                      const AttentionArgsOf<__half>&);

}  // namespace nnkit::cuda
