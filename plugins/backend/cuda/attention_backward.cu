// Purpose: backend/cuda attention backward: rowsum(dout * out), the dq kernel (per query tile)
// and the dk/dv kernel (per key tile) (strategy in attention_common.cuh), and the dispatch on the
// element type: f32 runs here; bf16/f16 share the rowsum kernel and then run on tensor cores
// (attention_lowp_backward.cu) where the shape suits them, through this file's kernels
// instantiated for the 16-bit type elsewhere. Owned by backend/cuda.
#include "attention_common.cuh"
#include "attention_lowp.cuh"

namespace nnkit::cuda {

namespace {

// delta[row, head] = dout . out over the head's dim columns; one warp per (row, head).
template <typename T>
__global__ void attention_delta_kernel(const AttentionArgsOf<T> a, int64_t pairs) {
  const int64_t pair = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (pair >= pairs) return;
  const int64_t base = (pair / a.heads) * a.q_ld + (pair % a.heads) * a.dim;
  float sum = 0.0f;
  for (int c = lane; c < a.dim; c += 32) {
    sum = fmaf(widen_to_f32(a.dout[base + c]), widen_to_f32(a.out[base + c]), sum);
  }
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0) a.delta[pair] = sum;
}

// dq for one (batch, KV head, tile of kBQ folded query rows): over the keys the tile may see,
// dS = P (dO V^T - delta) and dq = scale dS K. Latest row tiles first, as in the forward.
template <typename T, int kD, int kBQ, int kBK>
__global__ void __launch_bounds__(kAttentionThreads,
                                  blocks_per_sm(DqTiles<kD, kBQ, kBK>::kSharedBytes))
    attention_dq_kernel(const AttentionArgsOf<T> a) {
  constexpr int kLd = tile_ld<kD>();
  constexpr int kRowsPer = kBQ / kGridSide;
  constexpr int kKeysPer = kBK / kGridSide;
  constexpr int kSLd = kBK + 4;
  using Cols = ColumnMap<kD>;
  extern __shared__ float4 shared_words[];
  float* q_tile = reinterpret_cast<float*>(shared_words);
  float* do_tile = q_tile + kBQ * kLd;
  float* k_tile = do_tile + kBQ * kLd;
  float* v_tile = k_tile + kBK * kLd;
  float* ds_tile = v_tile + kBK * kLd;

  const int tx = threadIdx.x % kGridSide, ty = threadIdx.x / kGridSide;
  const int row_tiles = (a.rows + kBQ - 1) / kBQ;
  const int64_t heads_total = static_cast<int64_t>(a.batch) * a.kv_heads;
  const int tile = row_tiles - 1 - static_cast<int>(blockIdx.x / heads_total);
  const int b = static_cast<int>(blockIdx.x % heads_total / a.kv_heads);
  const int kvh = static_cast<int>(blockIdx.x % a.kv_heads);
  const int r0 = tile * kBQ, r1 = min(r0 + kBQ, a.rows);
  const int lo = first_key(a, b);
  const int hi = key_end(a, (r1 - 1) / a.group);

  auto query_row = [&](int i) {
    return r0 + i < r1 ? query_offset(a, b, kvh, r0 + i) : int64_t{-1};
  };
  stage_rows<kD, kBQ>(q_tile, a.q, a.dim, query_row);
  stage_rows<kD, kBQ>(do_tile, a.dout, a.dim, query_row);

  int limit[kRowsPer];
  float row_lse[kRowsPer], row_delta[kRowsPer];
  float acc[kRowsPer][Cols::kPerThread];
#pragma unroll
  for (int i = 0; i < kRowsPer; ++i) {
    const int r = r0 + ty + kGridSide * i;
    limit[i] = 0;  // no key
    row_lse[i] = 0.0f;
    row_delta[i] = 0.0f;
    if (r < r1) {
      const int64_t index = head_row_index(a, b, kvh, r);
      row_lse[i] = a.lse[index];
      row_delta[i] = a.delta[index];
      // An infinite lse marks a row that saw no key in the forward (the CPU's rule too).
      if (!isinf(row_lse[i])) limit[i] = key_end(a, r / a.group);
    }
#pragma unroll
    for (int n = 0; n < Cols::kPerThread; ++n) acc[i][n] = 0.0f;
  }

  for (int k0 = lo; k0 < hi; k0 += kBK) {
    __syncthreads();
    auto key_row = [&](int i) { return k0 + i < hi ? key_offset(a, b, kvh, k0 + i) : int64_t{-1}; };
    stage_rows<kD, kBK>(k_tile, a.k, a.dim, key_row);
    stage_rows<kD, kBK>(v_tile, a.v, a.dim, key_row);
    __syncthreads();

    float s[kRowsPer][kKeysPer], dp[kRowsPer][kKeysPer];
#pragma unroll
    for (int i = 0; i < kRowsPer; ++i) {
#pragma unroll
      for (int j = 0; j < kKeysPer; ++j) s[i][j] = dp[i][j] = 0.0f;
    }
    accumulate_row_dots<kD>(q_tile, ty, k_tile, tx, s);
    accumulate_row_dots<kD>(do_tile, ty, v_tile, tx, dp);
#pragma unroll
    for (int i = 0; i < kRowsPer; ++i) {
#pragma unroll
      for (int j = 0; j < kKeysPer; ++j) {
        const int key = k0 + tx + kGridSide * j;
        const float p = key < limit[i] ? expf(s[i][j] * a.scale - row_lse[i]) : 0.0f;
        ds_tile[(ty + kGridSide * i) * kSLd + tx + kGridSide * j] = p * (dp[i][j] - row_delta[i]);
      }
    }
    __syncthreads();
    accumulate_weighted_rows<kD, kRowsPer, kBK>(ds_tile, ty, k_tile, tx, acc);
  }

#pragma unroll
  for (int i = 0; i < kRowsPer; ++i) {
    const int r = r0 + ty + kGridSide * i;
    if (r >= r1) continue;
    T* dq = a.dq + query_offset(a, b, kvh, r);
#pragma unroll
    for (int g = 0; g < Cols::kGroups; ++g) {
#pragma unroll
      for (int e = 0; e < Cols::kVec; ++e) {
        const int c = Cols::column(tx, g) + e;
        if (c < a.dim) dq[c] = round_from_f32<T>(acc[i][g * Cols::kVec + e] * a.scale);
      }
    }
  }
}

// dk, dv for one (batch, KV head, tile of kBK keys of the capacity): over the folded query rows
// that may see the tile (every head of the group, in row order), dv += P^T dO and
// dk += scale dS^T Q. Keys nobody sees (before kv_start, at or past kv_len) get zeros.
template <typename T, int kD, int kBK, int kBQ>
__global__ void __launch_bounds__(kAttentionThreads,
                                  blocks_per_sm(KeyGradTiles<kD, kBK, kBQ>::kSharedBytes))
    attention_dkdv_kernel(const AttentionArgsOf<T> a) {
  constexpr int kLd = tile_ld<kD>();
  constexpr int kKeysPer = kBK / kGridSide;  // key rows per thread
  constexpr int kRowsPer = kBQ / kGridSide;  // query rows per thread
  constexpr int kWLd = kBQ + 4;
  using Cols = ColumnMap<kD>;
  extern __shared__ float4 shared_words[];
  float* k_tile = reinterpret_cast<float*>(shared_words);
  float* v_tile = k_tile + kBK * kLd;
  float* q_tile = v_tile + kBK * kLd;
  float* do_tile = q_tile + kBQ * kLd;
  float* weight_tile = do_tile + kBQ * kLd;  // P^T, then dS^T
  float* tile_lse = weight_tile + kBK * kWLd;
  float* tile_delta = tile_lse + kBQ;
  int* tile_limit = reinterpret_cast<int*>(tile_delta + kBQ);

  const int tx = threadIdx.x % kGridSide, ty = threadIdx.x / kGridSide;
  const int64_t heads_total = static_cast<int64_t>(a.batch) * a.kv_heads;
  const int tile = static_cast<int>(blockIdx.x / heads_total);  // earliest keys (most rows) first
  const int b = static_cast<int>(blockIdx.x % heads_total / a.kv_heads);
  const int kvh = static_cast<int>(blockIdx.x % a.kv_heads);
  const int j0 = tile * kBK;
  const int visible_lo = max(j0, first_key(a, b));
  const int visible_hi = min(j0 + kBK, a.kv_len);

  bool key_visible[kKeysPer];
  float dk_acc[kKeysPer][Cols::kPerThread], dv_acc[kKeysPer][Cols::kPerThread];
#pragma unroll
  for (int i = 0; i < kKeysPer; ++i) {
    const int j = j0 + ty + kGridSide * i;
    key_visible[i] = j >= visible_lo && j < visible_hi;
#pragma unroll
    for (int n = 0; n < Cols::kPerThread; ++n) dk_acc[i][n] = dv_acc[i][n] = 0.0f;
  }

  // The first query position that sees the tile's first visible key (earlier ones see none).
  const int64_t first_position = max(int64_t{0}, static_cast<int64_t>(visible_lo) - a.q_offset);
  if (visible_lo < visible_hi && first_position < a.q_len) {
    auto key_row = [&](int i) {
      const int j = j0 + i;
      return j >= visible_lo && j < visible_hi ? key_offset(a, b, kvh, j) : int64_t{-1};
    };
    stage_rows<kD, kBK>(k_tile, a.k, a.dim, key_row);
    stage_rows<kD, kBK>(v_tile, a.v, a.dim, key_row);

    for (int r0 = static_cast<int>(first_position) * a.group; r0 < a.rows; r0 += kBQ) {
      __syncthreads();  // the previous step's readers of q/dO/weight tiles are done
      auto query_row = [&](int i) {
        return r0 + i < a.rows ? query_offset(a, b, kvh, r0 + i) : int64_t{-1};
      };
      stage_rows<kD, kBQ>(q_tile, a.q, a.dim, query_row);
      stage_rows<kD, kBQ>(do_tile, a.dout, a.dim, query_row);
      if (threadIdx.x < kBQ) {
        const int r = r0 + threadIdx.x;
        float lse = 0.0f, delta = 0.0f;
        int limit = 0;  // no key
        if (r < a.rows) {
          const int64_t index = head_row_index(a, b, kvh, r);
          lse = a.lse[index];
          delta = a.delta[index];
          if (!isinf(lse)) limit = key_end(a, r / a.group);
        }
        tile_lse[threadIdx.x] = lse;
        tile_delta[threadIdx.x] = delta;
        tile_limit[threadIdx.x] = limit;
      }
      __syncthreads();

      float s[kKeysPer][kRowsPer], dp[kKeysPer][kRowsPer];
#pragma unroll
      for (int i = 0; i < kKeysPer; ++i) {
#pragma unroll
        for (int j = 0; j < kRowsPer; ++j) s[i][j] = dp[i][j] = 0.0f;
      }
      accumulate_row_dots<kD>(k_tile, ty, q_tile, tx, s);
      accumulate_row_dots<kD>(v_tile, ty, do_tile, tx, dp);
      // s becomes P^T (into the shared tile), dp becomes dS^T (kept until P^T has been used).
#pragma unroll
      for (int i = 0; i < kKeysPer; ++i) {
        const int key = j0 + ty + kGridSide * i;
#pragma unroll
        for (int j = 0; j < kRowsPer; ++j) {
          const int row = tx + kGridSide * j;
          const float p = key_visible[i] && key < tile_limit[row]
                              ? expf(s[i][j] * a.scale - tile_lse[row])
                              : 0.0f;
          weight_tile[(ty + kGridSide * i) * kWLd + row] = p;
          dp[i][j] = p * (dp[i][j] - tile_delta[row]);
        }
      }
      __syncthreads();
      accumulate_weighted_rows<kD, kKeysPer, kBQ>(weight_tile, ty, do_tile, tx, dv_acc);
      __syncthreads();
#pragma unroll
      for (int i = 0; i < kKeysPer; ++i) {
#pragma unroll
        for (int j = 0; j < kRowsPer; ++j) {
          weight_tile[(ty + kGridSide * i) * kWLd + tx + kGridSide * j] = dp[i][j];
        }
      }
      __syncthreads();
      accumulate_weighted_rows<kD, kKeysPer, kBQ>(weight_tile, ty, q_tile, tx, dk_acc);
    }
  }

#pragma unroll
  for (int i = 0; i < kKeysPer; ++i) {
    const int j = j0 + ty + kGridSide * i;
    if (j >= a.kv_capacity) continue;
    const int64_t base = key_offset(a, b, kvh, j);
#pragma unroll
    for (int g = 0; g < Cols::kGroups; ++g) {
#pragma unroll
      for (int e = 0; e < Cols::kVec; ++e) {
        const int c = Cols::column(tx, g) + e;
        if (c < a.dim) {
          a.dk[base + c] = round_from_f32<T>(dk_acc[i][g * Cols::kVec + e] * a.scale);
          a.dv[base + c] = round_from_f32<T>(dv_acc[i][g * Cols::kVec + e]);
        }
      }
    }
  }
}

// The backward in element type T (float, __nv_bfloat16 or __half); q_len > 0.
template <typename T>
void attention_backward_as(CudaBackend& backend, const char* op, const AttentionGeometry& geometry,
                           const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                           const Tensor& out, const Tensor& lse, const Tensor& dq, const Tensor& dk,
                           const Tensor& dv) {
  AttentionArgsOf<T> a{};
  static_cast<AttentionGeometry&>(a) = geometry;
  a.q = ptr<T>(q);
  a.k = ptr<T>(k);
  a.v = ptr<T>(v);
  a.dout = ptr<T>(dout);
  a.out = ptr<T>(out);
  a.lse = ptr<float>(lse);
  a.dq = ptr<T>(dq);
  a.dk = ptr<T>(dk);
  a.dv = ptr<T>(dv);

  const int64_t pairs = static_cast<int64_t>(a.batch) * a.q_len * a.heads;
  Tensor delta = backend.scratch(static_cast<size_t>(pairs) * sizeof(float));
  a.delta = ptr<float>(delta);
  constexpr int kPairsPerBlock = kAttentionThreads / 32;
  launch(op, attention_delta_kernel<T>, ceil_div(pairs, kPairsPerBlock), 0, backend, a, pairs);

  if constexpr (!std::is_same_v<T, float>) {
    if (tensor_cores_take(a)) return attention_backward_tensor_cores(backend, op, a);
  }
  with_head_dim_bucket(a.dim, [&](auto bucket) {
    constexpr int kD = decltype(bucket)::value;
    constexpr int kDqRows = dq_query_tile(kD), kDqKeys = dq_key_tile(kD);
    launch(op, attention_dq_kernel<T, kD, kDqRows, kDqKeys>,
           static_cast<int64_t>(a.batch) * a.kv_heads * ceil_div(a.rows, kDqRows),
           DqTiles<kD, kDqRows, kDqKeys>::kSharedBytes, backend, a);
    if (a.kv_capacity == 0) return;
    constexpr int kGradKeys = key_grad_key_tile(kD), kGradRows = key_grad_query_tile(kD);
    launch(op, attention_dkdv_kernel<T, kD, kGradKeys, kGradRows>,
           static_cast<int64_t>(a.batch) * a.kv_heads * ceil_div(a.kv_capacity, kGradKeys),
           KeyGradTiles<kD, kGradKeys, kGradRows>::kSharedBytes, backend, a);
  });
}

}  // namespace

