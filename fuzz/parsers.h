// Purpose: one entry per parser of nnkit's input files, shared by the libFuzzer targets
// (fuzz_main.cpp, one binary per entry) and the replay test that runs every seed and every
// saved crash input in the ordinary test suite (tests/fuzz). An entry returns normally when the
// input parses or is refused with the nnkit error that parser promises (IoError for files,
// ConfigError/UsageError for configs); any other exception, a crash or a sanitizer report is a
// bug.
// Thread-safety: entries that go through files use one scratch folder per process; call them
// from one thread.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace nnkit::fuzz {

// A YAML config: the bytes up to the first NUL are the document (ConfigDocument::parse); each
// NUL-separated piece after it is a command-line override (apply_override), at most 8.
void config(std::string_view input);
// A token file (written to a scratch file and opened with TokenFile, ids read back).
void token_file(std::string_view input);
// A checkpoint's MANIFEST.json, verified against a scratch checkpoint folder.
void manifest(std::string_view input);
// A checkpoint's trainer.json (CheckpointStore::parse_trainer_state), then its data-loader state
// (WindowLoader::State::decode and restore_state).
void trainer_state(std::string_view input);
// A Hugging Face config.json (hf_config_to_yaml, then the YAML parsed as a config).
void hf_config(std::string_view input);
// A safetensors file (SafetensorsFile::from_bytes, every tensor's bytes read).
void safetensors(std::string_view input);
// A SentencePiece model file, loaded the way tokenizer/sentencepiece loads one (libsentencepiece
// from serialized bytes), then used to encode and decode a short text. Only when built with
// NNKIT_FUZZ_SENTENCEPIECE.
void sentencepiece_model(std::string_view input);

struct Entry {
  const char* name;  // also the seed folder: fuzz/seeds/<name>/
  void (*run)(std::string_view);
};
// Every entry this build has.
std::vector<Entry> entries();

}  // namespace nnkit::fuzz
