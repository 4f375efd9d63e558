#include "trainer/train_loop.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/sampler.h"
#include "data/token_file.h"
#include "optim/clip.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer.h"
#include "parallel/grad_sync.h"
#include "parallel/param_gather.h"
#include "trainer/checkpoint.h"
#include "trainer/evaluate.h"
#include "trainer/metrics.h"
#include "trainer/model_card.h"
#include "trainer/session.h"

namespace sy {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void write_resolved_config(const Config& config, const std::filesystem::path& run_dir) {
  const std::filesystem::path path = run_dir / "config.yaml";
  std::ofstream out(path);
  out << config_to_yaml(config);
  if (!out) throw std::runtime_error(path.string() + ": cannot write the resolved config");
}

TokenData load_tokens(const Config& config) {
  TokenData data = read_token_file(config.data.path);
  if (data.vocab_size > config.model.vocab_size)
    throw std::runtime_error(config.data.path + ": vocab_size " + std::to_string(data.vocab_size) +
                             " exceeds model.vocab_size " +
                             std::to_string(config.model.vocab_size));
  if (config.eval.batches > 0 &&
      max_validation_batches(data.val.size(), config.train.micro_batch_size,
                             config.model.seq_len) < config.eval.batches)
    throw std::runtime_error(config.data.path + ": eval.batches " +
                             std::to_string(config.eval.batches) +
                             " needs more validation tokens than the " +
                             std::to_string(data.val.size()) + " it has");
  return data;
}

// Every rank reads the token file itself; a rank that cannot is reported by rank 0.
TokenData load_tokens_on_every_rank(const Config& config, Communicator& world) {
  TokenData data;
  std::string problem;
  try {
    data = load_tokens(config);
  } catch (const std::exception& error) {
    problem = error.what();
  }
  agree_or_throw(world, problem);
  return data;
}

// A resumed run's metrics.jsonl keeps the lines up to the checkpoint's step (a run that went on
// past its last checkpoint before it stopped wrote lines that the resumed run writes again).
void truncate_metrics_after(const std::filesystem::path& path, int64_t last_step) {
  std::error_code error;
  if (!std::filesystem::exists(path, error)) return;
  std::ifstream in(path);
  std::ostringstream kept;
  std::string line;
  const std::string key = "{\"step\": ";
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) {
      try {
        if (std::stoll(line.substr(key.size())) > last_step) continue;
      } catch (const std::exception&) {
      }
    }
    kept << line << "\n";
  }
  in.close();
  const std::filesystem::path temporary = path.string() + ".tmp";
  std::ofstream out(temporary, std::ios::trunc);
  out << kept.str();
  out.close();
  if (!out) throw std::runtime_error(temporary.string() + ": cannot write");
  std::filesystem::rename(temporary, path, error);
  if (error) throw std::runtime_error(path.string() + ": cannot replace: " + error.message());
}

// The checkpoint to resume from: `resume` itself, or for "auto" the newest complete one in the
// checkpoint folder as rank 0 finds it ("" when there is none). Collective over `world`.
std::string resolve_resume(const std::string& resume, const Config& config, Communicator& world,
                           std::vector<std::string>& messages) {
  if (resume != "auto") return resume;
  const std::string dir = checkpoint_dir(config);
  std::string found, problem;
  std::vector<std::string> skipped;
  if (world.rank() == 0) {
    try {
      found = find_latest_checkpoint(dir, &skipped);
    } catch (const std::exception& error) {
      problem = dir + ": " + error.what();
    }
  }
  agree_or_throw(world, problem);
  found = world.all_gather_host(found)[0];
  for (const std::string& line : skipped)  // rank 0's findings (only rank 0 reports them)
    if (line.find("latest: missing") == std::string::npos || found.empty())
      messages.push_back("resume auto: skipped " + line);
  if (found.empty())
    messages.push_back("resume auto: no checkpoint in " + dir + "; starting fresh");
  return found;
}

// Sums the per-group statistics of one step into its metrics (means over groups).
struct StepAccumulator {
  int64_t groups = 0, assignments = 0, dropped = 0, rerouted = 0, tokens = 0;
  double loss = 0, lm_loss = 0, aux_loss = 0, z_loss = 0;
  std::vector<std::vector<double>> load_counts;  // [MoE layer][E], choices before drops
  std::vector<int64_t> dropped_per_layer, rerouted_per_layer;
  std::vector<double> entropy_sum;  // [MoE layer], summed over groups

