#include "data/json_members.h"

#include <utility>

namespace sy {

std::runtime_error file_error(const std::string& path, const std::string& what) {
  return std::runtime_error(path + ": " + what);
}

nlohmann::json parse_jsonl_object(const JsonlLine& line, const std::string& path) {
  nlohmann::json object;
  try {
    object = nlohmann::json::parse(line.text);
  } catch (const nlohmann::json::parse_error& error) {
    throw file_error(path, record_position(line) + "invalid JSON at byte " +
                               std::to_string(error.byte) +
                               (line.element < 0 ? " of the line" : " of the element"));
  }
  if (!object.is_object())
    throw file_error(path,
                     record_position(line) + "a JSON " + object.type_name() + ", not an object");
  return object;
}

std::string& string_member(nlohmann::json& object, const std::string& field,
                           const std::string& path, const std::string& at) {
  const auto member = object.find(field);
  if (member == object.end()) throw file_error(path, at + "no field \"" + field + "\"");
  if (!member->is_string())
    throw file_error(path,
                     at + "field \"" + field + "\" is a " + member->type_name() + ", not a string");
  return member->get_ref<std::string&>();
}

std::string nullable_string_member(nlohmann::json& object, const std::string& field,
                                   const std::string& path, const std::string& at) {
  const auto member = object.find(field);
  if (member != object.end() && member->is_null()) return {};
  return std::move(string_member(object, field, path, at));
}

}  // namespace sy
