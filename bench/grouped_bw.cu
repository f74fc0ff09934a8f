// Purpose: how close the decode step's grouped expert products (grouped_experts.cuh) come to the
// H200's memory bandwidth, variant by variant, in one short run: a plain streaming read of the
// same bytes (the ceiling for this access pattern), then the gate/up SwiGLU product and the down
// product at the 6.9B model's shapes (hidden 768, ffn 6144, 16 experts) for batch 1 (4 chosen
// experts, one row each) and batch 8 (16 chosen, two rows each), with k split over 1, 2, 4 or 8
// warps and 4 to 8 k steps of loads in flight per warp. Each call picks another disjoint set of
// experts (rotating over four), so the weights come from HBM, not L2; each time is per call of
// 16 launched back to back. At batch 1 it also times single_token_experts.cuh's gate/up product
// (rows a warp, k spans loaded a batch, the launch bound's blocks a multiprocessor). Standalone
// (nvcc), run by bench/gpu_decode_check.sh's `grouped` stage; the variants it finds faster are
// candidates for moe_experts_decode.cu / decode_ops.cu, to be confirmed in the decode bench. Owned
// by bench/.
//
//   nvcc -O3 -arch=sm_90 -std=c++20 --expt-relaxed-constexpr -I core/include \
//     -I plugins/backend/cuda bench/grouped_bw.cu -o grouped_bw && ./grouped_bw
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda_exit_check.cuh"
#include "grouped_experts.cuh"
#include "single_token_experts.cuh"

