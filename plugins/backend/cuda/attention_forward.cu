// Purpose: backend/cuda attention forward: the online-softmax kernel, the merge of key splits
// and their launcher (strategy in attention_common.cuh), and the dispatch on the element type:
// f32 runs here; bf16/f16 run on tensor cores (attention_lowp_forward.cu) where the shape suits
// them and through this file's kernels, instantiated for the 16-bit type, elsewhere (decoding,
// head dims the tensor-core kernels do not take). Owned by backend/cuda.
#include "attention_common.cuh"
#include "attention_lowp.cuh"

namespace nnkit::cuda {

namespace {

// ---- kernels ----------------------------------------------------------------------------------

// One block per (batch, KV head, tile of kBQ folded query rows, key split). The tile is the
// outermost part of the block index, latest tiles (the most keys under the causal mask) first, so
// the heavy blocks start early and the light ones fill in behind them.
template <typename T, int kD, int kBQ, int kBK>
__global__ void __launch_bounds__(kAttentionThreads,
                                  blocks_per_sm(ForwardTiles<kD, kBQ, kBK>::kSharedBytes))
    attention_forward_kernel(const AttentionArgsOf<T> a) {
  constexpr int kLd = tile_ld<kD>();
  constexpr int kRowsPer = kBQ / kGridSide;  // query rows per thread
  constexpr int kKeysPer = kBK / kGridSide;  // keys per thread per tile
  constexpr int kPLd = kBK + 4;
  using Cols = ColumnMap<kD>;
  extern __shared__ float4 shared_words[];
  float* q_tile = reinterpret_cast<float*>(shared_words);
  float* k_tile = q_tile + kBQ * kLd;
  float* v_tile = k_tile + kBK * kLd;
  float* p_tile = v_tile + kBK * kLd;

  const int tx = threadIdx.x % kGridSide, ty = threadIdx.x / kGridSide;
  const int row_tiles = (a.rows + kBQ - 1) / kBQ;
  const int64_t heads_total = static_cast<int64_t>(a.batch) * a.kv_heads;
  const int64_t rest = blockIdx.x / heads_total;
  const int b = static_cast<int>(blockIdx.x % heads_total / a.kv_heads);
  const int kvh = static_cast<int>(blockIdx.x % a.kv_heads);
  const int split = static_cast<int>(rest % a.splits);
  const int tile = row_tiles - 1 - static_cast<int>(rest / a.splits);
  const int r0 = tile * kBQ, r1 = min(r0 + kBQ, a.rows);

  // This block's keys: the split's chunk of [first_key, keys the last row may see).
  const int lo = first_key(a, b) + split * a.chunk;
  const int hi = static_cast<int>(min(static_cast<int64_t>(key_end(a, (r1 - 1) / a.group)),
                                      static_cast<int64_t>(lo) + a.chunk));

  stage_rows<kD, kBQ>(q_tile, a.q, a.dim, [&](int i) {
    return r0 + i < r1 ? query_offset(a, b, kvh, r0 + i) : int64_t{-1};
  });

  int limit[kRowsPer];  // one past the last key each of this thread's rows may use
  float row_max_so_far[kRowsPer], row_sum_part[kRowsPer];
  float acc[kRowsPer][Cols::kPerThread];
#pragma unroll
  for (int i = 0; i < kRowsPer; ++i) {
    const int r = r0 + ty + kGridSide * i;
    limit[i] = r < r1 ? min(key_end(a, r / a.group), hi) : lo;
    row_max_so_far[i] = -INFINITY;
    row_sum_part[i] = 0.0f;
#pragma unroll
    for (int n = 0; n < Cols::kPerThread; ++n) acc[i][n] = 0.0f;
  }

  for (int k0 = lo; k0 < hi; k0 += kBK) {
    __syncthreads();  // the previous step's readers of k/v/p tiles are done (and q is staged)
    auto key_row = [&](int i) { return k0 + i < hi ? key_offset(a, b, kvh, k0 + i) : int64_t{-1}; };
    stage_rows<kD, kBK>(k_tile, a.k, a.dim, key_row);
    stage_rows<kD, kBK>(v_tile, a.v, a.dim, key_row);
    __syncthreads();

    float s[kRowsPer][kKeysPer];
#pragma unroll
    for (int i = 0; i < kRowsPer; ++i) {
#pragma unroll
      for (int j = 0; j < kKeysPer; ++j) s[i][j] = 0.0f;
    }
    accumulate_row_dots<kD>(q_tile, ty, k_tile, tx, s);

#pragma unroll
    for (int i = 0; i < kRowsPer; ++i) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < kKeysPer; ++j) {
        const int key = k0 + tx + kGridSide * j;
        s[i][j] = key < limit[i] ? s[i][j] * a.scale : -INFINITY;
        tile_max = fmaxf(tile_max, s[i][j]);
      }
      const float new_max = fmaxf(row_max_so_far[i], row_max(tile_max));
      // A row that has seen no key yet keeps max -inf; exponentiate against 0 so it stays 0.
      const float reference = new_max == -INFINITY ? 0.0f : new_max;
      const float rescale = expf(row_max_so_far[i] - reference);
      row_max_so_far[i] = new_max;
      row_sum_part[i] *= rescale;
#pragma unroll
      for (int n = 0; n < Cols::kPerThread; ++n) acc[i][n] *= rescale;
#pragma unroll
      for (int j = 0; j < kKeysPer; ++j) {
        const float p = expf(s[i][j] - reference);
        row_sum_part[i] += p;
        p_tile[(ty + kGridSide * i) * kPLd + tx + kGridSide * j] = p;
      }
    }
    __syncthreads();
    accumulate_weighted_rows<kD, kRowsPer, kBK>(p_tile, ty, v_tile, tx, acc);
  }

#pragma unroll
  for (int i = 0; i < kRowsPer; ++i) {
    const int r = r0 + ty + kGridSide * i;
    const float sum = row_sum(row_sum_part[i]);  // every thread of the row takes part
    if (r >= r1) continue;
    if (a.splits == 1) {
      const bool seen = sum > 0.0f;  // false: the row sees no key (output 0, lse -inf)
      const float inv = seen ? 1.0f / sum : 0.0f;
      T* out = a.out + query_offset(a, b, kvh, r);
#pragma unroll
      for (int g = 0; g < Cols::kGroups; ++g) {
#pragma unroll
        for (int e = 0; e < Cols::kVec; ++e) {
          const int c = Cols::column(tx, g) + e;
          if (c < a.dim) out[c] = round_from_f32<T>(acc[i][g * Cols::kVec + e] * inv);
        }
      }
      if (tx == 0) {
        a.lse[head_row_index(a, b, kvh, r)] = seen ? row_max_so_far[i] + logf(sum) : -INFINITY;
      }
    } else {
      const int64_t slot =
          split * a.total_rows + (static_cast<int64_t>(b) * a.kv_heads + kvh) * a.rows + r;
      float* out = a.partial_out + slot * a.dim;
#pragma unroll
      for (int g = 0; g < Cols::kGroups; ++g) {
#pragma unroll
        for (int e = 0; e < Cols::kVec; ++e) {
          const int c = Cols::column(tx, g) + e;
          if (c < a.dim) out[c] = acc[i][g * Cols::kVec + e];
        }
      }
      if (tx == 0) a.partial_ml[slot] = make_float2(row_max_so_far[i], sum);
    }
  }
}

