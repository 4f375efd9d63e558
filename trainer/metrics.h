// metrics.jsonl and the console progress line. Floats are written at round-trip precision
// (17 significant digits) so that runs can be compared bit for bit from the file.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace sy {

// What one optimizer step produced, reduced over its routing groups.
struct StepMetrics {
  int64_t step = 0;         // optimizer steps completed (1-based)
  double loss = 0.0;        // mean over groups of the group loss
  double lm_loss = 0.0, aux_loss = 0.0, z_loss = 0.0;
  double lr = 0.0;
  double grad_norm = 0.0;   // before clipping
  double tokens_per_s = 0.0;
  double dropped_frac = 0.0;
  std::vector<std::vector<double>> expert_load;  // [MoE layer][E], fractions before drops
  double eta_s = 0.0;
  int64_t peak_memory_bytes = 0;  // device memory, max over ranks (0 on the CPU)
};

// A JSON object written field by field, in insertion order.
class JsonLine {
 public:
  JsonLine& add(const std::string& key, double value);
  JsonLine& add(const std::string& key, int64_t value);
  JsonLine& add(const std::string& key, const std::string& value);
  JsonLine& add(const std::string& key, const std::vector<std::vector<double>>& value);
  std::string str() const { return "{" + body_ + "}"; }

 private:
  void key(const std::string& name);
  std::string body_;
};

std::string json_number(double value);  // 17 significant digits; non-finite as null
std::string json_string(const std::string& value);

class MetricsLog {
 public:
  // Truncates, or with `append` (a resumed run) adds to what is there.
  explicit MetricsLog(const std::string& path, bool append = false);
  ~MetricsLog();
  void write_step(const StepMetrics& metrics);
  void write_eval(int64_t step, double val_loss);

 private:
  void write_line(const std::string& line);
  std::FILE* file_ = nullptr;
  std::string path_;
};

std::string progress_line(const StepMetrics& metrics, int64_t total_steps);

}  // namespace sy
