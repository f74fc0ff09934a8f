// Purpose: `nnkit tokenizer train|encode|decode`: trains a SentencePiece model (through the
// tokenizer_trainer/sentencepiece plugin, so this binary never links libsentencepiece, which is
// optional) and inspects one (tokenizer/sentencepiece).
#include "nnkit/tokenizer.h"

#include <cctype>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "args.h"
#include "commands.h"
#include "common.h"
#include "nnkit/error.h"
#include "nnkit/registry.h"
#include "nnkit/tokenizer_trainer.h"
#include "same_path.h"

namespace nnkit::cli {

namespace {

// tokenizer/sentencepiece over MODEL, with options as if written in a config.
std::shared_ptr<Tokenizer> open_model(const Registry& registry, const std::string& model) {
  Options options("tokenizer/sentencepiece", "tokenizer", SourceLocation{"<command line>", 0, 0});
  Options::Value value;
  value.type = OptionType::kString;
  value.string_value = model;
  value.location = SourceLocation{"<command line>", 0, 0};
  options.set("model", value);
  registry.require("tokenizer", "sentencepiece", "--model");
  return registry.create<Tokenizer>("tokenizer", "sentencepiece", CreateArgs{options, {}, nullptr});
}

// "5,6,7" and "5 6 7" alike.
std::vector<int32_t> parse_ids(const std::vector<std::string>& words) {
  std::vector<int32_t> ids;
  for (const std::string& word : words) {
    std::stringstream stream(word);
    std::string item;
    while (std::getline(stream, item, ',')) {
      if (item.empty()) continue;
      size_t used = 0;
      long long id = -1;
      try {
        id = std::stoll(item, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != item.size() || id < 0 || id > INT32_MAX) {
        throw UsageError("cli", "'" + item + "' is not a token id (a non-negative integer)");
      }
      ids.push_back(static_cast<int32_t>(id));
    }
  }
  return ids;
}

// SentencePiece stops on an empty corpus with its internal assertion text
// ("[!sentences_.empty()]"); say what is wrong instead. Reads until the first character that is not
// white space.
void require_some_text(const std::vector<std::filesystem::path>& inputs) {
  std::string sizes;
  for (const auto& file : inputs) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(file, ec)) return;  // the trainer names what it is
    std::ifstream in(file, std::ios::binary);
    if (!in) return;  // the trainer names an unreadable file
    char c = 0;
    while (in.get(c)) {
      if (!std::isspace(static_cast<unsigned char>(c))) return;
    }
    const auto bytes = std::filesystem::file_size(file, ec);
    sizes += (sizes.empty() ? "" : ", ") + file.string() + ": " +
             (ec || bytes == 0 ? std::string("0 bytes")
                               : std::to_string(bytes) + " bytes of white space");
  }
  throw UsageError("cli", "the input files hold no text (" + sizes +
                              "); `nnkit tokenizer train` needs text to learn pieces from");
}

}  // namespace

