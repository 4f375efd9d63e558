// Conversations for supervised fine-tuning: a list of messages, each a role and its text, as
// chat datasets keep them (OpenAI's {"role", "content"}, ShareGPT's {"from", "value"}), rendered
// in a chat format into the segments that `prepare-data --format sft` encodes and masks. We run
// no Jinja: the formats are built in, and docs/data.md ("Conversations") writes each one out.
#pragma once
#include <string>
#include <vector>

namespace sy {

// A run of an example's text, trained on or not (the loss mask of its tokens). Every trained
// segment is followed, when encoded, by the tokenizer's EOS, trained too.
struct SftSegment {
  std::string text;
  bool trained = false;
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", or any other the data uses ("tool")
  std::string content;
};

// The assistant's messages are trained on; every other role's are context.
constexpr const char* kAssistantRole = "assistant";

// ShareGPT's role names as ours: "human" is "user", "gpt" is "assistant"; others as they are.
std::string canonical_role(std::string role);

enum class ChatTemplate {
  kChatml,  // <|im_start|>role\ncontent<|im_end|>\n (Qwen, and many fine-tunes)
  kLlama3,  // <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
  kPlain,   // Role: content\n
};
// "chatml", "llama3" or "plain"; throws "<option>: unknown chat template "x" (chatml, llama3,
// plain)".
ChatTemplate parse_chat_template(const std::string& name, const std::string& option);
const char* chat_template_name(ChatTemplate chat_template);

// The segments of a conversation in `chat_template`: every assistant message's content is a
// trained segment (its end of turn is the EOS that the encoder appends), the rest (role headers,
// other messages, separators) context. Adjacent context is one segment; an empty one is left out.
// Throws "<at>no messages" or "<at>no assistant message, nothing to train on".
std::vector<SftSegment> render_chat(const std::vector<ChatMessage>& messages,
                                    ChatTemplate chat_template, const std::string& at);

// The text that asks a model fine-tuned on `chat_template` to answer `user_text` (after
// `system_text`, when not empty): the conversation's context up to the assistant's turn, as
// render_chat writes it. generate --chat-template samples from it.
std::string chat_prompt(const std::string& user_text, const std::string& system_text,
                        ChatTemplate chat_template);

// The same format as the Jinja template that transformers' apply_chat_template runs (messages,
// add_generation_prompt, eos_token), for `export`'s tokenizer_config.json: it renders a
// conversation as render_chat's segments laid end to end, each trained one followed by
// eos_token, and with add_generation_prompt ends as chat_prompt does. A `default_system` that is
// not empty is put first where the first message is not a system one (prepare-data --system).
std::string chat_template_jinja(ChatTemplate chat_template, const std::string& default_system = {});

}  // namespace sy
