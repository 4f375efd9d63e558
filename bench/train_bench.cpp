// Training-step throughput and peak device memory of one config on one rank, with its own
// short loop (sample -> forward/backward -> clip -> AdamW -> refresh the compute weights):
//   sy_bench_train CONFIG [--set section.key=value ...] [--steps N] [--warmup W]
//                  [--profile-steps P] [--save-init FILE.h5] [--tokens FILE.bin]
// The backend and precision come from run.backend / run.precision. Tokens come from data.path
// when that file exists, else from a synthetic uniform stream (with data.document_mask, cut into
// documents of uniform random length in [1, 2 * --doc-length - 1], mean --doc-length, default
// 512). Prints one line per logged step
// and a JSON summary line last. Timing excludes the first W steps (allocation, cuBLAS set-up).
// Besides tokens/s and peak memory the summary has MFU, the load balance of the timed steps
// (per MoE layer, the cv and max/mean of the tokens per expert, averaged over those steps) and
// the first step's loss, its parts and its gradient norm, and where the time before the timed
// steps went: setup_s (tokens, the model's construction and initialisation, the optimizer) and
// warmup_s (the W untimed steps: allocation, cuDNN plans, cuBLAS heuristics).
//   --profile-steps P  P more steps after the timed ones under the event-timed op profile
//                      (CUDA only; cuda_profile_begin): the per-op table, before the summary
//   --save-init FILE   the initial weights as a checkpoint (docs/checkpoint.md; no optimizer
//                      state), for bench/gpu_step/pytorch_model.py to start from the same model
//   --tokens FILE      every step's batch as int32 [step][micro][inputs, targets][B*S], and
//                      FILE.json with the settings the PyTorch model needs (bench/gpu_step);
//                      not with data.document_mask, which that model does not have
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/sampler.h"
#include "data/token_file.h"
#include "model/rng.h"
#include "model/transformer.h"
#include "optim/clip.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer.h"
#include "parallel/local_exchange.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/metrics.h"
#include "trainer/model_card.h"
#include "trainer/session.h"
#ifdef SY_HAVE_CUDA
#include "model/cuda/cuda_backend.h"
#endif

namespace {

using namespace sy;

// H100/H200 SXM dense bf16 peak, the denominator of MFU.
constexpr double kPeakFlops = 989e12;

// Training FLOPs per token: 6 x active parameters (forward and backward of every weight a token
// multiplies by) + 6 x L x S x D for causal attention's scores and weighted sums.
double flops_per_token(const Config& config) {
  const ModelCard card = make_model_card(config);
  return 6.0 * static_cast<double>(card.active_params) +
         6.0 * static_cast<double>(config.model.n_layers * config.model.seq_len *
                                   config.model.d_model);
}

// MPI only for --save-init (save_checkpoint is collective over a world of one here).
struct MpiIfNeeded {
  bool started = false;
  void start() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      MPI_Init(nullptr, nullptr);
      started = true;
    }
  }
  ~MpiIfNeeded() {
    if (started) MPI_Finalize();
  }
};

// save_checkpoint writes <dir>/step_00000000.h5 and <dir>/latest and prunes <dir> to keep_last:
// a folder of its own beside `path`, renamed into place, keeps anything else there untouched.
void save_initial_weights(const std::string& path, Config config, Transformer& model,
                          Backend& backend) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const fs::path dir = fs::path(path + ".saving");
  fs::remove_all(dir);
  config.checkpoint.keep_last = 1;
  std::string written;
  {
    ProcessGroups groups = make_process_groups(MPI_COMM_WORLD, 1, backend, CommunicatorKind::mpi);
    written = save_checkpoint(dir.string(), 0, config, model, nullptr, groups, backend);
  }
  fs::rename(written, target);
  fs::remove_all(dir);
}