namespace {

using nnkit::cuda::ExpertWeights;
using T = __nv_bfloat16;

constexpr int kExperts = 16, kHidden = 768, kFfn = 6144;
constexpr int kSets = 4;  // disjoint expert sets rotated over calls
constexpr int kCalls = 40;

// Every 16-byte pack of `bytes` at `base[e]` for the chosen experts, read once per call with the
// products' L1-bypassing load, eight independent loads in flight per thread; the XOR keeps the
// loads alive.
__global__ void __launch_bounds__(256)
    stream_read_kernel(ExpertWeights base, const int* chosen, int n_chosen, int64_t bytes,
                       unsigned* sink) {
  constexpr int kUnroll = 8;
  const int64_t packs = bytes / 16;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  unsigned acc = 0;
  for (int c = 0; c < n_chosen; ++c) {
    const uint4* p = static_cast<const uint4*>(base.w[chosen[c]]);
    for (int64_t i0 = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i0 < packs;
         i0 += stride * kUnroll) {
      uint4 v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = i0 + u * stride;
        v[u] = i < packs ? nnkit::cuda::load_weights_once(p + i) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
  }
  if (acc == 0x12345678u) sink[blockIdx.x] = acc;
}

struct Problem {
  const char* name;
  int rows_per_expert;  // kept rows of each chosen expert
  int chosen;           // experts with rows per call
  int capacity;
};

// kept offsets (E + 1) for each of the kSets rotations: set s chooses experts s*chosen.. (mod E).
std::vector<int32_t*> make_kept(const Problem& p) {
  std::vector<int32_t*> sets;
  for (int s = 0; s < kSets; ++s) {
    std::vector<int32_t> counts(kExperts, 0);
    for (int c = 0; c < p.chosen; ++c) counts[(s * p.chosen + c) % kExperts] = p.rows_per_expert;
    std::vector<int32_t> offsets{0};
    for (int e = 0; e < kExperts; ++e) offsets.push_back(offsets.back() + counts[e]);
    int32_t* d = nullptr;
    CHECK(cudaMalloc(&d, offsets.size() * sizeof(int32_t)));
    CHECK(cudaMemcpy(d, offsets.data(), offsets.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
    sets.push_back(d);
  }
  return sets;
}

// Microseconds per call: the median over kCalls timings of kBackToBack calls launched back to
// back (as a decode step's kernels run: the launch cost overlaps the previous call).
constexpr int kBackToBack = 16;
template <typename Launch>
double median_us(Launch launch) {
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < 8; ++i) launch(i);
  CHECK(cudaDeviceSynchronize());
  std::vector<float> times;
  for (int i = 0; i < kCalls; ++i) {
    CHECK(cudaEventRecord(start));
    for (int j = 0; j < kBackToBack; ++j) launch(i * kBackToBack + j);
    CHECK(cudaEventRecord(stop));
    CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms * 1000.0f / kBackToBack);
  }
  CHECK(cudaGetLastError());
  std::sort(times.begin(), times.end());
  CHECK(cudaEventDestroy(start));
  CHECK(cudaEventDestroy(stop));
  return times[times.size() / 2];
}

void report(const char* problem, const char* variant, double us, double bytes) {
  std::printf("%-8s %-44s %8.2f us %6.2f TB/s\n", problem, variant, us, bytes / us * 1e-6);
}

template <int kSplit, bool kSwiglu, int kStages>
void run_product(const char* problem, const char* variant, const Problem& p,
                 const std::vector<int32_t*>& kept, const ExpertWeights& w, const ExpertWeights& u,
                 const T* x, T* y, int sms) {
  constexpr bool kTwoRows = false;
  auto kernel = nnkit::cuda::grouped_mma_kernel<T, kSplit, kSwiglu, kTwoRows, kStages>;
  const int per_sm = nnkit::cuda::resident_blocks_per_sm(kernel);
  const int64_t n = kSwiglu ? kFfn : kHidden, k = kSwiglu ? kHidden : kFfn;
  const int64_t columns = nnkit::cuda::kMmaWarps / kSplit * 8;
  const int groups = static_cast<int>((n + columns - 1) / columns);
  const int grid =
      static_cast<int>(std::min<int64_t>(int64_t(per_sm) * sms, int64_t(groups) * kExperts));
  const double us = median_us([&](int i) {
    kernel<<<grid, nnkit::cuda::kMmaThreads>>>(x, nullptr, w, u, kept[i % kSets], p.capacity, n, k,
                                               y, kExperts, groups, nnkit::cuda::CombineArgs{});
  });
  const double bytes = double(p.chosen) * double(n) * double(k) * 2.0 * (kSwiglu ? 2 : 1);
  char label[96];
  std::snprintf(label, sizeof label, "%s (split %d, stages %d, grid %d)", variant, kSplit, kStages,
                grid);
  report(problem, label, us, bytes);
}

// The single-token products (batch 1 only: one row per chosen expert, capacity 1).
template <int kRows, int kBatch, int kMinBlocks>
void run_single_swiglu(const Problem& p, const std::vector<int32_t*>& kept,
                       const ExpertWeights& gate, const ExpertWeights& up, const T* x, T* act,
                       int sms) {
  auto kernel = nnkit::cuda::single_token_swiglu_kernel<T, kRows, kBatch, kMinBlocks>;
  const int per_sm = nnkit::cuda::resident_blocks_per_sm(kernel);
  const int64_t warps = int64_t(p.chosen) * (kFfn / kRows);
  const int grid = static_cast<int>(std::min<int64_t>(int64_t(per_sm) * sms, (warps + 7) / 8));
  const double us = median_us([&](int i) {
    kernel<<<grid, nnkit::cuda::kSingleTokenThreads>>>(x, gate, up, kept[i % kSets], kExperts,
                                                       p.capacity, kFfn, kHidden, act);
  });
  char label[96];
  std::snprintf(label, sizeof label, "single-token SwiGLU (rows %d, batch %d, %d/SM, grid %d)",
                kRows, kBatch, per_sm, grid);
  report(p.name, label, us, double(p.chosen) * kFfn * kHidden * 2.0 * 2.0);
}

}  // namespace

int main() {
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  ExpertWeights gate{}, up{}, down{};
  const size_t matrix = size_t(kFfn) * kHidden * sizeof(T);
  for (int e = 0; e < kExperts; ++e) {
    void *g, *u, *d;
    CHECK(cudaMalloc(&g, matrix));
    CHECK(cudaMalloc(&u, matrix));
    CHECK(cudaMalloc(&d, matrix));
    // Small finite bf16 values (0x3c00 = 0.0078125) so the products stay finite.
    CHECK(cudaMemset(g, 0x3c, matrix));
    CHECK(cudaMemset(u, 0x3c, matrix));
    CHECK(cudaMemset(d, 0x3c, matrix));
    gate.w[e] = g, up.w[e] = u, down.w[e] = d;
  }
  T *x, *act, *y;
  const size_t rows = size_t(kExperts) * 16;
  CHECK(cudaMalloc(&x, rows * kHidden * sizeof(T)));
  CHECK(cudaMalloc(&act, rows * kFfn * sizeof(T)));
  CHECK(cudaMalloc(&y, rows * kHidden * sizeof(T)));
  CHECK(cudaMemset(x, 0x3c, rows * kHidden * sizeof(T)));
  CHECK(cudaMemset(act, 0x3c, rows * kFfn * sizeof(T)));
  unsigned* sink;
  CHECK(cudaMalloc(&sink, 4096 * sizeof(unsigned)));
  std::printf("%d SMs; hidden %d, ffn %d, %d experts; median of %d calls, %d rotating sets\n", sms,
              kHidden, kFfn, kExperts, kCalls, kSets);

  const Problem problems[] = {{"batch1", 1, 4, 1}, {"batch8", 2, 16, 8}};
  for (const Problem& p : problems) {
    const std::vector<int32_t*> kept = make_kept(p);
    // The ceiling: the chosen experts' gate and up matrices (table entries e and kExperts + e)
    // streamed by a plain read in one kernel.
    ExpertWeights both{};
    for (int e = 0; e < kExperts; ++e) both.w[e] = gate.w[e], both.w[kExperts + e] = up.w[e];
    std::vector<int*> chosen_sets;
    for (int s = 0; s < kSets; ++s) {
      std::vector<int> chosen;
      for (int c = 0; c < p.chosen; ++c) chosen.push_back((s * p.chosen + c) % kExperts);
      for (int c = 0; c < p.chosen; ++c) chosen.push_back(kExperts + (s * p.chosen + c) % kExperts);
      int* d;
      CHECK(cudaMalloc(&d, chosen.size() * sizeof(int)));
      CHECK(cudaMemcpy(d, chosen.data(), chosen.size() * sizeof(int), cudaMemcpyHostToDevice));
      chosen_sets.push_back(d);
    }
    for (int blocks_per_sm : {2, 4, 8}) {
      const double us = median_us([&](int i) {
        stream_read_kernel<<<blocks_per_sm * sms, 256>>>(both, chosen_sets[i % kSets], 2 * p.chosen,
                                                         int64_t(matrix), sink);
      });
      char label[64];
      std::snprintf(label, sizeof label, "stream read gate+up (%d blocks/SM)", blocks_per_sm);
      report(p.name, label, us, double(p.chosen) * 2.0 * double(matrix));
    }
    // The decode path's choices first (gate/up: split 2, 6 stages; down: split 8, 4 stages).
    run_product<2, true, 6>(p.name, "gate/up SwiGLU", p, kept, gate, up, x, act, sms);
    run_product<2, true, 4>(p.name, "gate/up SwiGLU", p, kept, gate, up, x, act, sms);
    run_product<1, true, 4>(p.name, "gate/up SwiGLU", p, kept, gate, up, x, act, sms);
    run_product<4, true, 3>(p.name, "gate/up SwiGLU", p, kept, gate, up, x, act, sms);
    run_product<8, false, 4>(p.name, "down", p, kept, down, down, act, y, sms);
    run_product<8, false, 8>(p.name, "down", p, kept, down, down, act, y, sms);
    run_product<4, false, 4>(p.name, "down", p, kept, down, down, act, y, sms);
    if (p.rows_per_expert != 1 || p.capacity != 1) continue;
    run_single_swiglu<2, 3, 3>(p, kept, gate, up, x, act, sms);
    run_single_swiglu<2, 3, 2>(p, kept, gate, up, x, act, sms);
    run_single_swiglu<1, 3, 4>(p, kept, gate, up, x, act, sms);
    run_single_swiglu<4, 3, 2>(p, kept, gate, up, x, act, sms);
  }
  return 0;
}
