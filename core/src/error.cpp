// Purpose: the exception family's out-of-line members (anchors their type info in the core).
#include "nnkit/error.h"

namespace nnkit {

Error::Error(const std::string& component, const std::string& message)
    : std::runtime_error(component.empty() ? message : "[" + component + "] " + message),
      component_(component),
      detail_(message) {}

Error::~Error() = default;
ConfigError::~ConfigError() = default;
PluginError::~PluginError() = default;
IoError::~IoError() = default;
ShapeError::~ShapeError() = default;
UsageError::~UsageError() = default;

}  // namespace nnkit