void CudaBackend::attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                     const Tensor& v, const Tensor& kv_start, const Tensor& out,
                                     const Tensor& lse, const Tensor& dq, const Tensor& dk,
                                     const Tensor& dv, const AttentionShape& shape) {
  OpScope op_scope(profiler_.get(), "attention_backward");
  const char* op = "attention_backward";
  const DType dtype = attention_dtype(op, q);
  const AttentionGeometry g = check_geometry(op, shape, q, k, v, kv_start, lse, dtype);
  kChecks.tensor(op, "out", out, dtype, q.shape());
  kChecks.tensor(op, "dout", dout, dtype, q.shape());
  kChecks.tensor(op, "dq", dq, dtype, q.shape());
  kChecks.tensor(op, "dk", dk, dtype, k.shape());
  kChecks.tensor(op, "dv", dv, dtype, v.shape());
  if (g.batch == 0) return;  // every tensor is empty
  if (g.q_len == 0) {  // no query sees anything: dk, dv are zeros (all-zero bits in every dtype)
    if (dk.nbytes() > 0) {
      NNKIT_CUDA_CHECK(cudaMemsetAsync(dk.raw(), 0, dk.nbytes(), stream()));
      NNKIT_CUDA_CHECK(cudaMemsetAsync(dv.raw(), 0, dv.nbytes(), stream()));
    }
    return;
  }
  switch (dtype) {
    case DType::kBF16:
      return attention_backward_as<__nv_bfloat16>(*this, op, g, dout, q, k, v, out, lse, dq, dk,
                                                  dv);
    case DType::kF16:
      return attention_backward_as<__half>(*this, op, g, dout, q, k, v, out, lse, dq, dk, dv);
    default:
      return attention_backward_as<float>(*this, op, g, dout, q, k, v, out, lse, dq, dk, dv);
  }
}

}  // namespace nnkit::cuda