int run_tokenizer(const Args& raw) {
  CommandSpec spec{
      "tokenizer",
      "nnkit tokenizer train INPUT... -o PREFIX [--vocab-size N] [--model-type unigram|bpe]\n"
      "       nnkit tokenizer encode --model FILE TEXT...\n"
      "       nnkit tokenizer decode --model FILE ID...",
      "Trains a SentencePiece model (writes PREFIX.model and PREFIX.vocab with pad 0, unk 1, "
      "bos 2, eos 3; byte fallback and no normalisation, so any UTF-8 text round-trips; text that "
      "is not UTF-8 is refused, naming the byte) and "
      "encodes/decodes with one. Use it in a config as "
      "`tokenizer: {type: sentencepiece, model: PREFIX.model}`.",
      {{"--output", "PREFIX", "train: output prefix", false, "-o"},
       {"--vocab-size", "N", "train: vocabulary size including specials (default 32000)"},
       {"--model-type", "TYPE", "train: unigram (default), bpe, word or char"},
       {"--character-coverage", "X", "train: share of characters given pieces (default 1.0)"},
       {"--no-byte-fallback", "", "train: map unknown characters to <unk> instead of bytes"},
       {"--input-sentence-size", "N", "train: sample at most N lines (default: all)"},
       {"--threads", "N", "train: worker threads (default: the library's)"},
       {"--model", "FILE", "encode/decode: the .model file"},
       {"--json", "", "encode/decode: print JSON"}},
      "train INPUT... | encode TEXT... | decode ID..."};
  const std::optional<ParsedArgs> parsed = parse_command(spec, raw);
  if (!parsed) return 0;  // --help was printed
  const ParsedArgs& args = *parsed;
  const auto& pos = args.positionals();
  if (pos.empty())
    throw UsageError("cli", "usage: nnkit tokenizer train|encode|decode (see --help)");
  const std::string action = pos[0];
  const std::vector<std::string> rest(pos.begin() + 1, pos.end());
  const Registry registry(Registry::default_search_paths(apply_common_flags(args)));

  if (action == "train") {
    if (rest.empty()) throw UsageError("cli", "`nnkit tokenizer train` needs INPUT text files");
    const auto output = args.get("--output");
    if (!output) throw UsageError("cli", "`nnkit tokenizer train` needs -o PREFIX");
    TokenizerTrainOptions options;
    options.inputs.assign(rest.begin(), rest.end());
    options.output_prefix = *output;
    // The trainer writes PREFIX.model and PREFIX.vocab: neither may be one of the inputs.
    for (const char* suffix : {".model", ".vocab"}) {
      refuse_output_equal_to_input(
          *output + suffix, options.inputs,
          "the file " + *output + suffix + " (written for -o " + *output + ")");
    }
    require_some_text(options.inputs);
    options.vocab_size = args.get_int("--vocab-size", 32000, 8, INT32_MAX);
    options.model_type = args.get_or("--model-type", "unigram");
    options.character_coverage = args.get_double("--character-coverage", 1.0, 1e-6, 1.0);
    options.byte_fallback = !args.has("--no-byte-fallback");
    options.input_sentence_size = args.get_int("--input-sentence-size", 0, 1, INT64_MAX);
    options.threads = args.get_int("--threads", 0, 1, 1024);
    registry.require("tokenizer_trainer", "sentencepiece", "nnkit tokenizer train");
    const Options none;
    auto trainer = registry.create<TokenizerTrainer>("tokenizer_trainer", "sentencepiece",
                                                     CreateArgs{none, {}, nullptr});
    for (const auto& file : trainer->train(options)) std::cout << "wrote " << file.string() << "\n";
    return 0;
  }
  if (action != "encode" && action != "decode") {
    throw UsageError("cli", "unknown action '" + action + "'; use train, encode or decode");
  }
  const auto model = args.get("--model");
  if (!model) throw UsageError("cli", "`nnkit tokenizer " + action + "` needs --model FILE");
  const auto tokenizer = open_model(registry, *model);
  if (action == "encode") {
    std::string text;
    for (size_t i = 0; i < rest.size(); ++i) text += (i ? " " : "") + rest[i];
    const std::vector<int32_t> ids = tokenizer->encode(text);
    if (args.has("--json")) {
      std::cout << nlohmann::json{{"ids", ids}}.dump() << "\n";
    } else {
      for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
      std::cout << "\n";
    }
    return 0;
  }
  const std::vector<int32_t> ids = parse_ids(rest);
  // SentencePiece decodes an unknown id to nothing, so without this check a typo printed an
  // empty line with exit 0.
  const int64_t vocab = tokenizer->vocab_size();
  for (const int32_t id : ids) {
    if (id >= vocab) {
      throw UsageError("cli", "token id " + std::to_string(id) + " is outside the vocabulary of " +
                                  *model + " (vocabulary size " + std::to_string(vocab) +
                                  ": ids 0.." + std::to_string(vocab - 1) + ")");
    }
  }
  const std::string text = tokenizer->decode(ids);
  if (args.has("--json")) {
    std::cout << nlohmann::json{{"text", text}}.dump() << "\n";
  } else {
    std::cout << text << "\n";
  }
  return 0;
}

}  // namespace nnkit::cli
