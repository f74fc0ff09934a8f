// Purpose: `nnkit data prepare INPUT... -o FILE [--config CONFIG]`: tokenises text files with the
// configured tokenizer (tokenizer/byte by default) into an nnkit token file for training. The
// file records that tokenizer (data_identity.h), and -o may not name one of the inputs.
#include <fstream>
#include <iostream>
#include <sstream>

#include "args.h"
#include "commands.h"
#include "common.h"
#include "data_identity.h"
#include "nnkit/error.h"
#include "nnkit/io/token_file.h"
#include "nnkit/logging.h"
#include "same_path.h"

namespace nnkit::cli {

int run_data(const Args& raw) {
  CommandSpec spec{
      "data",
      "nnkit data prepare INPUT... -o FILE [--config CONFIG]",
      "Tokenises text files into a token file (uint16 ids up to 65536-token vocabularies, "
      "uint32 above) with a checksum. Documents are separated by the tokenizer's EOS id.",
      {{"--output", "FILE", "token file to write", false, "-o"},
       {"--config", "CONFIG", "take the tokenizer from this config (default: tokenizer/byte)"}},
      "prepare INPUT...  text files to tokenise",
      true};
  const std::optional<ParsedArgs> parsed = parse_command(spec, raw);
  if (!parsed) return 0;  // --help was printed
  const ParsedArgs& args = *parsed;
  const auto& pos = args.positionals();
  if (pos.empty() || pos[0] != "prepare") {
    throw UsageError("cli", "usage: nnkit data prepare INPUT... -o FILE (see --help)");
  }
  if (pos.size() < 2) throw UsageError("cli", "`nnkit data prepare` needs at least one INPUT file");
  const auto output = args.get("--output");
  if (!output) throw UsageError("cli", "`nnkit data prepare` needs -o FILE");
  std::vector<std::filesystem::path> inputs(pos.begin() + 1, pos.end());
  if (auto config = args.get("--config")) inputs.emplace_back(*config);
  refuse_output_equal_to_input(*output, inputs, "-o " + *output);
  Session session;
  if (auto config = args.get("--config")) {
    session = open_session(*config, args.overrides(), args);
  } else {
    session = open_session_from_text(
        "model: {vocab_size: 260, hidden_dim: 1, n_layers: 1, max_seq_len: 1,"
        " attention: {type: mqa, n_heads: 1, head_dim: 2}, ffn: {type: swiglu, ffn_dim: 1}}\n"
        "train: {seq_len: 1}\n",
        "<default byte tokenizer>", args.overrides(), args);
  }
  auto tokenizer = create_tokenizer(session);
  std::vector<int32_t> ids;
  for (size_t i = 1; i < pos.size(); ++i) {
    std::vector<int32_t> part;
    try {
      part = load_token_ids(pos[i], *tokenizer, tokenizer->vocab_size());
    } catch (const IoError&) {
      throw;
    } catch (const Error& e) {  // the tokenizer's refusal (e.g. text that is not UTF-8)
      throw IoError("data", "cannot tokenise " + pos[i] + ": " + e.what());
    }
    ids.insert(ids.end(), part.begin(), part.end());
    ids.push_back(tokenizer->eos_id());
    logger()->info("{}: {} tokens", pos[i], part.size());
  }
  write_token_file(*output, ids, tokenizer->vocab_size(), tokenizer_identity(session, *tokenizer));
  std::cout << "wrote " << ids.size() << " tokens (vocabulary " << tokenizer->vocab_size()
            << ") to " << *output << "\n";
  return 0;
}

}  // namespace nnkit::cli
