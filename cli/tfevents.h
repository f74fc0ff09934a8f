// Purpose: TensorBoard-readable scalars without a TensorBoard dependency. An event file is a
// TFRecord stream (u64 length, masked CRC-32C of the length, the bytes, masked CRC-32C of the
// bytes) of `Event` protocol buffers: {wall_time (1, double), step (2, int64), file_version (3,
// string) | summary (5, {value (1, {tag (1, string), simple_value (2, float)})})}. This file
// hand-encodes exactly those fields. `nnkit train` exports a run's metrics.jsonl into
// RUN/tensorboard/ when it stops (`tensorboard --logdir RUN_OR_SWEEP_DIR` then shows the runs).
// Ownership: value types. Thread-safety: pure functions apart from the file write.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace nnkit::cli {

// CRC-32C rotated and offset as TFRecord stores it (so that a CRC of CRCs stays well mixed).
uint32_t tfrecord_masked_crc(const void* data, size_t n);

// Appends TFRecord-framed events to an in-memory buffer.
class TfEventsEncoder {
 public:
  // The first event of every file: file_version "brain.Event:2".
  void file_version(double wall_time);
  void scalar(const std::string& tag, int64_t step, float value, double wall_time);
  const std::string& bytes() const { return bytes_; }

 private:
  void record(const std::string& event);
  std::string bytes_;
};

// Writes RUN/tensorboard/events.out.tfevents.0.nnkit (atomically; a resumed run rewrites it
// whole) from RUN/metrics.jsonl: every numeric field by its name, and per MoE layer
// moe/layer<i>/max_expert_load and moe/layer<i>/dropped_fraction. Returns the file, or an empty
// path when the run has no metrics yet. Throws IoError.
std::filesystem::path write_tensorboard_events(const std::filesystem::path& run_dir);

}  // namespace nnkit::cli
