// Purpose: presenting runs as tables: an aligned text table (`nnkit runs ls`), the same rows as
// Markdown and CSV (the sweep's summary.md and summary.csv), a RunOverview as JSON, and short
// durations ("2m05s").
// Ownership: value types. Thread-safety: pure functions.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "run_record.h"

namespace nnkit::cli {

class TextTable {
 public:
  explicit TextTable(std::vector<std::string> header) : header_(std::move(header)) {}
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  std::string str() const;       // columns padded to their widest cell
  std::string markdown() const;  // a GitHub Markdown table ('|' in cells escaped)
  std::string csv() const;       // RFC 4180: cells with a comma, quote or newline are quoted

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

// `value` with `precision` digits after the point (`fixed`) or significant digits (not fixed,
// 17 reads back as the same double); `missing` when there is no value.
std::string format_optional(const std::optional<double>& value, int precision, bool fixed,
                            const std::string& missing = "");
// The items separated by single spaces.
std::string join_words(const std::vector<std::string>& items);
// 125.3 -> "2m05s"; 3.2 -> "3.2s"; 0 -> "-".
std::string format_duration_short(double seconds);
nlohmann::json run_overview_json(const RunOverview& run);

}  // namespace nnkit::cli