  void add(const GroupStats& stats) {
    ++groups;
    tokens += stats.tokens;
    loss += stats.loss;
    lm_loss += stats.lm_loss;
    aux_loss += stats.aux_loss;
    z_loss += stats.z_loss;
    assignments += stats.assignments;
    dropped += stats.dropped;
    rerouted += stats.rerouted;
    const size_t layers = stats.assignments_per_expert.size();
    load_counts.resize(layers);
    dropped_per_layer.resize(layers);
    rerouted_per_layer.resize(layers);
    entropy_sum.resize(layers);
    for (size_t l = 0; l < layers; ++l) {
      load_counts[l].resize(stats.assignments_per_expert[l].size());
      for (size_t e = 0; e < load_counts[l].size(); ++e)
        load_counts[l][e] += stats.assignments_per_expert[l][e];
      dropped_per_layer[l] += stats.dropped_per_layer[l];
      rerouted_per_layer[l] += stats.rerouted_per_layer[l];
      entropy_sum[l] += stats.entropy_per_layer[l];
    }
  }

  // Sums every field over the ranks, so that the metrics cover the whole step.
  void reduce(Communicator& world) {
    std::vector<double> sums{loss, lm_loss, aux_loss, z_loss};
    sums.insert(sums.end(), entropy_sum.begin(), entropy_sum.end());
    world.all_reduce_host(sums, ReduceOp::sum);
    loss = sums[0], lm_loss = sums[1], aux_loss = sums[2], z_loss = sums[3];
    std::copy(sums.begin() + 4, sums.end(), entropy_sum.begin());
    std::vector<int64_t> counts{groups, assignments, dropped, rerouted, tokens};
    counts.insert(counts.end(), dropped_per_layer.begin(), dropped_per_layer.end());
    counts.insert(counts.end(), rerouted_per_layer.begin(), rerouted_per_layer.end());
    for (const std::vector<double>& layer : load_counts)
      for (double count : layer) counts.push_back(static_cast<int64_t>(count));
    world.all_reduce_host(counts, ReduceOp::sum);
    groups = counts[0], assignments = counts[1], dropped = counts[2], rerouted = counts[3];
    tokens = counts[4];
    size_t next = 5;
    for (int64_t& count : dropped_per_layer) count = counts[next++];
    for (int64_t& count : rerouted_per_layer) count = counts[next++];
    for (std::vector<double>& layer : load_counts)
      for (double& count : layer) count = static_cast<double>(counts[next++]);
  }

  void finish(StepMetrics& m) const {
    m.loss = loss / groups;
    m.lm_loss = lm_loss / groups;
    m.aux_loss = aux_loss / groups;
    m.z_loss = z_loss / groups;
    m.dropped_frac = assignments ? static_cast<double>(dropped) / assignments : 0.0;
    m.rerouted_frac = assignments ? static_cast<double>(rerouted) / assignments : 0.0;
    m.expert_load = load_counts;
    for (size_t l = 0; l < load_counts.size(); ++l) {
      std::vector<double>& load = m.expert_load[l];
      double total = 0;
      for (double count : load) total += count;
      for (double& count : load) count = total > 0 ? count / total : 0.0;
      const LoadBalance balance = load_balance(load);
      m.load_cv.push_back(balance.cv);
      m.load_max_mean.push_back(balance.max_over_mean);
      m.layer_dropped_frac.push_back(total > 0 ? dropped_per_layer[l] / total : 0.0);
      m.router_entropy.push_back(entropy_sum[l] / groups);
    }
  }
};

}  // namespace

