// Purpose: backend/cpu construction, thread setup, memory, copies and the plugin entry point.
// Owned by backend/cpu; see cpu_backend.h for the contract.
#include "cpu_backend.h"

#include <cblas.h>
#include <dlfcn.h>
#include <omp.h>

#include <bit>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "checks.h"
#include "nnkit/plugin.h"

namespace nnkit::cpu {

namespace {

constexpr size_t kAlignment = 64;  // a cache line, and enough for any vector load

// Size class of a request: multiples of 64 bytes up to 4 KiB, then four classes per power of two
// (at most 25% slack). Training and decoding ask for the same few shapes every step, so after the
// first step nearly every request is served from the cache.
size_t size_class(size_t bytes) {
  if (bytes <= 4096)
    return bytes == 0 ? kAlignment : (bytes + kAlignment - 1) / kAlignment * kAlignment;
  const int top = std::bit_width(bytes - 1) - 1;  // 2^top < bytes <= 2^(top+1)
  const size_t quarter = size_t{1} << (top - 2);
  return (bytes + quarter - 1) / quarter * quarter;
}

}  // namespace

// Free blocks by size class. Thread-safe (a tensor may be released on any thread). Bounded: a
// release that would take the cached total past kMaxCachedBytes goes back to the system.
class BlockCache {
 public:
  static constexpr size_t kMaxCachedBytes = size_t{1} << 30;

  ~BlockCache() {
    for (auto& [size, blocks] : free_) {
      for (void* p : blocks) std::free(p);
    }
  }

  void* acquire(size_t size) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(size);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= size;
        return p;
      }
    }
    return std::aligned_alloc(kAlignment, size);
  }

  void release(void* p, size_t size) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + size <= kMaxCachedBytes) {
        free_[size].push_back(p);
        cached_ += size;
        return;
      }
    }
    std::free(p);
  }

 private:
  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
};

namespace {

// OpenBLAS's thread setter, looked up at run time so a netlib/other BLAS still links and loads.
void set_blas_threads(int threads) {
  using SetThreads = void (*)(int);
  if (auto fn = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    fn(threads);
  }
}

// libgomp parks its worker threads inside its own code between parallel regions. When the host
// program does not use OpenMP itself, this plugin holds the only reference to libgomp (and to
// OpenBLAS), so unloading the plugin would unmap code those threads still run in (a crash at
// exit). The runtimes are pinned instead (RTLD_NODELETE); the plugin itself stays unloadable.
void pin_library_of(const void* symbol) {
  Dl_info info;
  if (dladdr(symbol, &info) != 0 && info.dli_fname != nullptr) {
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
  }
}

void pin_runtimes() {
  static const bool pinned = [] {
    pin_library_of(reinterpret_cast<const void*>(&omp_get_max_threads));
    pin_library_of(reinterpret_cast<const void*>(&cblas_sgemm));
    return true;
  }();
  (void)pinned;
}

std::vector<OptionSpec> cpu_options() {
  return {OptionSpec{"threads", OptionType::kInt, "0", 0.0, 4096.0,
                     "threads for OpenMP loops and OpenBLAS; 0 = OMP_NUM_THREADS or all cores"},
          OptionSpec{"precision", OptionType::kString, "fp32", std::nullopt, std::nullopt,
                     "compute precision: fp32 only (bf16/fp16 are CUDA options)"}};
}

Component* create_cpu(const CreateArgs& args) {
  // Declared so that a config switched from CUDA keeps a meaningful key, and bf16 here gets an
  // answer instead of silently computing in fp32.
  const std::string precision = args.options.get_string("precision");
  if (!precision.empty() && precision != "fp32") {  // empty: options built without defaults
    args.options.fail("precision",
                      "is '" + precision +
                          "', but backend/cpu computes in fp32 only; use precision: fp32 here, "
                          "or backend: {type: cuda, precision: " +
                          precision + "} on a GPU");
  }
  return new CpuBackend(static_cast<int>(args.options.get_int("threads")));
}

}  // namespace

