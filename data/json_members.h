// The JSON records of data/ inputs read as objects with typed members, each problem one line
// naming the file, the record and the member (prepare-data's importers, score's examples).
// nlohmann::json is data/'s private dependency: only data/*.cpp include this header.
#pragma once
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "data/json_records.h"

namespace sy {

// "<path>: <what>"
std::runtime_error file_error(const std::string& path, const std::string& what);

// A record parsed as a JSON object; throws "<path>: line N: ..." for invalid JSON or another
// value.
nlohmann::json parse_jsonl_object(const JsonlLine& line, const std::string& path);

// Member `field` of `object`, which must be a string; `at` says where for the message.
std::string& string_member(nlohmann::json& object, const std::string& field,
                           const std::string& path, const std::string& at);

// The same for a member that may be null (a prompt member, a system message): null is "".
std::string nullable_string_member(nlohmann::json& object, const std::string& field,
                                   const std::string& path, const std::string& at);

}  // namespace sy
