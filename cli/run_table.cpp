// Purpose: see run_table.h.
#include "run_table.h"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace nnkit::cli {

namespace {

std::string csv_cell(const std::string& cell) {
  if (cell.find_first_of(",\"\n") == std::string::npos) return cell;
  std::string out = "\"";
  for (char c : cell) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string markdown_cell(const std::string& cell) {
  std::string out;
  for (char c : cell) out += c == '|' ? std::string("\\|") : std::string(1, c);
  return out;
}

}  // namespace

std::string TextTable::str() const {
  std::vector<size_t> widths(header_.size(), 0);
  for (size_t c = 0; c < header_.size(); ++c) widths[c] = header_[c].size();
  for (const auto& row : rows_) {
    for (size_t c = 0; c < row.size() && c < widths.size(); ++c) {
      widths[c] = std::max(widths[c], row[c].size());
    }
  }
  std::ostringstream out;
  const auto line = [&](const std::vector<std::string>& cells) {
    for (size_t c = 0; c < widths.size(); ++c) {
      std::string cell = c < cells.size() ? cells[c] : "";
      if (c + 1 < widths.size()) cell.resize(widths[c] + 2, ' ');
      out << cell;
    }
    out << "\n";
  };
  line(header_);
  for (const auto& row : rows_) line(row);
  return out.str();
}

std::string TextTable::markdown() const {
  std::ostringstream out;
  const auto line = [&](const std::vector<std::string>& cells) {
    out << "|";
    for (size_t c = 0; c < header_.size(); ++c) {
      out << " " << markdown_cell(c < cells.size() ? cells[c] : "") << " |";
    }
    out << "\n";
  };
  line(header_);
  out << "|";
  for (size_t c = 0; c < header_.size(); ++c) out << " --- |";
  out << "\n";
  for (const auto& row : rows_) line(row);
  return out.str();
}

std::string TextTable::csv() const {
  std::ostringstream out;
  const auto line = [&](const std::vector<std::string>& cells) {
    for (size_t c = 0; c < header_.size(); ++c) {
      out << (c ? "," : "") << csv_cell(c < cells.size() ? cells[c] : "");
    }
    out << "\n";
  };
  line(header_);
  for (const auto& row : rows_) line(row);
  return out.str();
}

std::string format_optional(const std::optional<double>& value, int precision, bool fixed,
                            const std::string& missing) {
  if (!value) return missing;
  std::ostringstream out;
  if (fixed) out.setf(std::ios::fixed);
  out.precision(precision);
  out << *value;
  return out.str();
}

std::string join_words(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : " ") + s;
  return out;
}

std::string format_duration_short(double seconds) {
  if (!(seconds > 0)) return "-";
  std::ostringstream out;
  if (seconds < 60) {
    out.setf(std::ios::fixed);
    out.precision(1);
    out << seconds << "s";
    return out.str();
  }
  const auto total = static_cast<long long>(std::llround(seconds));
  if (total >= 3600) out << total / 3600 << "h";
  const long long minutes = (total % 3600) / 60, secs = total % 60;
  out << minutes << "m" << (secs < 10 ? "0" : "") << secs << "s";
  return out.str();
}

nlohmann::json run_overview_json(const RunOverview& run) {
  const auto optional = [](const std::optional<double>& v) {
    return v ? nlohmann::json(*v) : nlohmann::json();
  };
  return {{"dir", run.dir.string()},
          {"name", run.name},
          {"status", to_string(run.status)},
          {"last_step", run.last_step},
          {"total_steps", run.total_steps},
          {"final_val_loss", optional(run.final_val_loss)},
          {"best_val_loss", optional(run.best_val_loss)},
          {"tokens_per_s", optional(run.tokens_per_s)},
          {"wall_s", run.wall_s},
          {"params_total", run.params_total},
          {"params_active", run.params_active},
          {"overrides", run.overrides},
          {"error", run.error}};
}

}  // namespace nnkit::cli
