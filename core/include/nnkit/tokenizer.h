// Purpose: the `tokenizer/*` interface: text <-> token ids, with the special ids every model uses.
// Ownership: a tokenizer owns its vocabulary; encode/decode are const and thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "nnkit/component.h"

namespace nnkit {

class NNKIT_API Tokenizer : public Component {
 public:
  ~Tokenizer() override;
  virtual int64_t vocab_size() const = 0;
  virtual int32_t pad_id() const = 0;
  virtual int32_t unk_id() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
  // Text to ids, without BOS/EOS (callers add them).
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Ids to text; special ids produce no text.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
};

}  // namespace nnkit
