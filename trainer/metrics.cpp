#include "trainer/metrics.h"

#include <cmath>
#include <stdexcept>

namespace sy {

std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  char text[40];
  std::snprintf(text, sizeof text, "%.17g", value);
  return text;
}

std::string json_string(const std::string& value) {
  std::string out = "\"";
  for (char c : value) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
      out += escaped;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

void JsonLine::key(const std::string& name) {
  if (!body_.empty()) body_ += ", ";
  body_ += json_string(name) + ": ";
}

JsonLine& JsonLine::add(const std::string& name, double value) {
  key(name);
  body_ += json_number(value);
  return *this;
}

JsonLine& JsonLine::add(const std::string& name, int64_t value) {
  key(name);
  body_ += std::to_string(value);
  return *this;
}

JsonLine& JsonLine::add(const std::string& name, const std::string& value) {
  key(name);
  body_ += json_string(value);
  return *this;
}

JsonLine& JsonLine::add(const std::string& name, const std::vector<std::vector<double>>& value) {
  key(name);
  body_ += "[";
  for (size_t i = 0; i < value.size(); ++i) {
    body_ += i ? ", [" : "[";
    for (size_t j = 0; j < value[i].size(); ++j) body_ += (j ? ", " : "") + json_number(value[i][j]);
    body_ += "]";
  }
  body_ += "]";
  return *this;
}

MetricsLog::MetricsLog(const std::string& path, bool append) : path_(path) {
  file_ = std::fopen(path.c_str(), append ? "a" : "w");
  if (!file_) throw std::runtime_error(path + ": cannot open for writing");
}

MetricsLog::~MetricsLog() {
  if (file_) std::fclose(file_);
}

void MetricsLog::write_line(const std::string& line) {
  // Flushed per line so that a crash leaves every completed record readable.
  if (std::fprintf(file_, "%s\n", line.c_str()) < 0 || std::fflush(file_) != 0)
    throw std::runtime_error(path_ + ": write failed");
}

void MetricsLog::write_step(const StepMetrics& m) {
  write_line(JsonLine()
                 .add("step", m.step)
                 .add("loss", m.loss)
                 .add("lm_loss", m.lm_loss)
                 .add("aux_loss", m.aux_loss)
                 .add("z_loss", m.z_loss)
                 .add("lr", m.lr)
                 .add("grad_norm", m.grad_norm)
                 .add("tokens_per_s", m.tokens_per_s)
                 .add("dropped_frac", m.dropped_frac)
                 .add("expert_load", m.expert_load)
                 .add("peak_memory_bytes", m.peak_memory_bytes)
                 .str());
}

void MetricsLog::write_eval(int64_t step, double val_loss) {
  write_line(JsonLine().add("step", step).add("val_loss", val_loss).str());
}

namespace {
std::string format_duration(double seconds) {
  const int64_t total = static_cast<int64_t>(std::llround(std::max(0.0, seconds)));
  char text[32];
  if (total >= 3600)
    std::snprintf(text, sizeof text, "%lldh%02lldm", static_cast<long long>(total / 3600),
                  static_cast<long long>(total % 3600 / 60));
  else
    std::snprintf(text, sizeof text, "%lldm%02llds", static_cast<long long>(total / 60),
                  static_cast<long long>(total % 60));
  return text;
}
}  // namespace

std::string progress_line(const StepMetrics& m, int64_t total_steps) {
  char text[360];
  int length = std::snprintf(
      text, sizeof text,
      "step %6lld/%lld | loss %.4f (lm %.4f aux %.4f z %.4f) | lr %.2e | gnorm %.3f | "
      "%.0f tok/s | dropped %.2f%% | eta %s",
      static_cast<long long>(m.step), static_cast<long long>(total_steps), m.loss, m.lm_loss,
      m.aux_loss, m.z_loss, m.lr, m.grad_norm, m.tokens_per_s, 100.0 * m.dropped_frac,
      format_duration(m.eta_s).c_str());
  if (m.peak_memory_bytes > 0 && length > 0 && length < static_cast<int>(sizeof text))
    std::snprintf(text + length, sizeof text - length, " | mem %.2f GiB",
                  m.peak_memory_bytes / 1073741824.0);
  return text;
}

}  // namespace sy