TrainSummary train(const Config& config, const TrainOptions& options) {
  ModelSession session = make_model_session(config, options.world);
  Backend& backend = *session.backend;
  Transformer& model = *session.model;
  ProcessGroups& groups = session.groups;
  Communicator& world = *groups.world;
  const bool lead = world.rank() == 0;  // rank 0 alone prints and writes files
  RunConsole console(options.print && lead);  // the console, and <run.dir>/train.log

  std::vector<Param*> params = model.params();
  std::unique_ptr<Optimizer> optimizer = make_optimizer(config.train);

  // Resume: parameters, optimizer moments and step count, and the step (the sampler is
  // stateless, so the step is the data position).
  TrainSummary summary;
  int64_t start_step = 0;
  if (!options.resume.empty()) {
    const std::string path = resolve_resume(options.resume, config, world, summary.resume_messages);
    if (!path.empty()) {
      const LoadResult loaded = load_checkpoint(path, config, model, optimizer.get(), groups, backend);
      start_step = loaded.header.step;
      summary.resumed_from = path;
      summary.resume_messages.push_back("resumed from " + path + " at step " +
                                        std::to_string(start_step));
      for (const std::string& line : loaded.diff.notes)
        summary.resume_messages.push_back("note: changed since the checkpoint: " + line);
      for (const std::string& line : loaded.diff.warnings)
        summary.resume_messages.push_back(
            "warning: changed since the checkpoint: " + line +
            "; the routing groups differ, so the run does not continue the checkpoint's trajectory "
            "exactly");
    }
    if (options.print && lead) {
      for (const std::string& line : summary.resume_messages)
        console.write(line.rfind("warning", 0) == 0 ? stderr : stdout, "%s\n", line.c_str());
      std::fflush(stdout);
    }
  }
  summary.first_step = start_step;

  const std::filesystem::path run_dir = config.run.dir;
  const std::string checkpoints = checkpoint_dir(config);
  std::unique_ptr<MetricsLog> metrics_log;
  std::string problem;
  if (lead) {
    try {
      std::filesystem::create_directories(run_dir);
      write_resolved_config(config, run_dir);
      console.open_log((run_dir / "train.log").string());
      const std::filesystem::path metrics_path = run_dir / "metrics.jsonl";
      const bool resumed = !summary.resumed_from.empty();
      if (resumed) truncate_metrics_after(metrics_path, start_step);
      metrics_log = std::make_unique<MetricsLog>(metrics_path.string(), resumed);
    } catch (const std::exception& error) {
      problem = error.what();
    }
  }
  agree_or_throw(world, problem);
  const TokenData data = load_tokens_on_every_rank(config, world);
  const StepSampler sampler(data.train, config.model.seq_len, config.seed);

  const TrainConfig& tc = config.train;
  const int64_t W = world.size(), rank = world.rank();
  const int64_t B = tc.micro_batch_size, S = config.model.seq_len;
  if (options.print && lead) {
    console.print("%s", format_model_card(config, make_model_card(config)).c_str());
    console.print("  %lld ranks (expert_parallel %lld, grad_accum_steps %lld): global batch %lld "
                  "sequences\n",
                  static_cast<long long>(W),
                  static_cast<long long>(config.parallel.expert_parallel),
                  static_cast<long long>(tc.grad_accum_steps),
                  static_cast<long long>(W * tc.grad_accum_steps * B));
    console.print("  run dir %s, data %s (%zu train / %zu val tokens)\n", run_dir.c_str(),
                  config.data.path.c_str(), data.train.size(), data.val.size());
    std::fflush(stdout);
  }

  // SPEC.md section 3: the step's objective is the mean over its W*A routing groups.
  const double loss_scale = 1.0 / static_cast<double>(W * tc.grad_accum_steps);
  std::vector<int32_t> inputs(B * S), targets(B * S);

  if (options.print && lead && start_step >= tc.steps)
    console.print("nothing to train: the checkpoint is at step %lld and train.steps is %lld\n",
                  static_cast<long long>(start_step), static_cast<long long>(tc.steps));
  const Clock::time_point run_start = Clock::now();
  Clock::time_point interval_start = run_start;
  int64_t interval_tokens = 0;
  bool grads_zero = false;  // Optimizer::step leaves the grads zero (optim/optimizer.h)
  for (int64_t step = start_step; step < tc.steps; ++step) {
    if (!grads_zero) model.zero_grads();
    StepAccumulator acc;
    for (int64_t micro = 0; micro < tc.grad_accum_steps; ++micro) {
      const int64_t group = micro * W + rank;  // SPEC.md section 3
      sampler.group(step, group, B, inputs.data(), targets.data());
      acc.add(model.forward_backward(inputs, targets, B, true, loss_scale));
    }
    synchronize_gradients(params, groups);
    const double grad_norm = distributed_grad_norm(backend, params, groups);
    const double lr = lr_at(tc, step);
    // The clip scale, the update, the bf16 copies of the new master weights and the zeroing of
    // the grads, in one pass on CUDA (optim/optimizer.h).
    optimizer->step(backend, params, lr, clip_factor(grad_norm, tc.grad_clip));
    grads_zero = true;

    acc.reduce(world);
    model.update_expert_bias(acc.load_counts);  // aux-loss-free balancing (a no-op when off)
    StepMetrics metrics;
    metrics.step = step + 1;
    metrics.lr = lr;
    metrics.grad_norm = grad_norm;
    acc.finish(metrics);
    summary.losses.push_back(metrics.loss);
    summary.dropped_any |= metrics.dropped_frac > 0;
    interval_tokens += acc.tokens;
    if (!std::isfinite(metrics.loss) || !std::isfinite(grad_norm))
      throw CollectiveError("step " + std::to_string(step + 1) + ": loss " +
                            std::to_string(metrics.loss) + ", grad_norm " +
                            std::to_string(grad_norm) +
                            " (not finite); lower train.lr or set train.grad_clip");

    const bool last = step + 1 == tc.steps;
    const bool first = step == start_step;
    if ((step + 1) % config.run.log_every == 0 || last || first) {
      std::vector<int64_t> peak{static_cast<int64_t>(backend.peak_memory_bytes())};
      world.all_reduce_host(peak, ReduceOp::max);
      metrics.peak_memory_bytes = peak[0];
      if (first && options.print && lead && peak[0] > 0)
        console.print("  peak device memory after the first step: %.1f MiB per rank (max over "
                      "ranks; buffers are reused from here on)\n",
                      peak[0] / 1048576.0);
    }
    if ((step + 1) % config.run.log_every == 0 || last) {
      backend.synchronize();  // a device's queued work belongs to this interval
      const double interval_s = seconds_since(interval_start);
      metrics.tokens_per_s = interval_s > 0 ? interval_tokens / interval_s : 0.0;
      metrics.eta_s = seconds_since(run_start) / (step + 1 - start_step) * (tc.steps - step - 1);
      for (auto& [path, bias] : model.expert_biases())
        metrics.expert_bias.push_back(backend.read(bias));
      if (lead) metrics_log->write_step(metrics);
      if (options.print && lead) console.print("%s\n", progress_line(metrics, tc.steps).c_str());
      interval_start = Clock::now();
      interval_tokens = 0;
    }
    const bool eval_now = config.eval.batches > 0 &&
                          ((config.eval.every > 0 && (step + 1) % config.eval.every == 0) || last);
    if (eval_now) {
      const Clock::time_point eval_start = Clock::now();
      summary.final_val_loss = evaluate(model, data.val, B, config.eval.batches, world);
      if (lead) metrics_log->write_eval(step + 1, summary.final_val_loss);
      if (options.print && lead)
        console.print("eval   step %6lld | val_loss %.4f | %d batches in %.1fs\n",
                      static_cast<long long>(step + 1), summary.final_val_loss,
                      static_cast<int>(config.eval.batches), seconds_since(eval_start));
      interval_start += Clock::now() - eval_start;  // evaluation does not count as training time
    }
    const bool save_now =
        (config.checkpoint.every > 0 && (step + 1) % config.checkpoint.every == 0) || last;
    if (save_now) {
      const Clock::time_point save_start = Clock::now();
      summary.last_checkpoint = save_checkpoint(checkpoints, step + 1, config, model,
                                                optimizer.get(), groups, backend);
      if (options.print && lead) {
        std::error_code error;
        const auto bytes = std::filesystem::file_size(summary.last_checkpoint, error);
        console.print("saved  step %6lld | %s (%.1f MB in %.2fs)\n",
                      static_cast<long long>(step + 1), summary.last_checkpoint.c_str(),
                      error ? 0.0 : bytes / 1e6, seconds_since(save_start));
      }
      interval_start += Clock::now() - save_start;  // nor does saving
    }
    if (options.print && lead) std::fflush(stdout);
  }
  summary.steps = tc.steps;
  summary.seconds = seconds_since(run_start);
  const int64_t steps_run = std::max<int64_t>(0, tc.steps - start_step);
  summary.tokens_per_s =
      summary.seconds > 0 ? steps_run * W * tc.grad_accum_steps * B * S / summary.seconds : 0.0;
  if (options.print && lead && steps_run > 0)
    console.print("done: %lld steps in %.1fs (%.0f tokens/s), final val_loss %.4f\n",
                  static_cast<long long>(steps_run), summary.seconds, summary.tokens_per_s,
                  summary.final_val_loss);
  if (options.collect_parameters)
    for (Param* param : params) {
      std::vector<double> full = gather_to_rank0(param->value, param->is_expert, groups, backend);
      if (lead) summary.parameters.emplace_back(param->path, std::move(full));
    }
  return summary;
}

}  // namespace sy
