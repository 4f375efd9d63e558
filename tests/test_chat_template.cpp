// Conversations rendered in each chat format (data/chat_template.h, docs/data.md "Conversations"):
// the exact text, which parts are trained, and generate's prompt ending where the rendered
// conversations hand over to the assistant.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "tests/temp_folder.h"

namespace sy {
namespace {

using test::expect_error;

// The segments as "[context]" and "{trained}" runs, to compare with one string.
std::string shown(const std::vector<SftSegment>& segments) {
  std::string text;
  for (const SftSegment& segment : segments)
    text += segment.trained ? "{" + segment.text + "}" : "[" + segment.text + "]";
  return text;
}

const std::vector<ChatMessage> kConversation = {{"system", "Be brief."},
                                                {"user", "hi"},
                                                {"assistant", "Hello."},
                                                {"user", "and?"},
                                                {"assistant", " Bye. "}};

TEST(ChatTemplate, ChatmlTrainsTheAssistantsContentEachFollowedByTheEncodersEos) {
  EXPECT_EQ(shown(render_chat(kConversation, ChatTemplate::kChatml, "")),
            "[<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
            "<|im_start|>assistant\n]{Hello.}[\n<|im_start|>user\nand?<|im_end|>\n"
            "<|im_start|>assistant\n]{ Bye. }[\n]");
  EXPECT_EQ(chat_prompt("hi", "Be brief.", ChatTemplate::kChatml),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplate, Llama3StartsWithBeginOfTextAndTrimsEachMessage) {
  EXPECT_EQ(shown(render_chat(kConversation, ChatTemplate::kLlama3, "")),
            "[<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n]{Hello.}"
            "[<|start_header_id|>user<|end_header_id|>\n\nand?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n]{Bye.}");
  EXPECT_EQ(chat_prompt(" hi\n", "", ChatTemplate::kLlama3),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplate, PlainNamesTheRolesAndPutsTheSpaceInTheTrainedText) {
  EXPECT_EQ(shown(render_chat(kConversation, ChatTemplate::kPlain, "")),
            "[System: Be brief.\nUser: hi\nAssistant:]{ Hello.}[\nUser: and?\nAssistant:]"
            "{  Bye. }[\n]");
  EXPECT_EQ(chat_prompt("hi", "", ChatTemplate::kPlain), "User: hi\nAssistant:");
}

TEST(ChatTemplate, OtherRolesAreContextAndShareGptNamesMapToOurs) {
  EXPECT_EQ(canonical_role("human"), "user");
  EXPECT_EQ(canonical_role("gpt"), "assistant");
  EXPECT_EQ(canonical_role("tool"), "tool");
  const std::vector<ChatMessage> with_tool = {
      {"user", "2+2?"}, {"assistant", "calc"}, {"tool", "4"}, {"assistant", "4"}, {"user", "ok"}};
  EXPECT_EQ(shown(render_chat(with_tool, ChatTemplate::kPlain, "")),
            "[User: 2+2?\nAssistant:]{ calc}[\nTool: 4\nAssistant:]{ 4}[\nUser: ok\n]");
  // An assistant turn first: no context before it.
  EXPECT_EQ(shown(render_chat({{"assistant", "x"}}, ChatTemplate::kChatml, "")),
            "[<|im_start|>assistant\n]{x}[\n]");
}

TEST(ChatTemplate, ConversationsWithNothingToTrainAreRefused) {
  expect_error([] { render_chat({}, ChatTemplate::kChatml, "a.jsonl: line 3: "); },
               {"a.jsonl: line 3: no messages"});
  expect_error(
      [] {
        render_chat({{"user", "hi"}}, ChatTemplate::kChatml, "a.parquet: row 0: ");
      },
      {"a.parquet: row 0: no assistant message, nothing to train on"});
  expect_error([] { parse_chat_template("jinja", "--chat-template"); },
               {"--chat-template: unknown chat template \"jinja\" (chatml, llama3, plain)"});
  for (const char* name : {"chatml", "llama3", "plain"})
    EXPECT_STREQ(chat_template_name(parse_chat_template(name, "")), name);
}

// export writes chat_template_jinja into tokenizer_config.json: transformers' apply_chat_template
// must render what the token file holds. tests/chat_template_jinja.py renders it with jinja2.
TEST(ChatTemplate, JinjaRendersTheConversationAsWeDo) {
  const std::string eos = "</s>";
  nlohmann::json cases = nlohmann::json::array();
  const std::vector<ChatMessage> quoted = {{"user", "it's a \\ \"test\"\n{{ x }}"},
                                           {"assistant", "\u00a0\u3000 ok \n\u2028"},
                                           {"tool", "t"},
                                           {"assistant", "done"}};
  for (ChatTemplate chat_template :
       {ChatTemplate::kChatml, ChatTemplate::kLlama3, ChatTemplate::kPlain}) {
    for (const std::vector<ChatMessage>* messages : {&kConversation, &quoted}) {
      std::string expected;
      for (const SftSegment& segment : render_chat(*messages, chat_template, ""))
        expected += segment.text + (segment.trained ? eos : "");
      nlohmann::json listed = nlohmann::json::array();
      for (const ChatMessage& message : *messages)
        listed.push_back({{"role", message.role}, {"content", message.content}});
      // With add_generation_prompt: a system message and a user's, then the assistant's turn.
      const nlohmann::json prompt_messages = nlohmann::json::array(
          {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "hi?"}}});
      cases.push_back({{"name", chat_template_name(chat_template)},
                       {"template", chat_template_jinja(chat_template)},
                       {"eos_token", eos},
                       {"messages", listed},
                       {"expected", expected},
                       {"prompt_messages", prompt_messages},
                       {"prompt_expected", chat_prompt("hi?", "Be brief.", chat_template)}});
    }
    // A default system message (prepare-data --system): first where the conversation has none,
    // and not where it has one (kConversation's own).
    const std::string system = " Keep it short, \"it's\" \\ {{ x }} \u00e9\n";
    const std::vector<ChatMessage> without_system(kConversation.begin() + 1, kConversation.end());
    for (const std::vector<ChatMessage>* messages : {&kConversation, &without_system}) {
      std::vector<ChatMessage> rendered = *messages;
      if (rendered.front().role != "system") rendered.insert(rendered.begin(), {"system", system});
      std::string expected;
      for (const SftSegment& segment : render_chat(rendered, chat_template, ""))
        expected += segment.text + (segment.trained ? eos : "");
      nlohmann::json listed = nlohmann::json::array();
      for (const ChatMessage& message : *messages)
        listed.push_back({{"role", message.role}, {"content", message.content}});
      cases.push_back(
          {{"name", std::string(chat_template_name(chat_template)) + " with a default system"},
           {"template", chat_template_jinja(chat_template, system)},
           {"eos_token", eos},
           {"messages", listed},
           {"expected", expected},
           {"prompt_messages", nlohmann::json::array({{{"role", "user"}, {"content", "hi?"}}})},
           {"prompt_expected", chat_prompt("hi?", system, chat_template)}});
    }
  }
  const std::string path = testing::TempDir() + "sy_chat_template_cases.json";
  std::ofstream(path) << cases.dump();
  const int status =
      std::system(("python3 " SY_TESTS_DIR "/chat_template_jinja.py " + path).c_str());
  ASSERT_NE(status, -1);
  if (WEXITSTATUS(status) == 77 || WEXITSTATUS(status) == 127)
    GTEST_SKIP() << "python3 with jinja2 is needed (apt-get install python3-jinja2)";
  EXPECT_EQ(WEXITSTATUS(status), 0) << "transformers' rendering differs (printed above)";
}

}  // namespace
}  // namespace sy
