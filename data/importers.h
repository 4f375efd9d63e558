// Readers for corpora in other projects' formats (issue 13): JSONL text, nanoGPT's uint16
// train.bin/val.bin and Megatron-LM's indexed dataset (.bin/.idx). prepare_data (data/prepare.h)
// turns what they return into a token file. The exact reading rules are in docs/data.md.
// Every problem throws std::runtime_error, one line naming the file and the position.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/json_records.h"

namespace sy {

// The first floor((1 - val_fraction) * documents) documents are training, the rest validation.
// Throws when that leaves no training document (too few documents for the fraction); `input`
// names the corpus in the message.
int64_t train_document_count(int64_t documents, double val_fraction, const std::string& input);

// JSONL: one JSON object per line, the document its string member `field`. Blank lines (only
// spaces, tabs, '\r') are skipped. A file that is one JSON array is read element by element
// instead (data/json_records.h). The records are read on one thread and parsed on others
// (prepare-data), so reading and parsing are apart: for_each_jsonl_lines reads, and
// jsonl_document and sft_example parse one record each.
struct JsonlLines {
  std::string path;              // the file they come from
  int64_t first_object = 0;      // lines[0]'s index among the records of all files
  std::vector<JsonlLine> lines;  // in file order
  int64_t bytes = 0;             // of their text
};
// Calls visit(lines) for the records (non-blank lines, or array elements) of every file, in the
// order given, in runs of about batch_bytes (at least one line; never two files in one run) and
// returns how many there were. Throws "<files>: no documents" when there is none, and for a missing
// or unreadable file.
int64_t for_each_jsonl_lines(const std::vector<std::string>& files, int64_t batch_bytes,
                             const std::function<void(JsonlLines&&)>& visit);
// The document of a line of `path`. Throws "<path>: line N: ..." for invalid JSON, a line that is
// not an object, a missing member or one that is not a string.
std::string jsonl_document(const JsonlLine& line, const std::string& field,
                           const std::string& path);

// --format sft (docs/data.md, "Loss masks"): the JSONL rules above, one example a line, as
// segments of text, each trained on or not. A line is one of, in this order of precedence:
// - {"segments": [{"text": "...", "train": true|false}, ...]}: any number, in order, a
//   conversation already rendered in the model's chat format;
// - {fields.messages: [{"role": "...", "content": "..."}, ...]} (or ShareGPT's {"from": "...",
//   "value": "..."}): a conversation, rendered by render_chat in fields.chat_template;
// - {fields.prompt: "...", fields.response: "..."}: a prompt and its response (sft_pair).
// Other members are ignored. Returns the example's segments; throws "<path>: line N: ..." naming
// what is wrong.
struct SftFields {
  // The prompt's member, or several (Alpaca's instruction and input), joined by sft_pair.
  std::vector<std::string> prompt = {"prompt"};
  std::string response = "response", messages = "messages";
  ChatTemplate chat_template = ChatTemplate::kChatml;
  // A prompt and response as a user's message and the assistant's answer in chat_template
  // (prepare-data's --chat-template given), else as they are: `prompt response EOS`.
  bool pairs_in_template = false;
  // Not empty: a system message put first in every conversation without one (sft_conversation).
  std::string system;
  // Not empty (with pairs_in_template): the member holding a pair's own system message
  // (OpenOrca's system_prompt); an empty one leaves `system` to stand.
  std::string system_field;
};
struct SftExample {
  std::vector<SftSegment> segments;
  bool conversation = false;  // rendered in fields.chat_template
};
SftExample sft_example(const JsonlLine& line, const SftFields& fields, const std::string& path);

// A conversation's example: `messages` after fields.system (when not empty and the first message
// is not a system one), rendered in fields.chat_template. `at` starts a render_chat error.
SftExample sft_conversation(std::vector<ChatMessage> messages, const SftFields& fields,
                            const std::string& at);

// An example of a prompt (not trained on) and its response (trained on). `prompt_parts` are the
// values of fields.prompt, in order: those not empty are joined by a blank line ("\n\n"). In
// fields.chat_template when fields.pairs_in_template, as the conversation system: `system` (when
// not empty; the value of fields.system_field), user: prompt, assistant: response
// (sft_conversation); else the two segments as they are. `at` starts a render_chat error.
SftExample sft_pair(const std::vector<std::string>& prompt_parts, std::string response,
                    std::string system, const SftFields& fields, const std::string& at);

// Throws "--format F needs --vocab-size in [1, L], got N": L is 65536 for nanogpt (uint16
// files), 2^31 for megatron.
void check_import_vocab_size(const std::string& format, int64_t vocab_size);

// Where a token-format importer puts what it reads, in order, a block at a time (at most a few
// million tokens; the block is only valid during the call).
using TokenSink = std::function<void(bool is_val, const int32_t* tokens, int64_t count)>;
// Where an importer that knows its documents says that the tokens it sinks next to split is_val
// start one (TokenFileWriter::start_document_train and _val).
using DocumentSink = std::function<void(bool is_val)>;

struct ImportCounts {
  int64_t documents = 0;      // 0 where the format has no documents (nanoGPT)
  int64_t val_documents = 0;
};

// nanoGPT: `input` is a folder holding train.bin and val.bin, or the path of train.bin (val.bin
// beside it). Both are little-endian uint16 tokens, each < vocab_size. train.bin must hold at
// least one token; val.bin may be empty. Streams train.bin, then val.bin.
ImportCounts import_nanogpt(const std::string& input, int64_t vocab_size, const TokenSink& sink);

// Megatron-LM indexed dataset PREFIX.bin + PREFIX.idx (`prefix` may also end in .bin or .idx).
// Tokens of integer dtype, each in [0, vocab_size); documents kept whole, the last ones (by
// train_document_count) becoming validation. The .idx is read whole (its size grows with the
// sequence count, 12 bytes each); the .bin is streamed in document order. `start_document`, when
// set, is called before each document's tokens (an empty document's too).
ImportCounts import_megatron(const std::string& prefix, int64_t vocab_size, double val_fraction,
                             const TokenSink& sink, const DocumentSink& start_document = {});

}  // namespace sy