// The batches of steps [0, steps) as int32 [step][micro][inputs, targets][B*S] in `path`, and
// beside it (path + ".json") what bench/gpu_step/pytorch_model.py needs to build the same model
// and train it the same way.
void write_batches(const std::string& path, const Config& config, const StepSampler& sampler,
                   int64_t steps, int64_t warmup) {
  const TrainConfig& tc = config.train;
  const int64_t B = tc.micro_batch_size, S = config.model.seq_len;
  std::vector<int32_t> inputs(B * S), targets(B * S);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  for (int64_t step = 0; step < steps; ++step)
    for (int64_t micro = 0; micro < tc.grad_accum_steps; ++micro) {
      sampler.group(step, micro, B, inputs.data(), targets.data());
      out.write(reinterpret_cast<const char*>(inputs.data()), B * S * sizeof(int32_t));
      out.write(reinterpret_cast<const char*>(targets.data()), B * S * sizeof(int32_t));
    }
  out.close();
  if (!out) throw std::runtime_error(path + ": cannot write the token batches");

  const ModelConfig& m = config.model;
  const MoeConfig& moe = config.moe;
  std::vector<double> moe_layers;
  for (bool is_moe : moe_layer_mask(config)) moe_layers.push_back(is_moe ? 1.0 : 0.0);
  const ModelCard card = make_model_card(config);
  JsonLine meta;
  meta.add("name", config.name)
      .add("tokens_file", std::filesystem::path(path).filename().string())
      .add("steps", steps)
      .add("warmup", warmup)
      .add("grad_accum_steps", tc.grad_accum_steps)
      .add("micro_batch_size", B)
      .add("vocab_size", m.vocab_size)
      .add("seq_len", S)
      .add("d_model", m.d_model)
      .add("n_layers", m.n_layers)
      .add("n_heads", m.n_heads)
      .add("ffn_hidden", m.ffn_hidden)
      .add("tie_embeddings", static_cast<int64_t>(m.tie_embeddings))
      .add("moe_layers", moe_layers)
      .add("num_experts", moe.num_experts)
      .add("top_k", moe.routing.top_k)
      .add("expert_hidden", moe.expert_hidden)
      .add("shared_expert_hidden", moe.shared_expert_hidden)
      .add("capacity_factor", moe.capacity_factor)
      .add("normalize_topk", static_cast<int64_t>(moe.routing.normalizes()))
      .add("aux_loss_coef", moe.aux_loss_coef)
      .add("z_loss_coef", moe.z_loss_coef)
      .add("bias_update_rate", moe.bias_update_rate)
      .add("aux_loss_scope", std::string(to_string(moe.aux_loss_scope)))
      .add("router_score", std::string(to_string(moe.routing.score)))
      .add("optimizer", std::string(to_string(tc.optimizer)))
      .add("lr", tc.lr)
      .add("min_lr", tc.min_lr)
      .add("warmup_steps", tc.warmup_steps)
      .add("train_steps", tc.steps)
      .add("weight_decay", tc.weight_decay)
      .add("beta1", tc.beta1)
      .add("beta2", tc.beta2)
      .add("eps", tc.eps)
      .add("grad_clip", tc.grad_clip)
      .add("precision", std::string(to_string(config.run.precision)))
      .add("parameters", card.total_params)
      .add("active_parameters", card.active_params)
      .add("flops_per_token", flops_per_token(config));
  std::ofstream json(path + ".json", std::ios::trunc);
  json << meta.str() << "\n";
  json.close();
  if (!json) throw std::runtime_error(path + ".json: cannot write");
}

// decimals < 0: every digit (%.17g, which reads back as the same double), for comparing runs
// bit for bit (bench/ab).
std::string json_list(const std::vector<double>& values, int decimals = 4) {
  std::string out = "[";
  char number[48];
  for (size_t i = 0; i < values.size(); ++i) {
    if (decimals < 0) std::snprintf(number, sizeof number, "%s%.17g", i ? ", " : "", values[i]);
    else std::snprintf(number, sizeof number, "%s%.*f", i ? ", " : "", decimals, values[i]);
    out += number;
  }
  return out + "]";
}

}  // namespace

