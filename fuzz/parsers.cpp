// Purpose: see parsers.h. Each entry feeds its bytes to the same code the commands use on a
// user's file and treats the parser's own error type as a clean refusal.
#include "parsers.h"

#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>

#include "nnkit/checkpoint.h"
#include "nnkit/config.h"
#include "nnkit/error.h"
#include "nnkit/hf.h"
#include "nnkit/io/data_loader.h"
#include "nnkit/io/safetensors.h"
#include "nnkit/io/token_file.h"

#ifdef NNKIT_FUZZ_SENTENCEPIECE
#include <sentencepiece_processor.h>
#endif

namespace nnkit::fuzz {

namespace {

namespace fs = std::filesystem;

// A folder of this process's own, removed at exit.
const fs::path& scratch() {
  static const fs::path dir = [] {
    std::string pattern = (fs::temp_directory_path() / "nnkit-fuzz-XXXXXX").string();
    const char* made = ::mkdtemp(pattern.data());
    if (made == nullptr) std::abort();
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(scratch(), ec);
    });
    return fs::path(made);
  }();
  return dir;
}

void write_bytes(const fs::path& file, std::string_view bytes) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) std::abort();  // the scratch folder must be writable; that is not a finding
}

// Keeps reads from being optimised away.
void consume(uint64_t value) {
  static volatile uint64_t sink = 0;
  sink = sink + value;
}

}  // namespace

void config(std::string_view input) {
  const size_t nul = input.find('\0');
  const std::string document(input.substr(0, nul));
  try {
    ConfigDocument doc = ConfigDocument::parse(document, "fuzz.yaml");
    int argument = 1;
    for (size_t at = nul; at != std::string_view::npos && argument <= 8; ++argument) {
      const size_t next = input.find('\0', at + 1);
      const std::string assignment(
          input.substr(at + 1, next == std::string_view::npos ? next : next - at - 1));
      doc.apply_override(assignment, argument);
      at = next;
    }
    consume(doc.dump().size() + doc.plugin_paths().size());
  } catch (const ConfigError&) {
  } catch (const UsageError&) {
  }
}

void token_file(std::string_view input) {
  const fs::path file = scratch() / "fuzz.tokens";
  write_bytes(file, input);
  try {
    const TokenFile tokens(file);
    uint64_t sum = 0;
    for (int64_t i = 0; i < tokens.size(); ++i) sum += static_cast<uint32_t>(tokens.at(i));
    if (tokens.tokenizer()) sum += tokens.tokenizer()->describe().size();
    consume(sum);
  } catch (const IoError&) {
  }
}

void manifest(std::string_view input) {
  // The four files a checkpoint holds, empty (CRC-32C 00000000), and the manifest under test.
  const fs::path dir = scratch() / "step-00000001";
  static const bool made = [&] {
    fs::create_directories(dir);
    for (const char* name :
         {"model.safetensors", "optimizer.safetensors", "trainer.json", "config.yaml"}) {
      write_bytes(dir / name, "");
    }
    return true;
  }();
  (void)made;
  write_bytes(dir / "MANIFEST.json", input);
  try {
    CheckpointStore::verify(CheckpointRef{dir, 1});
  } catch (const IoError&) {
  }
}

void trainer_state(std::string_view input) {
  // A loader over a small token file, to restore the data-loader state into.
  static const std::unique_ptr<TokenFile> tokens = [] {
    const fs::path file = scratch() / "loader.tokens";
    std::vector<int32_t> ids(200);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i % 10);
    write_token_file(file, ids, 10);
    return std::make_unique<TokenFile>(file);
  }();
  try {
    const TrainerState state =
        CheckpointStore::parse_trainer_state(std::string(input), "fuzz/trainer.json");
    WindowLoader loader(*tokens, 8, 0.1, 1);
    loader.restore_state(WindowLoader::State::decode(state.loader_state));
    std::vector<int32_t> inputs, targets;
    loader.next_train_batch(2, inputs, targets);
    consume(static_cast<uint64_t>(state.step) + inputs.size());
  } catch (const IoError&) {
  }
}

void hf_config(std::string_view input) {
  try {
    const std::string yaml =
        hf_config_to_yaml(std::string(input), "fuzz/config.json", "{type: byte}");
    consume(ConfigDocument::parse(yaml, "fuzz/config.json (converted)").dump().size());
  } catch (const ConfigError&) {
  } catch (const IoError&) {
  }
}

void safetensors(std::string_view input) {
  try {
    const SafetensorsFile file = SafetensorsFile::from_bytes(input, "fuzz-input");
    uint64_t sum = 0;
    for (const std::string& name : file.names()) {
      const TensorInfo& info = file.info(name);
      const auto bytes = file.bytes(name);
      if (bytes.size() != info.nbytes()) std::abort();  // a span that disagrees with its dtype
      for (std::byte b : bytes) sum += static_cast<unsigned>(b);
    }
    for (const auto& [key, value] : file.metadata()) sum += key.size() + value.size();
    consume(sum);
  } catch (const IoError&) {
  }
}

void sentencepiece_model(std::string_view input) {
#ifdef NNKIT_FUZZ_SENTENCEPIECE
  sentencepiece::SentencePieceProcessor processor;
  try {
    // A failed status and a thrown std::exception both become the plugin's ConfigError.
    if (!processor.LoadFromSerializedProto(input).ok()) return;
  } catch (const std::exception&) {
    return;
  }
  std::vector<int> ids;
  if (!processor.Encode("The quick brown fox, 42 \xc3\xa9t\xc3\xa9s.", &ids).ok()) return;
  std::string text;
  (void)processor.Decode(ids, &text);
  consume(text.size() + static_cast<uint64_t>(processor.GetPieceSize()));
#else
  (void)input;
#endif
}

std::vector<Entry> entries() {
  std::vector<Entry> out = {{"config", &config},       {"token_file", &token_file},
                            {"manifest", &manifest},   {"trainer_state", &trainer_state},
                            {"hf_config", &hf_config}, {"safetensors", &safetensors}};
#ifdef NNKIT_FUZZ_SENTENCEPIECE
  out.push_back({"sentencepiece_model", &sentencepiece_model});
#endif
  return out;
}

}  // namespace nnkit::fuzz
