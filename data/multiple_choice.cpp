#include "data/multiple_choice.h"

#include <charconv>
#include <utility>

#include "data/json_members.h"

namespace sy {
namespace {

// A record's choices, with their labels where the member is an object with a "label" array
// (ARC); labels empty otherwise.
struct Choices {
  std::vector<std::string> texts, labels;
};

std::vector<std::string> string_array(const nlohmann::json& array, const std::string& name,
                                      const std::string& path, const std::string& at) {
  if (!array.is_array())
    throw file_error(path,
                     at + "field \"" + name + "\" is a " + array.type_name() + ", not an array");
  std::vector<std::string> strings;
  for (size_t k = 0; k < array.size(); ++k) {
    if (!array[k].is_string())
      throw file_error(path, at + name + "[" + std::to_string(k) + "] is a " +
                                 array[k].type_name() + ", not a string");
    strings.push_back(array[k].get<std::string>());
  }
  return strings;
}

Choices read_choices(nlohmann::json& object, const ChoiceFields& fields, const std::string& path,
                     const std::string& at) {
  Choices choices;
  if (fields.choices.size() > 1) {
    for (const std::string& field : fields.choices)
      choices.texts.push_back(std::move(string_member(object, field, path, at)));
    return choices;
  }
  const std::string& field = fields.choices.front();
  const auto member = object.find(field);
  if (member == object.end()) throw file_error(path, at + "no field \"" + field + "\"");
  if (!member->is_object()) {
    choices.texts = string_array(*member, field, path, at);
    return choices;
  }
  if (!member->contains("text"))
    throw file_error(path, at + "field \"" + field + "\" is an object without \"text\"");
  choices.texts = string_array((*member)["text"], field + ".text", path, at);
  if (member->contains("label")) {
    choices.labels = string_array((*member)["label"], field + ".label", path, at);
    if (choices.labels.size() != choices.texts.size())
      throw file_error(path, at + field + " has " + std::to_string(choices.texts.size()) +
                                 " texts and " + std::to_string(choices.labels.size()) + " labels");
  }
  return choices;
}

int64_t read_answer(nlohmann::json& object, const ChoiceFields& fields, const Choices& choices,
                    const std::string& path, const std::string& at) {
  const auto member = object.find(fields.answer);
  if (member == object.end()) throw file_error(path, at + "no field \"" + fields.answer + "\"");
  const int64_t count = static_cast<int64_t>(choices.texts.size());
  const std::string named = "field \"" + fields.answer + "\" ";
  int64_t index = -1;
  if (member->is_number_integer()) {
    index = member->get<int64_t>();
  } else if (member->is_string()) {
    const std::string& text = member->get_ref<const std::string&>();
    for (size_t k = 0; k < choices.labels.size(); ++k)
      if (choices.labels[k] == text) return static_cast<int64_t>(k);
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), index);
    if (error != std::errc() || end != text.data() + text.size())
      throw file_error(path, at + named + "\"" + text + "\" is neither an index" +
                                 (choices.labels.empty() ? "" : " nor a choice's label"));
  } else {
    throw file_error(path,
                     at + named + "is a " + member->type_name() + ", not an index or a label");
  }
  if (index < 0 || index >= count)
    throw file_error(path, at + named + std::to_string(index) + " is not a choice: there are " +
                               std::to_string(count));
  return index;
}

}  // namespace

std::vector<ChoiceExample> read_choice_examples(const std::string& path, const ChoiceFields& fields,
                                                int64_t limit) {
  JsonRecords records(path);
  std::vector<ChoiceExample> examples;
  JsonlLine line;
  for (int64_t record = 0; (limit <= 0 || record < limit) && records.next(line); ++record) {
    const std::string at = record_position(line);
    nlohmann::json object = parse_jsonl_object(line, path);
    ChoiceExample example;
    example.record = record;
    example.context = std::move(string_member(object, fields.context, path, at));
    const Choices choices = read_choices(object, fields, path, at);
    if (choices.texts.size() < 2)
      throw file_error(path, at + std::to_string(choices.texts.size()) +
                                 " choices; a question needs at least 2");
    example.answer = read_answer(object, fields, choices, path, at);
    example.choices = choices.texts;
    examples.push_back(std::move(example));
  }
  if (examples.empty()) throw file_error(path, "no examples");
  return examples;
}

}  // namespace sy
