// libFuzzer: bytes -> file -> read_checkpoint_header, scan_checkpoint_tensors, then
// load_checkpoint into a tiny model with its AdamW moments (one rank, MPI initialised as a
// singleton). Every input must load or end in a std::exception; a crash, a sanitizer report or a
// hang is a finding. The model is tiny so that a valid checkpoint is a few KB and runs are fast.
#include <mpi.h>

#include <cstdint>
#include <exception>
#include <memory>
#include <string>

#include "bench/fuzz/fuzz_input.h"
#include "optim/optimizer.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/session.h"

namespace {

struct Fixture {
  sy::Config config;
  sy::ModelSession session;
  std::unique_ptr<sy::Optimizer> optimizer;
};
Fixture* fixture = nullptr;

sy::Config tiny_config() {
  sy::Config c;
  c.model.vocab_size = 32;
  c.model.seq_len = 8;
  c.model.d_model = 8;
  c.model.n_layers = 2;
  c.model.n_heads = 2;
  c.model.ffn_hidden = 8;
  c.moe.num_experts = 2;
  c.moe.routing.top_k = 1;
  c.moe.expert_hidden = 8;
  c.moe.layers = sy::MoeLayers::every_nth(2);  // layer 0 dense, layer 1 MoE: both kinds of tensor
  c.train.micro_batch_size = 1;
  c.eval.tokens = 0;
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  MPI_Init(argc, argv);
  fixture = new Fixture;  // lives for the process (libFuzzer exits without returning)
  fixture->config = tiny_config();
  fixture->session = sy::make_model_session(fixture->config, MPI_COMM_WORLD);
  fixture->optimizer = sy::make_optimizer(sy::optimizer_settings(fixture->config.train));
  if (const char* dir = sy::fuzz::seed_dir()) {
    // A checkpoint of this exact model with its (zero) AdamW moments, as training writes it.
    const std::string written =
        sy::save_checkpoint(dir, 1, fixture->config, *fixture->session.model,
                            fixture->optimizer.get(), fixture->session.groups,
                            *fixture->session.backend, "fuzz-seed");
    (void)written;
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = sy::fuzz::write_input("checkpoint", ".h5", data, size);
  try {
    (void)sy::read_checkpoint_header(path);
    sy::scan_checkpoint_tensors(path, [](const std::vector<sy::TensorInfo>&) {},
                                [](const sy::TensorInfo&) {});
    (void)sy::load_checkpoint(path, fixture->config, *fixture->session.model,
                              fixture->optimizer.get(), fixture->session.groups,
                              *fixture->session.backend);
  } catch (const std::exception&) {
  }
  return 0;
}
