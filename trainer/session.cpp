#include "trainer/session.h"

#include <stdexcept>

#include "parallel/token_dispatcher.h"
#ifdef SY_HAVE_CUDA
#include "model/cuda/cuda_backend.h"
#endif

namespace sy {

namespace {

std::unique_ptr<Backend> make_device_backend(const RunConfig& run, int rank, int local_rank) {
  switch (run.backend) {
    case Device::cpu:
      if (run.precision != Precision::fp32)
        throw std::runtime_error(std::string("run.precision: the cpu backend computes in fp32, ") +
                                 "got '" + to_string(run.precision) + "'");
      return make_cpu_backend();
    case Device::cuda:
#ifdef SY_HAVE_CUDA
      // One GPU per rank: the node-local rank modulo the visible devices (ranks share a GPU when
      // there are more ranks than GPUs). Throws a plain error when no GPU is visible.
      return make_cuda_backend(cuda_device_for_local_rank(local_rank, rank), rank);
#else
      throw std::runtime_error(
          "run.backend: cuda is not available in this build (built without CUDA: nvcc was not "
          "found when it was configured; see docs/cuda.md)");
#endif
  }
  throw std::runtime_error("run.backend: device " + std::to_string(static_cast<int>(run.backend)) +
                           " has no backend");
}

// The first line where two configs differ, for the error message.
std::string first_difference(const std::string& a, const std::string& b) {
  size_t begin = 0;
  while (true) {
    const size_t end_a = a.find('\n', begin), end_b = b.find('\n', begin);
    const std::string line_a = a.substr(begin, end_a - begin), line_b = b.substr(begin, end_b - begin);
    if (line_a != line_b) return "'" + line_b + "' where rank 0 has '" + line_a + "'";
    if (end_a == std::string::npos || end_b == std::string::npos) return "(length)";
    begin = end_a + 1;
  }
}

void check_same_config(Communicator& world, const Config& config) {
  const std::string mine = config_to_yaml(config);
  const std::vector<std::string> all = world.all_gather_host(mine);
  for (size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0])
      throw CollectiveError("rank " + std::to_string(r) + ": its config differs from rank 0's: " +
                            first_difference(all[0], all[r]));
}

}  // namespace

std::unique_ptr<Backend> make_backend(const RunConfig& run, int rank, int local_rank) {
  std::unique_ptr<Backend> backend = make_device_backend(run, rank, local_rank);
  backend->set_deterministic(run.deterministic);
  return backend;
}

ModelSession make_model_session(const Config& config, CommHandle world) {
  ModelSession session;
  // Collective (every rank, whatever its backend, so that none waits alone).
  const int local_rank = host_local_rank(world);
  session.backend = make_backend(config.run, world_rank(), local_rank);
  session.groups = make_process_groups(world, config.parallel.expert_parallel, *session.backend,
                                       config.parallel.communicator, config.parallel.timeout_s);
  check_same_config(*session.groups.world, config);
  if (config.moe.num_experts > 0)
    session.exchange = std::make_unique<AllToAllDispatcher>(
        *session.backend, *session.groups.expert_parallel, config.moe.num_experts,
        session.groups.world.get());
  // bf16 computes with bf16 copies of the fp32 master weights (Param::compute).
  TransformerOptions options{config.model, config.moe, moe_layer_mask(config),
                             compute_dtype(config.run.precision)};
  options.master_dtype = DType::f32;
  options.recompute = config.train.recompute;
  options.bf16_grads = bf16_grads(config);
  options.bf16_grad_storage = bf16_grad_storage(config, session.groups.world->size());
  session.model =
      std::make_unique<Transformer>(*session.backend, std::move(options), session.exchange.get());
  session.model->init_parameters(config.seed);
  return session;
}

}  // namespace sy
