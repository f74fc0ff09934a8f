// Purpose: the entry point of each `nnkit` sub-command; main.cpp dispatches by name.
// Each returns the process exit code and throws nnkit::Error subclasses for user errors.
#pragma once

#include <string>
#include <vector>

namespace nnkit::cli {

using Args = std::vector<std::string>;

int run_plugins(const Args& args);
int run_validate(const Args& args);
int run_eval(const Args& args);
int run_train(const Args& args);
int run_generate(const Args& args);
int run_data(const Args& args);
int run_plot(const Args& args);
int run_tokenizer(const Args& args);
int run_convert(const Args& args);
int run_logits(const Args& args);
int run_check_plugin(const Args& args);
int run_runs(const Args& args);
int run_sweep(const Args& args);

}  // namespace nnkit::cli
