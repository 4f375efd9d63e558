#include "data/chat_template.h"

#include <cstdint>
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

// Python's whitespace (str.strip, which Jinja's trim calls): the code points of the Unicode
// separators and of the control characters Python counts as space.
bool is_python_space(uint32_t code_point) {
  return (code_point >= 0x09 && code_point <= 0x0D) || (code_point >= 0x1C && code_point <= 0x20) ||
         code_point == 0x85 || code_point == 0xA0 || code_point == 0x1680 ||
         (code_point >= 0x2000 && code_point <= 0x200A) || code_point == 0x2028 ||
         code_point == 0x2029 || code_point == 0x202F || code_point == 0x205F ||
         code_point == 0x3000;
}

// The code point of the UTF-8 character at text[at, end), its bytes in `length`; an invalid
// sequence counts as one byte that is not a space.
uint32_t code_point_at(const std::string& text, size_t at, size_t& length) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[at + k]); };
  const unsigned char lead = byte(0);
  length = lead < 0x80         ? 1
           : lead >> 5 == 0x6  ? 2
           : lead >> 4 == 0xE  ? 3
           : lead >> 3 == 0x1E ? 4
                               : 1;
  if (at + length > text.size()) length = 1;
  if (length == 1) return lead < 0x80 ? lead : 0xFFFFFFFF;
  uint32_t code_point = lead & (0x7F >> length);
  for (size_t k = 1; k < length; k++) {
    if ((byte(k) & 0xC0) != 0x80) {
      length = 1;
      return 0xFFFFFFFF;
    }
    code_point = code_point << 6 | (byte(k) & 0x3F);
  }
  return code_point;
}

// `text` without the whitespace at its ends, as Llama 3's template trims each message.
std::string trimmed(const std::string& text) {
  size_t first = 0, length = 0;
  while (first < text.size() && is_python_space(code_point_at(text, first, length)))
    first += length;
  size_t end = first;  // past the last character that is not a space
  for (size_t at = first; at < text.size(); at += length)
    if (!is_python_space(code_point_at(text, at, length))) end = at + length;
  return text.substr(first, end - first);
}

std::string header(const ChatFormat& format, std::string role) {
  if (format.capitalise_role && !role.empty() && role[0] >= 'a' && role[0] <= 'z')
    role[0] = static_cast<char>(role[0] - 'a' + 'A');
  return format.header_before_role + role + format.header_after_role;
}

std::string content(const ChatFormat& format, const std::string& text) {
  return format.content_prefix + (format.trim_content ? trimmed(text) : text);
}

// `text` as a Jinja string literal.
std::string jinja_literal(const std::string& text) {
  std::string literal = "'";
  for (char c : text) {
    if (c == '\n') literal += "\\n";
    else if (c == '\'' || c == '\\') literal += std::string("\\") + c;
    else literal += c;
  }
  return literal + "'";
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

std::string chat_template_jinja(ChatTemplate chat_template, const std::string& default_system) {
  const ChatFormat format = chat_format(chat_template);
  const std::string role = format.capitalise_role
                               ? "(message['role'][:1] | upper) + message['role'][1:]"
                               : "message['role']";
  const std::string message_content =
      format.trim_content ? "(message['content'] | trim)" : "message['content']";
  std::string jinja;
  if (!format.conversation_start.empty())
    jinja += "{{ " + jinja_literal(format.conversation_start) + " }}";
  if (!default_system.empty())
    jinja += "{% if not messages or messages[0]['role'] != 'system' %}{{ " +
             jinja_literal(header(format, "system") + content(format, default_system) +
                           format.context_end) +
             " }}{% endif %}";
  jinja += "{% for message in messages %}{{ " + jinja_literal(format.header_before_role) + " + " +
           role + " + " + jinja_literal(format.header_after_role + format.content_prefix) + " + " +
           message_content + " }}";
  const std::string after_trained =
      format.after_trained.empty() ? "" : " + " + jinja_literal(format.after_trained);
  jinja += "{% if message['role'] == '" + std::string(kAssistantRole) + "' %}{{ eos_token" +
           after_trained + " }}{% else %}{{ " + jinja_literal(format.context_end) +
           " }}{% endif %}{% endfor %}";
  return jinja + "{% if add_generation_prompt %}{{ " +
         jinja_literal(header(format, kAssistantRole)) + " }}{% endif %}";
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
