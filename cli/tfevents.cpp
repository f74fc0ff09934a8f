// Purpose: see tfevents.h.
#include "tfevents.h"

#include <chrono>
#include <cstring>

#include "metrics_file.h"
#include "nnkit/io/atomic_file.h"
#include "nnkit/io/checksum.h"

namespace nnkit::cli {

namespace fs = std::filesystem;

namespace {

// Protocol-buffer wire types.
constexpr uint8_t kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5;

void put_varint(std::string& out, uint64_t value) {
  while (value >= 0x80) {
    out += static_cast<char>((value & 0x7f) | 0x80);
    value >>= 7;
  }
  out += static_cast<char>(value);
}

void put_key(std::string& out, uint32_t field, uint8_t wire_type) {
  put_varint(out, (static_cast<uint64_t>(field) << 3) | wire_type);
}

template <typename T>
void put_little_endian(std::string& out, T value) {
  static_assert(std::is_trivially_copyable_v<T>);
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));  // the wire is little-endian, like every target here
  out.append(bytes, sizeof(T));
}

void put_bytes(std::string& out, uint32_t field, const std::string& bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out += bytes;
}

std::string event_header(double wall_time, int64_t step) {
  std::string event;
  put_key(event, 1, kFixed64);
  put_little_endian(event, wall_time);
  put_key(event, 2, kVarint);
  put_varint(event, static_cast<uint64_t>(step));
  return event;
}

}  // namespace

uint32_t tfrecord_masked_crc(const void* data, size_t n) {
  const uint32_t crc = crc32c(0, data, n);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

void TfEventsEncoder::record(const std::string& event) {
  std::string length;
  put_little_endian(length, static_cast<uint64_t>(event.size()));
  bytes_ += length;
  put_little_endian(bytes_, tfrecord_masked_crc(length.data(), length.size()));
  bytes_ += event;
  put_little_endian(bytes_, tfrecord_masked_crc(event.data(), event.size()));
}

void TfEventsEncoder::file_version(double wall_time) {
  std::string event = event_header(wall_time, 0);
  put_bytes(event, 3, "brain.Event:2");
  record(event);
}

void TfEventsEncoder::scalar(const std::string& tag, int64_t step, float value, double wall_time) {
  std::string summary_value;
  put_bytes(summary_value, 1, tag);
  put_key(summary_value, 2, kFixed32);
  put_little_endian(summary_value, value);
  std::string summary;
  put_bytes(summary, 1, summary_value);
  std::string event = event_header(wall_time, step);
  put_bytes(event, 5, summary);
  record(event);
}

fs::path write_tensorboard_events(const fs::path& run_dir) {
  const std::optional<RunMetrics> metrics = read_run_metrics(run_dir / "metrics.jsonl");
  if (!metrics || metrics->scalars.empty()) return {};
  // Wall times: the steps' elapsed_s (seconds since their attempt started) after a common
  // origin, so TensorBoard's relative-time axis is meaningful for a run trained in one go.
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::map<double, double> elapsed_by_step;
  double latest = 0;
  if (const auto it = metrics->scalars.find("elapsed_s"); it != metrics->scalars.end()) {
    for (const Point& p : it->second)
      elapsed_by_step[p.step] = p.value, latest = std::max(latest, p.value);
  }
  const auto wall = [&](double step) {
    const auto it = elapsed_by_step.find(step);
    return now - latest + (it == elapsed_by_step.end() ? 0.0 : it->second);
  };
  TfEventsEncoder encoder;
  encoder.file_version(now - latest);
  for (const auto& [name, points] : metrics->scalars) {
    if (name == "elapsed_s") continue;
    for (const Point& p : points) {
      encoder.scalar(name, static_cast<int64_t>(p.step), static_cast<float>(p.value), wall(p.step));
    }
  }
  const auto per_layer = [&](const std::vector<std::vector<Point>>& table, const char* what) {
    for (size_t layer = 0; layer < table.size(); ++layer) {
      const std::string tag = "moe/layer" + std::to_string(layer) + "/" + what;
      for (const Point& p : table[layer]) {
        encoder.scalar(tag, static_cast<int64_t>(p.step), static_cast<float>(p.value),
                       wall(p.step));
      }
    }
  };
  per_layer(metrics->max_expert_load, "max_expert_load");
  per_layer(metrics->dropped_fraction, "dropped_fraction");
  const fs::path dir = run_dir / "tensorboard";
  fs::create_directories(dir);
  const fs::path file = dir / "events.out.tfevents.0.nnkit";
  write_file_atomic(file, encoder.bytes());
  return file;
}

}  // namespace nnkit::cli
