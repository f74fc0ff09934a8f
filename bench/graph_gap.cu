// Purpose: measure what a recorded CUDA Graph costs per kernel node when the nodes are a chain
// of small dependent kernels (the shape of one decode step: ~14 launches per layer), with and
// without programmatic dependent launch (PDL: the next kernel's blocks start while the previous
// kernel drains and wait at griddepcontrol.wait). Standalone (nvcc only), run by
// bench/gpu_decode_check.sh's `gaps` stage. Owned by bench/.
//
//   nvcc -O2 -arch=sm_90 -std=c++17 bench/graph_gap.cu -o graph_gap && ./graph_gap
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#include "cuda_exit_check.cuh"

// Each kernel reads the previous kernel's value (a true dependency), optionally spins for
// `spin_ns` (a kernel of known length), and writes the next value.
__global__ void chain_kernel(int* value, long long spin_ns, int pdl) {
  if (pdl) asm volatile("griddepcontrol.wait;" ::: "memory");
  const int v = *value;
  if (spin_ns > 0) {
    long long start;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    long long now = start;
    while (now - start < spin_ns) asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  }
  if (pdl) asm volatile("griddepcontrol.launch_dependents;");
  __syncthreads();
  if (blockIdx.x == 0 && threadIdx.x == 0) value[1 + (v & 1)] = v + 1;
  if (blockIdx.x == gridDim.x - 1 && threadIdx.x == 0) *value = v + 1;
}

// A kernel that streams `bytes` of a buffer (a small product's weight read).
__global__ void stream_kernel(const int4* data, long long n, int* sink, int pdl) {
  if (pdl) asm volatile("griddepcontrol.wait;" ::: "memory");
  int acc = 0;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    const int4 d = data[i];
    acc ^= d.x ^ d.y ^ d.z ^ d.w;
  }
  if (pdl) asm volatile("griddepcontrol.launch_dependents;");
  if (acc == 0x12345678) *sink = acc;
}

float time_graph(int nodes, bool pdl, long long spin_ns, int blocks, const int4* data,
                 long long stream_elems, int* value, cudaStream_t stream) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < nodes; ++i) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(blocks);
    cfg.blockDim = dim3(256);
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    if (stream_elems > 0) {
      CHECK(cudaLaunchKernelEx(&cfg, stream_kernel, data, stream_elems, value + 4, int(pdl)));
    } else {
      CHECK(cudaLaunchKernelEx(&cfg, chain_kernel, value, spin_ns, int(pdl)));
    }
  }
  CHECK(cudaStreamEndCapture(stream, &graph));
  CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < 3; ++i) CHECK(cudaGraphLaunch(exec, stream));
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  const int reps = 20;
  CHECK(cudaEventRecord(a, stream));
  for (int i = 0; i < reps; ++i) CHECK(cudaGraphLaunch(exec, stream));
  CHECK(cudaEventRecord(b, stream));
  CHECK(cudaEventSynchronize(b));
  float ms = 0;
  CHECK(cudaEventElapsedTime(&ms, a, b));
  CHECK(cudaGraphExecDestroy(exec));
  CHECK(cudaGraphDestroy(graph));
  return ms * 1000.0f / reps / nodes;  // microseconds per node
}

int main() {
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  int* value;
  CHECK(cudaMalloc(&value, 64));
  CHECK(cudaMemset(value, 0, 64));
  const long long stream_bytes = 1536 * 1024;  // ~ the q|k|v product's weights (bf16)
  int4* data;
  // Distinct buffers per node would not fit L2 the same way; one 1.5 MB buffer stays in L2,
  // so the streaming case measures launch overlap, not HBM.
  CHECK(cudaMalloc(&data, stream_bytes));
  CHECK(cudaMemset(data, 1, stream_bytes));
  const int nodes = 420;
  std::printf("graph of %d dependent kernel nodes, %d SMs; microseconds per node\n", nodes, sms);
  std::printf("%-44s %10s %10s\n", "kernel", "plain", "PDL");
  for (long long spin : {0LL, 2000LL, 5000LL}) {
    for (int blocks : {1, sms, 4 * sms}) {
      const float plain = time_graph(nodes, false, spin, blocks, nullptr, 0, value, stream);
      const float pdl = time_graph(nodes, true, spin, blocks, nullptr, 0, value, stream);
      char label[64];
      std::snprintf(label, sizeof label, "chain, spin %lld ns, %d blocks", spin, blocks);
      std::printf("%-44s %10.2f %10.2f\n", label, plain, pdl);
    }
  }
  for (int blocks : {sms, 4 * sms}) {
    const float plain = time_graph(nodes, false, 0, blocks, data, stream_bytes / 16, value, stream);
    const float pdl = time_graph(nodes, true, 0, blocks, data, stream_bytes / 16, value, stream);
    char label[64];
    std::snprintf(label, sizeof label, "stream 1.5 MB (L2), %d blocks", blocks);
    std::printf("%-44s %10.2f %10.2f\n", label, plain, pdl);
  }
  CHECK(cudaFree(data));
  CHECK(cudaFree(value));
  return 0;
}
