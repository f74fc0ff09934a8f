// Purpose: the one exception family of nnkit. Every message is tagged with the component that
// raised it ("[attention/mqa] n_heads (12) is not divisible by n_kv_heads (5)").
// Ownership: value types. Defined once, in the core library, so that a plugin's throw is caught by
// the core's catch across the shared-library boundary.
#pragma once

#include <stdexcept>
#include <string>

#include "nnkit/export.h"

namespace nnkit {

class NNKIT_API Error : public std::runtime_error {
 public:
  Error(const std::string& component, const std::string& message);
  ~Error() override;
  const std::string& component() const { return component_; }
  // The message without the "[component] " prefix.
  const std::string& detail() const { return detail_; }

 private:
  std::string component_;
  std::string detail_;
};

// Bad configuration: YAML syntax, unknown keys, wrong types, out-of-range values.
class NNKIT_API ConfigError : public Error {
 public:
  using Error::Error;
  ~ConfigError() override;
};

// Plugin discovery and loading: missing plugin, ABI mismatch, not an nnkit library.
class NNKIT_API PluginError : public Error {
 public:
  using Error::Error;
  ~PluginError() override;
};

// Files: data, checkpoints, run directories.
class NNKIT_API IoError : public Error {
 public:
  using Error::Error;
  ~IoError() override;
};

// Shapes or dtypes that do not fit an op's contract (programming or wiring errors).
class NNKIT_API ShapeError : public Error {
 public:
  using Error::Error;
  ~ShapeError() override;
};

// Invalid command-line usage.
class NNKIT_API UsageError : public Error {
 public:
  using Error::Error;
  ~UsageError() override;
};

}  // namespace nnkit

// Throws ShapeError tagged with `component` unless `cond` holds.
#define NNKIT_CHECK_SHAPE(cond, component, message)                 \
  do {                                                              \
    if (!(cond)) throw ::nnkit::ShapeError((component), (message)); \
  } while (0)