int main(int argc, char** argv) {
  using namespace sy;
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: %s CONFIG [--set k=v ...] [--steps N] [--warmup W] [--profile-steps P] "
                 "[--save-init FILE.h5] [--tokens FILE.bin] [--doc-length N]\n",
                 argv[0]);
    return 2;
  }
  MpiIfNeeded mpi;  // first, so that MPI outlives everything that may use it
  try {
    std::vector<std::string> overrides;
    int64_t steps = 60, warmup = 10, profile_steps = 0, doc_length = 512;
    std::string save_init, tokens_path;
    if (argc % 2 != 0) throw std::runtime_error(std::string(argv[argc - 1]) + " needs a value");
    for (int i = 2; i + 1 < argc; i += 2) {
      const std::string flag = argv[i];
      if (flag == "--set") overrides.push_back(argv[i + 1]);
      else if (flag == "--steps") steps = std::stoll(argv[i + 1]);
      else if (flag == "--warmup") warmup = std::stoll(argv[i + 1]);
      else if (flag == "--profile-steps") profile_steps = std::stoll(argv[i + 1]);
      else if (flag == "--save-init") save_init = argv[i + 1];
      else if (flag == "--tokens") tokens_path = argv[i + 1];
      else if (flag == "--doc-length") doc_length = std::stoll(argv[i + 1]);
      else throw std::runtime_error("unknown flag " + flag);
    }
    if (warmup >= steps) throw std::runtime_error("--warmup must be below --steps");
    if (profile_steps < 0) throw std::runtime_error("--profile-steps must be >= 0");
    const Config config = load_config(argv[1], overrides);
    if (!config.data.train_paths.empty())
      throw std::runtime_error(std::string(argv[1]) +
                               ": data.train_paths: this bench reads one token file (data.path)");
    using Clock = std::chrono::steady_clock;
    const Clock::time_point setup_start = Clock::now();
    std::unique_ptr<Backend> backend = make_backend(config.run);

    if (doc_length < 1) throw std::runtime_error("--doc-length must be >= 1");
    const bool documents = config.data.document_mask;
    if (documents && !tokens_path.empty())
      throw std::runtime_error("--tokens: the PyTorch model has no data.document_mask");
    std::vector<int32_t> train_tokens;
    std::vector<int64_t> doc_starts;
    std::string source = config.data.path;
    if (std::filesystem::exists(config.data.path)) {
      TokenData data = read_token_file(config.data.path);
      train_tokens = std::move(data.train);
      if (data.documents) doc_starts = std::move(data.train_doc_starts);
    } else {
      source = "synthetic";
      CounterRng rng(7);
      train_tokens.resize(size_t{1} << 22);
      for (int32_t& t : train_tokens)
        t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(config.model.vocab_size)));
      CounterRng lengths(8);
      for (int64_t start = 0; start < static_cast<int64_t>(train_tokens.size());
           start += 1 + static_cast<int64_t>(lengths.below(2 * doc_length - 1)))
        doc_starts.push_back(start);
    }
    const std::vector<uint8_t> no_mask;  // outlives the sampler, which keeps pointers
    StepSampler sampler(
        std::make_shared<TokensInMemory>(train_tokens, no_mask,
                                         documents && !doc_starts.empty() ? &doc_starts : nullptr),
        config.model.seq_len, config.seed);
    if (documents) {
      sampler.mask_documents();  // a data.path without boundaries is refused here
      source += ", document masking (" + std::to_string(doc_starts.size()) +
                " documents, mean length " +
                std::to_string(train_tokens.size() / std::max<size_t>(doc_starts.size(), 1)) + ")";
    }
    if (!tokens_path.empty())
      write_batches(tokens_path, config, sampler, steps + profile_steps, warmup);

    TransformerOptions options{config.model, config.moe, moe_layer_mask(config),
                               compute_dtype(config.run.precision)};
    options.master_dtype = DType::f32;
    options.recompute = config.train.recompute;  // docs/cuda.md, Memory
    options.bf16_grads = bf16_grads(config);     // run.weight_grads, on one rank
    options.bf16_grad_storage = bf16_grad_storage(config, 1);
    std::unique_ptr<LocalExchange> exchange;
    if (config.moe.num_experts > 0)
      exchange = std::make_unique<LocalExchange>(*backend, config.moe.num_experts);
    Transformer model(*backend, options, exchange.get());
    model.init_parameters(config.seed);
    if (!save_init.empty()) {
      mpi.start();
      save_initial_weights(save_init, config, model, *backend);
    }
    std::vector<Param*> params = model.params();
    int64_t n_params = 0;
    for (const Param* p : params) n_params += p->value.numel();
    std::unique_ptr<Optimizer> optimizer = make_optimizer(optimizer_settings(config.train));

    const TrainConfig& tc = config.train;
    const int64_t B = tc.micro_batch_size, S = config.model.seq_len;
    std::vector<int32_t> inputs(B * S), targets(B * S), doc_start(documents ? B * S : 0);
    backend->synchronize();
    const double setup_s = std::chrono::duration<double>(Clock::now() - setup_start).count();
    std::printf(
        "bench: %s on %s, %s (bf16 weight gradients: %s), %lld parameters, %lld tokens/step, "
        "data %s; set-up %.1f s\n",
        config.name.c_str(), backend->name().c_str(), to_string(config.run.precision),
        bf16_grads_name(options.bf16_grad_storage), static_cast<long long>(n_params),
        static_cast<long long>(B * S * tc.grad_accum_steps), source.c_str(), setup_s);
    Clock::time_point start = Clock::now();
    double warmup_s = 0;
    double seconds = 0;
    double first_loss = 0, last_loss = 0;
    GroupStats first;  // step 0's parts of the loss, averaged over its micro-steps
    double first_grad_norm = 0;
    // Every step's loss and gradient norm, warm-up included, for comparing trajectories: the
    // norm sums every gradient, so equal norms at every step are a close check of equal bits.
    std::vector<double> losses, grad_norms;
    // Per MoE layer, summed over the timed steps: cv and max/mean of the step's tokens per expert.
    const int64_t n_moe = model.num_moe_layers();
    std::vector<double> cv_sum(n_moe, 0.0), max_mean_sum(n_moe, 0.0);
    std::string profile_table;
    for (int64_t step = 0; step < steps + profile_steps; ++step) {
      if (step == warmup) {
        backend->synchronize();
        warmup_s = std::chrono::duration<double>(Clock::now() - start).count();
        start = Clock::now();
      }
      if (step == steps) {  // the timed window ends; the profiled steps follow
        backend->synchronize();
        seconds = std::chrono::duration<double>(Clock::now() - start).count();
#ifdef SY_HAVE_CUDA
        cuda_profile_begin(*backend);
#endif
      }
      if (step == 0) model.zero_grads();  // later steps: Optimizer::step leaves them stale, to be overwritten
      double loss = 0;
      std::vector<std::vector<double>> load(n_moe);
      for (int64_t micro = 0; micro < tc.grad_accum_steps; ++micro) {
        sampler.group(step, micro, B, inputs.data(), targets.data(),
                      documents ? doc_start.data() : nullptr);
        const GroupStats stats = model.forward_backward(
            inputs, targets, B, true, 1.0 / tc.grad_accum_steps, std::nullopt, doc_start);
        loss += stats.loss;
        for (int64_t l = 0; l < n_moe; ++l) {
          const std::vector<int64_t>& counts = stats.assignments_per_expert[l];
          load[l].resize(counts.size());
          for (size_t e = 0; e < counts.size(); ++e) load[l][e] += static_cast<double>(counts[e]);
        }
        if (step == 0) {
          first.lm_loss += stats.lm_loss / tc.grad_accum_steps;
          first.aux_loss += stats.aux_loss / tc.grad_accum_steps;
          first.z_loss += stats.z_loss / tc.grad_accum_steps;
        }
      }
      loss /= tc.grad_accum_steps;
      if (step >= warmup && step < steps)
        for (int64_t l = 0; l < n_moe; ++l) {
          const LoadBalance balance = load_balance(load[l]);
          cv_sum[l] += balance.cv;
          max_mean_sum[l] += balance.max_over_mean;
        }
      const double norm = std::sqrt(global_grad_norm_squared(*backend, params));
      // Clip, update, bf16 refresh and grad zeroing: one pass on CUDA (optim/optimizer.h).
      optimizer->step(*backend, params, lr_at(lr_schedule(tc), step), clip_factor(norm, tc.grad_clip));
      if (step == 0) {
        first_loss = loss;
        first_grad_norm = norm;
      }
      if (step < steps) {
        last_loss = loss;
        losses.push_back(loss);
        grad_norms.push_back(norm);
      }
      if ((step + 1) % 10 == 0 || step + 1 == steps || step == 0)
        std::printf("step %5lld | loss %.4f | grad_norm %.3f\n", static_cast<long long>(step + 1),
                    loss, norm);
    }
    if (profile_steps == 0) {
      backend->synchronize();
      seconds = std::chrono::duration<double>(Clock::now() - start).count();
    } else {
#ifdef SY_HAVE_CUDA
      profile_table = cuda_profile_report(*backend, profile_steps);
#endif
      if (profile_table.empty())
        profile_table = "--profile-steps: the event-timed profile needs run.backend cuda\n";
      std::printf("per-op profile of %lld steps after the timed ones:\n%s",
                  static_cast<long long>(profile_steps), profile_table.c_str());
    }
    const double timed = static_cast<double>(steps - warmup);
    const double tokens_per_s = timed * B * S * tc.grad_accum_steps / seconds;
    const double flops = flops_per_token(config);
    std::vector<double> load_cv(n_moe), load_max_mean(n_moe);
    double cv_mean = 0, cv_max = 0;
    for (int64_t l = 0; l < n_moe; ++l) {
      load_cv[l] = cv_sum[l] / timed;
      load_max_mean[l] = max_mean_sum[l] / timed;
      cv_mean += load_cv[l] / static_cast<double>(n_moe);
      cv_max = std::max(cv_max, load_cv[l]);
    }
    std::printf(
        "{\"config\": \"%s\", \"backend\": \"%s\", \"precision\": \"%s\", \"parameters\": %lld, "
        "\"tokens_per_step\": %lld, \"timed_steps\": %lld, \"step_ms\": %.3f, "
        "\"tokens_per_s\": %.1f, \"peak_memory_mib\": %.1f, \"first_loss\": %.4f, "
        "\"last_loss\": %.4f, \"peak_memory_bytes\": %lld, \"flops_per_token\": %.6g, "
        "\"mfu\": %.4f, \"first_lm_loss\": %.6f, \"first_aux_loss\": %.6f, "
        "\"first_z_loss\": %.6f, \"first_loss_exact\": %.6f, \"first_grad_norm\": %.6f, "
        "\"load_cv_mean\": %.4f, \"load_cv_max\": %.4f, \"load_cv\": %s, "
        "\"load_max_mean\": %s, \"setup_s\": %.2f, \"warmup_s\": %.2f, \"losses\": %s, "
        "\"grad_norms\": %s}\n",
        config.name.c_str(), backend->name().c_str(), to_string(config.run.precision),
        static_cast<long long>(n_params), static_cast<long long>(B * S * tc.grad_accum_steps),
        static_cast<long long>(steps - warmup), 1000.0 * seconds / timed, tokens_per_s,
        backend->peak_memory_bytes() / 1048576.0, first_loss, last_loss,
        static_cast<long long>(backend->peak_memory_bytes()), flops,
        tokens_per_s * flops / kPeakFlops, first.lm_loss, first.aux_loss, first.z_loss,
        first_loss, first_grad_norm, cv_mean, cv_max, json_list(load_cv).c_str(),
        json_list(load_max_mean).c_str(), setup_s, warmup_s, json_list(losses, -1).c_str(),
        json_list(grad_norms, -1).c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sy_bench_train: error: %s\n", e.what());
    return 1;
  }
}