CpuBackend::CpuBackend(int threads) : threads_(threads), cache_(std::make_shared<BlockCache>()) {
  pin_runtimes();
  if (threads_ > 0) {
    omp_set_num_threads(threads_);
    set_blas_threads(threads_);
  }
}

int CpuBackend::threads() const {
  return threads_ > 0 ? threads_ : omp_get_max_threads();
}

Tensor CpuBackend::empty(const Shape& shape, DType dtype) {
  for (int64_t d : shape) {
    if (d < 0) shape_fail("empty", "negative dimension in shape " + to_string(shape));
  }
  const auto numel = static_cast<size_t>(shape_numel(shape));
  if (numel > SIZE_MAX / dtype_size(dtype)) {
    shape_fail("empty", "shape " + to_string(shape) + " needs more bytes than a 64-bit size holds");
  }
  const size_t bytes = numel * dtype_size(dtype);
  // A size class: a multiple of the alignment (aligned_alloc requires it), never 0 bytes, so even
  // an empty tensor has a real, freeable address.
  const size_t padded = size_class(bytes);
  void* memory = cache_->acquire(padded);
  if (memory == nullptr) {
    shape_fail("empty", "out of host memory allocating " + std::to_string(padded) + " bytes for " +
                            dtype_name(dtype) + to_string(shape));
  }
  auto storage = std::make_shared<Storage>();
  storage->data = std::shared_ptr<void>(
      memory, [cache = cache_, padded](void* p) { cache->release(p, padded); });
  storage->bytes = bytes;
  storage->device = device();
  return Tensor(std::move(storage), shape, dtype);
}

void CpuBackend::copy_from_host(const Tensor& dst, const void* src) {
  if (!dst.defined() || !dst.device().is_host()) {
    shape_fail("copy_from_host", "dst is " + describe(dst) + "; expected a host tensor");
  }
  if (dst.nbytes() > 0) std::memcpy(dst.raw(), src, dst.nbytes());
}

void CpuBackend::copy_to_host(void* dst, const Tensor& src) {
  if (!src.defined() || !src.device().is_host()) {
    shape_fail("copy_to_host", "src is " + describe(src) + "; expected a host tensor");
  }
  if (src.nbytes() > 0) std::memcpy(dst, src.raw(), src.nbytes());
}

int64_t CpuBackend::end_capture() {
  shape_fail("end_capture", "backend/cpu records no graphs (begin_capture() returned false)");
}

void CpuBackend::replay(int64_t graph) {
  shape_fail("replay",
             "backend/cpu records no graphs; graph " + std::to_string(graph) + " does not exist");
}

// The CPU backend runs every op before returning, so an "asynchronous" read is done at once.
void CpuBackend::copy_to_host_async(void* dst, const Tensor& src) {
  copy_to_host(dst, src);
}

void CpuBackend::await_host_copies() {}

void CpuBackend::copy(const Tensor& dst, const Tensor& src) {
  if (!dst.defined() || !src.defined() || !dst.device().is_host() || !src.device().is_host() ||
      dst.dtype() != src.dtype() || dst.numel() != src.numel()) {
    shape_fail("copy", "dst is " + describe(dst) + " and src is " + describe(src) +
                           "; expected host tensors of one dtype and element count");
  }
  if (dst.nbytes() > 0 && dst.raw() != src.raw()) std::memmove(dst.raw(), src.raw(), dst.nbytes());
}

// Host memory is not a device's: callers read /proc (nnkit/memory_estimate.h) instead.
std::optional<DeviceMemory> CpuBackend::device_memory() const {
  return std::nullopt;
}

}  // namespace nnkit::cpu

NNKIT_PLUGIN(backend, cpu, "0.1.0", "fp32 host backend: OpenMP loops and OpenBLAS sgemm",
             &nnkit::cpu::cpu_options, &nnkit::cpu::create_cpu)
