// Purpose: host_memory_available() (see nnkit/memory_estimate.h): what the kernel says this
// process can still take, counting a container's cgroup limit, which /proc/meminfo ignores (a
// 4 GiB container on a 512 GiB host reads 500 GiB there and is killed at 4).
#include <fstream>
#include <sstream>

#include "nnkit/memory_estimate.h"

namespace nnkit {

namespace {

namespace fs = std::filesystem;

// The first line of a cgroup file as a byte count; nullopt for "max", absent or unreadable.
std::optional<int64_t> read_cgroup_bytes(const fs::path& file) {
  std::ifstream in(file);
  std::string text;
  if (!in || !(in >> text) || text == "max") return std::nullopt;
  try {
    size_t used = 0;
    const long long value = std::stoll(text, &used);
    if (used != text.size() || value < 0) return std::nullopt;
    // cgroup v1 writes "no limit" as a page-rounded LLONG_MAX.
    if (value >= (int64_t{1} << 62)) return std::nullopt;
    return value;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::optional<int64_t> mem_available(const fs::path& meminfo) {
  std::ifstream in(meminfo);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string key, unit;
    long long kib = 0;
    if (fields >> key >> kib >> unit && key == "MemAvailable:" && kib >= 0) {
      return static_cast<int64_t>(kib) * 1024;
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<MemoryLimit> host_memory_available(const fs::path& proc_meminfo,
                                                 const fs::path& cgroup_root) {
  std::optional<MemoryLimit> best;
  if (auto bytes = mem_available(proc_meminfo)) {
    best = MemoryLimit{*bytes, "MemAvailable in " + proc_meminfo.string()};
  }
  // cgroup v2 (unified), then v1's memory controller.
  const std::pair<fs::path, fs::path> cgroups[] = {
      {cgroup_root / "memory.max", cgroup_root / "memory.current"},
      {cgroup_root / "memory" / "memory.limit_in_bytes",
       cgroup_root / "memory" / "memory.usage_in_bytes"}};
  for (const auto& [limit_file, usage_file] : cgroups) {
    const auto limit = read_cgroup_bytes(limit_file);
    if (!limit) continue;
    const int64_t used = read_cgroup_bytes(usage_file).value_or(0);
    const int64_t left = *limit > used ? *limit - used : 0;
    if (!best || left < best->bytes) {
      best = MemoryLimit{left, "cgroup limit " + limit_file.string() + " minus usage " +
                                   usage_file.filename().string()};
    }
    break;
  }
  return best;
}

}  // namespace nnkit
