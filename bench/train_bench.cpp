// Training-step throughput and peak device memory of one config on one rank, with its own
// short loop (sample -> forward/backward -> clip -> AdamW -> refresh the compute weights):
//   sy_bench_train CONFIG [--set section.key=value ...] [--steps N] [--warmup W]
// The backend and precision come from run.backend / run.precision. Tokens come from data.path
// when that file exists, else from a synthetic uniform stream. Prints one line per logged step
// and a JSON summary line last. Timing excludes the first W steps (allocation, cuBLAS set-up).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
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
#include "trainer/config.h"
#include "trainer/session.h"

int main(int argc, char** argv) {
  using namespace sy;
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CONFIG [--set k=v ...] [--steps N] [--warmup W]\n", argv[0]);
    return 2;
  }
  try {
    std::vector<std::string> overrides;
    int64_t steps = 60, warmup = 10;
    for (int i = 2; i + 1 < argc; i += 2) {
      const std::string flag = argv[i];
      if (flag == "--set") overrides.push_back(argv[i + 1]);
      else if (flag == "--steps") steps = std::stoll(argv[i + 1]);
      else if (flag == "--warmup") warmup = std::stoll(argv[i + 1]);
      else throw std::runtime_error("unknown flag " + flag);
    }
    if (warmup >= steps) throw std::runtime_error("--warmup must be below --steps");
    const Config config = load_config(argv[1], overrides);
    std::unique_ptr<Backend> backend = make_backend(config.run);

    std::vector<int32_t> train_tokens;
    std::string source = config.data.path;
    if (std::filesystem::exists(config.data.path)) {
      train_tokens = read_token_file(config.data.path).train;
    } else {
      source = "synthetic";
      CounterRng rng(7);
      train_tokens.resize(size_t{1} << 22);
      for (int32_t& t : train_tokens)
        t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(config.model.vocab_size)));
    }
    const StepSampler sampler(train_tokens, config.model.seq_len, config.seed);

    TransformerOptions options{config.model, config.moe, moe_layer_mask(config), DType::f32};
    options.dtype = config.run.precision == "bf16" ? DType::bf16 : DType::f32;
    options.master_dtype = DType::f32;
    std::unique_ptr<LocalExchange> exchange;
    if (config.moe.num_experts > 0)
      exchange = std::make_unique<LocalExchange>(*backend, config.moe.num_experts);
    Transformer model(*backend, options, exchange.get());
    model.init_parameters(config.seed);
    std::vector<Param*> params = model.params();
    int64_t n_params = 0;
    for (const Param* p : params) n_params += p->value.numel();
    std::unique_ptr<Optimizer> optimizer = make_optimizer(config.train);

    const TrainConfig& tc = config.train;
    const int64_t B = tc.micro_batch_size, S = config.model.seq_len;
    std::vector<int32_t> inputs(B * S), targets(B * S);
    std::printf("bench: %s on %s, %s, %lld parameters, %lld tokens/step, data %s\n",
                config.name.c_str(), backend->name().c_str(), config.run.precision.c_str(),
                static_cast<long long>(n_params), static_cast<long long>(B * S * tc.grad_accum_steps),
                source.c_str());
    using Clock = std::chrono::steady_clock;
    Clock::time_point start;
    double first_loss = 0, last_loss = 0;
    for (int64_t step = 0; step < steps; ++step) {
      if (step == warmup) {
        backend->synchronize();
        start = Clock::now();
      }
      model.zero_grads();
      double loss = 0;
      for (int64_t micro = 0; micro < tc.grad_accum_steps; ++micro) {
        sampler.group(step, micro, B, inputs.data(), targets.data());
        loss += model.forward_backward(inputs, targets, B, true, 1.0 / tc.grad_accum_steps).loss;
      }
      loss /= tc.grad_accum_steps;
      const double norm = std::sqrt(global_grad_norm_squared(*backend, params));
      clip_gradients(*backend, params, norm, tc.grad_clip);
      optimizer->step(*backend, params, lr_at(tc, step));
      model.refresh_compute_weights();
      if (step == 0) first_loss = loss;
      last_loss = loss;
      if ((step + 1) % 10 == 0 || step + 1 == steps)
        std::printf("step %5lld | loss %.4f | grad_norm %.3f\n", static_cast<long long>(step + 1),
                    loss, norm);
    }
    backend->synchronize();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    const double timed = static_cast<double>(steps - warmup);
    const double tokens_per_s = timed * B * S * tc.grad_accum_steps / seconds;
    std::printf(
        "{\"config\": \"%s\", \"backend\": \"%s\", \"precision\": \"%s\", \"parameters\": %lld, "
        "\"tokens_per_step\": %lld, \"timed_steps\": %lld, \"step_ms\": %.3f, "
        "\"tokens_per_s\": %.1f, \"peak_memory_mib\": %.1f, \"first_loss\": %.4f, "
        "\"last_loss\": %.4f}\n",
        config.name.c_str(), backend->name().c_str(), config.run.precision.c_str(),
        static_cast<long long>(n_params), static_cast<long long>(B * S * tc.grad_accum_steps),
        static_cast<long long>(steps - warmup), 1000.0 * seconds / timed, tokens_per_s,
        backend->peak_memory_bytes() / 1048576.0, first_loss, last_loss);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sy_bench_train: error: %s\n", e.what());
    return 1;
  }
}
