// Purpose: a kernel timeline of any CUDA program, for the decode work: loaded with LD_PRELOAD,
// it turns on CUPTI's concurrent-kernel activity records (hardware start/end stamps of every
// kernel, including each node of a replayed CUDA Graph) and writes one CSV row per kernel to
// $NNKIT_TIMELINE_OUT. Nsight Systems is not on the device image; this is the part of it the
// decode step needs: where the critical path of a replayed step spends its time once
// programmatic dependent launch overlaps the kernels (bench/kernel_timeline.py reads the CSV).
// Ownership: the bench's tool; no nnkit code links it.
//
//   g++ -O2 -shared -fPIC bench/kernel_timeline.cpp -I$CUDA/include -L$CUDA/lib64 -lcupti \
//       -o build-gpu/libkernel_timeline.so
//   NNKIT_TIMELINE_OUT=t.csv LD_PRELOAD=build-gpu/libkernel_timeline.so nnkit generate ...
#include <cupti.h>
#include <cxxabi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

namespace {

std::mutex file_mutex;
FILE* out_file = nullptr;

// "void ns::(anonymous namespace)::kernel<T, 4>(args)" -> "kernel<T, 4>": short and still
// distinguishes the instantiations the decode step launches.
std::string short_name(const char* mangled) {
  if (mangled == nullptr) return "?";
  int status = 0;
  char* demangled = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string name = status == 0 && demangled != nullptr ? demangled : mangled;
  std::free(demangled);
  int depth = 0;
  size_t cut = name.size();
  for (size_t i = 0; i < name.size(); ++i) {  // drop the argument list (the first top-level '(')
    if (name[i] == '<') ++depth;
    if (name[i] == '>') --depth;
    if (name[i] == '(' && depth == 0 && name.compare(i, 21, "(anonymous namespace)") != 0) {
      cut = i;
      break;
    }
  }
  name.resize(cut);
  size_t last_scope = std::string::npos;
  depth = 0;
  for (size_t i = 0; i + 1 < name.size(); ++i) {
    if (name[i] == '<') ++depth;
    if (name[i] == '>') --depth;
    if (depth == 0 && name[i] == ':' && name[i + 1] == ':') last_scope = i + 1;
  }
  if (last_scope != std::string::npos) name = name.substr(last_scope + 1);
  for (char& c : name) {
    if (c == ',') c = ';';  // the CSV's separator
  }
  return name;
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  constexpr size_t kBytes = 8 << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBytes));
  *size = kBytes;
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* record = nullptr;
  std::lock_guard<std::mutex> lock(file_mutex);
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL &&
        record->kind != CUPTI_ACTIVITY_KIND_KERNEL) {
      continue;
    }
    const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
    if (out_file != nullptr) {
      std::fprintf(out_file, "%llu,%llu,%u,%u,%u,%llu,%d,%d,%s\n",
                   static_cast<unsigned long long>(k->start),
                   static_cast<unsigned long long>(k->end), k->correlationId, k->graphId,
                   k->streamId, static_cast<unsigned long long>(k->graphNodeId), k->gridX,
                   k->blockX, short_name(k->name).c_str());
    }
  }
  std::free(buffer);
}

void flush_at_exit() {
  cuptiActivityFlushAll(1);
  std::lock_guard<std::mutex> lock(file_mutex);
  if (out_file != nullptr) std::fclose(out_file);
  out_file = nullptr;
}

// The records of a context are lost once it is destroyed: flush before that happens.
void CUPTIAPI on_resource(void*, CUpti_CallbackDomain domain, CUpti_CallbackId id, const void*) {
  if (domain == CUPTI_CB_DOMAIN_RESOURCE && id == CUPTI_CBID_RESOURCE_CONTEXT_DESTROY_STARTING) {
    cuptiActivityFlushAll(1);
  }
}

__attribute__((constructor)) void start_timeline() {
  const char* path = std::getenv("NNKIT_TIMELINE_OUT");
  if (path == nullptr || *path == '\0') return;
  out_file = std::fopen(path, "w");
  if (out_file == nullptr) {
    std::fprintf(stderr, "kernel_timeline: cannot write %s\n", path);
    return;
  }
  std::fprintf(out_file, "start_ns,end_ns,correlation,graph,stream,node,grid,block,name\n");
  CUpti_SubscriberHandle subscriber;
  if (cuptiSubscribe(&subscriber, on_resource, nullptr) == CUPTI_SUCCESS) {
    cuptiEnableDomain(1, subscriber, CUPTI_CB_DOMAIN_RESOURCE);
  }
  if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
    std::fprintf(stderr, "kernel_timeline: CUPTI activity tracing could not start\n");
    return;
  }
  std::atexit(flush_at_exit);
}

}  // namespace
