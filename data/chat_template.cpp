#include "data/chat_template.h"

#include <stdexcept>

namespace sy {
namespace {

// A chat format's text around each message. The assistant's end of turn is not here: it is the
// EOS that the encoder appends to every trained segment, which for the tokenizers these formats
// come with is the format's own (Qwen's <|im_end|>, Llama 3 Instruct's <|eot_id|>), and for any
// other tokenizer is what generate stops at.
struct ChatFormat {
  std::string conversation_start;  // before the first message
  std::string header_before_role, header_after_role;
  std::string context_end;    // after a message that is not the assistant's
  std::string after_trained;  // after the assistant's message and its EOS
  bool trim_content = false;  // Llama 3's template strips each message's surrounding whitespace
  bool capitalise_role = false;
  std::string content_prefix;  // between the header and the content
};

ChatFormat chat_format(ChatTemplate chat_template) {
  switch (chat_template) {
    case ChatTemplate::kChatml:
      return {"", "<|im_start|>", "\n", "<|im_end|>\n", "\n", false, false, ""};
    case ChatTemplate::kLlama3:
      return {"<|begin_of_text|>",
              "<|start_header_id|>",
              "<|end_header_id|>\n\n",
              "<|eot_id|>",
              "",
              true,
              false,
              ""};
    case ChatTemplate::kPlain:
      return {"", "", ":", "\n", "\n", false, true, " "};
  }
  throw std::logic_error("chat_format: unknown template");
}

std::string trimmed(const std::string& text) {
  const char* space = " \t\n\r\f\v";
  const size_t first = text.find_first_not_of(space);
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(space) - first + 1);
}

std::string header(const ChatFormat& format, std::string role) {
  if (format.capitalise_role && !role.empty() && role[0] >= 'a' && role[0] <= 'z')
    role[0] = static_cast<char>(role[0] - 'a' + 'A');
  return format.header_before_role + role + format.header_after_role;
}

std::string content(const ChatFormat& format, const std::string& text) {
  return format.content_prefix + (format.trim_content ? trimmed(text) : text);
}

}  // namespace

std::string canonical_role(std::string role) {
  if (role == "human") return "user";
  if (role == "gpt") return kAssistantRole;
  return role;
}

ChatTemplate parse_chat_template(const std::string& name, const std::string& option) {
  if (name == "chatml") return ChatTemplate::kChatml;
  if (name == "llama3") return ChatTemplate::kLlama3;
  if (name == "plain") return ChatTemplate::kPlain;
  throw std::runtime_error(option + ": unknown chat template \"" + name +
                           "\" (chatml, llama3, plain)");
}

const char* chat_template_name(ChatTemplate chat_template) {
  switch (chat_template) {
    case ChatTemplate::kChatml:
      return "chatml";
    case ChatTemplate::kLlama3:
      return "llama3";
    case ChatTemplate::kPlain:
      return "plain";
  }
  return "unknown";
}

std::vector<SftSegment> render_chat(const std::vector<ChatMessage>& messages,
                                    ChatTemplate chat_template, const std::string& at) {
  if (messages.empty()) throw std::runtime_error(at + "no messages");
  const ChatFormat format = chat_format(chat_template);
  std::vector<SftSegment> segments;
  std::string context = format.conversation_start;
  bool trains = false;
  for (const ChatMessage& message : messages) {
    context += header(format, message.role);
    if (message.role != kAssistantRole) {
      context += content(format, message.content) + format.context_end;
      continue;
    }
    if (!context.empty()) segments.push_back({std::move(context), false});
    segments.push_back({content(format, message.content), true});
    context = format.after_trained;
    trains = true;
  }
  if (!trains) throw std::runtime_error(at + "no assistant message, nothing to train on");
  if (!context.empty()) segments.push_back({std::move(context), false});
  return segments;
}

std::string chat_prompt(const std::string& user_text, const std::string& system_text,
                        ChatTemplate chat_template) {
  const ChatFormat format = chat_format(chat_template);
  std::string prompt = format.conversation_start;
  if (!system_text.empty())
    prompt += header(format, "system") + content(format, system_text) + format.context_end;
  prompt += header(format, "user") + content(format, user_text) + format.context_end;
  return prompt + header(format, kAssistantRole);
}

}  // namespace sy