// Merges the key splits of the forward: one warp per folded row, splits summed in order.
template <typename T>
__global__ void attention_combine_splits_kernel(const AttentionArgsOf<T> a) {
  const int64_t id = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (id >= a.total_rows) return;
  const int r = static_cast<int>(id % a.rows);
  const int kvh = static_cast<int>((id / a.rows) % a.kv_heads);
  const int b = static_cast<int>(id / (static_cast<int64_t>(a.rows) * a.kv_heads));
  T* out = a.out + query_offset(a, b, kvh, r);
  float overall_max = -INFINITY;
  for (int s = 0; s < a.splits; ++s) {
    overall_max = fmaxf(overall_max, a.partial_ml[s * a.total_rows + id].x);
  }
  if (overall_max == -INFINITY) {  // no split saw a key
    for (int c = lane; c < a.dim; c += 32) out[c] = round_from_f32<T>(0.0f);
    if (lane == 0) a.lse[head_row_index(a, b, kvh, r)] = -INFINITY;
    return;
  }
  float sum = 0.0f;
  for (int s = 0; s < a.splits; ++s) {
    const float2 ml = a.partial_ml[s * a.total_rows + id];
    sum += ml.y * expf(ml.x - overall_max);  // an empty split has max -inf: weight 0
  }
  const float inv = 1.0f / sum;
  for (int c = lane; c < a.dim; c += 32) {
    float value = 0.0f;
    for (int s = 0; s < a.splits; ++s) {
      const int64_t slot = s * a.total_rows + id;
      value += a.partial_out[slot * a.dim + c] * expf(a.partial_ml[slot].x - overall_max);
    }
    out[c] = round_from_f32<T>(value * inv);
  }
  if (lane == 0) a.lse[head_row_index(a, b, kvh, r)] = overall_max + logf(sum);
}

