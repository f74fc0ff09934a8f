// Purpose: which plugin libraries a run used, so that a run directory can be reproduced and
// reloaded from anywhere: one PluginRecord (kind, name, version, absolute library path, SHA-256
// of the library file) per plugin a RunConfig names, stored as RUN/plugins.json. `nnkit train`
// writes it (and warns on --resume when a library changed); `eval`/`generate --checkpoint` load
// the recorded libraries first, whatever the working directory.
// Ownership: value types. Thread-safety: pure functions apart from the file reads and writes.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "nnkit/config.h"
#include "nnkit/export.h"
#include "nnkit/registry.h"

namespace nnkit {

struct PluginRecord {
  std::string kind;
  std::string name;
  std::string version;
  std::string path;    // absolute library file
  std::string sha256;  // 64 lower-case hex digits of the file's SHA-256
  std::string id() const { return kind + "/" + name; }
};

// SHA-256 (FIPS 180-4) of a file's bytes as 64 lower-case hex digits. Throws IoError.
NNKIT_API std::string sha256_file(const std::filesystem::path& file);
// SHA-256 of `bytes` (for tests: sha256_hex("abc") = "ba7816bf...").
NNKIT_API std::string sha256_hex(const std::string& bytes);

// One record per distinct plugin `config` uses (model, backend, tokenizer, optimizer, schedule,
// samplers), in that order, from `registry`'s libraries.
NNKIT_API std::vector<PluginRecord> plugin_records(const RunConfig& config,
                                                   const Registry& registry);
// RUN/plugins.json (written atomically); read returns {} when the file is absent. Throws IoError.
NNKIT_API void write_plugin_records(const std::filesystem::path& run_dir,
                                    const std::vector<PluginRecord>& records);
NNKIT_API std::vector<PluginRecord> read_plugin_records(const std::filesystem::path& run_dir);
// One line per plugin whose library changed between `before` and `now` (another file, or the
// same file with another hash); empty when nothing changed.
NNKIT_API std::vector<std::string> plugin_record_changes(const std::vector<PluginRecord>& before,
                                                         const std::vector<PluginRecord>& now);

}  // namespace nnkit
