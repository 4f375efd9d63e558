// Multiple-choice evaluation data for `switchyard score` (docs/data.md, "Multiple choice"): JSON
// lines, or a file that is one JSON array (data/json_records.h; plain, gzip or zstd), a question
// a record: a context, its choices and which choice is right. The members are named by
// ChoiceFields, so that HellaSwag, ARC, PIQA and the like are read as they ship.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sy {

struct ChoiceFields {
  std::string context = "context";
  // One member holding the choices: an array of strings, or an object whose "text" member is one
  // (ARC's {"text": [...], "label": ["A", ...]}); or several members, each a string (PIQA's
  // sol1, sol2), the choices in the order named.
  std::vector<std::string> choices = {"choices"};
  // The right choice: an integer index from 0, a string holding one (HellaSwag's "label": "3"),
  // or a string equal to one of the choices' "label" entries (ARC's "answerKey": "C").
  std::string answer = "answer";
};

struct ChoiceExample {
  int64_t record = 0;  // its index among the file's records, from 0
  std::string context;
  std::vector<std::string> choices;  // at least 2
  int64_t answer = 0;                // index into choices
};

// The first `limit` examples of `path` (0: all). Throws one line naming the file, the record
// (line N) and the member for: invalid JSON, a missing or mistyped member, fewer than two
// choices, an answer out of range or not among the labels; "<path>: no examples" for none.
std::vector<ChoiceExample> read_choice_examples(const std::string& path, const ChoiceFields& fields,
                                                int64_t limit = 0);

}  // namespace sy