template <typename T, int kD, int kBQ, int kBK>
void launch_forward(CudaBackend& backend, const char* op, AttentionArgsOf<T> a) {
  const DeviceLimits& limits = backend.limits();
  const int64_t row_tiles = ceil_div(a.rows, kBQ);
  const int64_t blocks = static_cast<int64_t>(a.batch) * a.kv_heads * row_tiles;
  // Keys a row tile may see at most (from key 0; kv_start only shortens the range).
  const int64_t span = std::min<int64_t>(a.kv_len, a.q_offset + a.q_len);
  // Too few blocks for two per SM: split the keys (never below one key tile per split).
  int64_t splits = 1;
  if (blocks < 2 * int64_t{limits.sms} && span > kBK) {
    splits = std::min(
        {ceil_div(2 * int64_t{limits.sms}, blocks), ceil_div(span, kBK), int64_t{kMaxKeySplits}});
  }
  Tensor partials;
  if (splits > 1) {
    const int64_t chunk = ceil_div(ceil_div(span, splits), kBK) * kBK;
    splits = ceil_div(span, chunk);
    a.chunk = static_cast<int>(chunk);
    a.splits = static_cast<int>(splits);
    const int64_t slots = splits * a.total_rows;
    partials =
        backend.scratch(static_cast<size_t>(slots) * (sizeof(float2) + sizeof(float) * a.dim));
    a.partial_ml = ptr<float2>(partials);
    a.partial_out = reinterpret_cast<float*>(a.partial_ml + slots);
  }
  launch(op, attention_forward_kernel<T, kD, kBQ, kBK>, blocks * a.splits,
         ForwardTiles<kD, kBQ, kBK>::kSharedBytes, backend, a);
  if (a.splits > 1) {
    constexpr int kRowsPerBlock = kAttentionThreads / 32;
    launch(op, attention_combine_splits_kernel<T>, ceil_div(a.total_rows, kRowsPerBlock), 0,
           backend, a);
  }
}

// The forward in element type T (float, __nv_bfloat16 or __half).
template <typename T>
void attention_forward_as(CudaBackend& backend, const char* op, const AttentionGeometry& geometry,
                          const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                          const Tensor& lse) {
  AttentionArgsOf<T> a{};
  static_cast<AttentionGeometry&>(a) = geometry;
  a.q = ptr<T>(q);
  a.k = ptr<T>(k);
  a.v = ptr<T>(v);
  a.out = ptr<T>(out);
  a.lse = ptr<float>(lse);
  if constexpr (!std::is_same_v<T, float>) {
    if (tensor_cores_take(a)) return attention_forward_tensor_cores(backend, op, a);
  }
  with_head_dim_bucket(a.dim, [&](auto bucket) {
    constexpr int kD = decltype(bucket)::value;
    if (a.rows <= kDecodeRows) {  // decoding: one query position per sequence (times the group)
      launch_forward<T, kD, kDecodeRows, decode_key_tile(kD)>(backend, op, a);
    } else {
      launch_forward<T, kD, forward_query_tile(kD), forward_key_tile(kD)>(backend, op, a);
    }
  });
}

}  // namespace

void CudaBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& kv_start, const Tensor& out, const Tensor& lse,
                                    const AttentionShape& shape) {
  OpScope op_scope(profiler_.get(), "attention_forward");
  const char* op = "attention_forward";
  const DType dtype = attention_dtype(op, q);
  const AttentionGeometry g = check_geometry(op, shape, q, k, v, kv_start, lse, dtype);
  kChecks.tensor(op, "out", out, dtype, q.shape());
  if (g.batch == 0 || g.q_len == 0) return;
  switch (dtype) {
    case DType::kBF16:
      return attention_forward_as<__nv_bfloat16>(*this, op, g, q, k, v, out, lse);
    case DType::kF16:
      return attention_forward_as<__half>(*this, op, g, q, k, v, out, lse);
    default:
      return attention_forward_as<float>(*this, op, g, q, k, v, out, lse);
  }
}

}  // namespace nnkit::cuda
