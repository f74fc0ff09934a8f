// Purpose: the out-of-line anchor of TokenizerTrainer, so its vtable and type info live once, in
// the core library, and dynamic_cast from a plugin's object works (see interfaces.cpp).
#include "nnkit/tokenizer_trainer.h"

namespace nnkit {

TokenizerTrainer::~TokenizerTrainer() = default;

}  // namespace nnkit
