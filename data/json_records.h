// The JSON records of a prepare-data input: the lines of a JSON-lines file, or the elements of a
// file that holds one JSON array, as instruction and chat datasets often ship (Alpaca's
// alpaca_data.json, ShareGPT's dumps), pretty-printed over many lines or on one. Records are cut
// here, on the reading thread, and parsed elsewhere (data/importers.h), so that the parsing runs
// on many threads. docs/data.md ("Importers") states the rules.
#pragma once

#include <cstdint>
#include <string>

#include "data/compressed_input.h"

namespace sy {

struct JsonlLine {
  int64_t number = 0;    // the line it is (JSON lines) or starts on (an array's element), from 1
  std::string text;      // one JSON value, unparsed
  int64_t element = -1;  // its index in the file's array, from 0; -1 for a line of JSON lines
};

// "line 12: " for a line, "element 3 (line 12): " for an array's element: where a message about
// the record says it is.
std::string record_position(const JsonlLine& record);

class JsonRecords {
 public:
  // Opens `path` (plain, gzip or zstd; InputFile's errors). The file is one JSON array when its
  // first character after whitespace (and a UTF-8 byte-order mark) is '[', else JSON lines.
  explicit JsonRecords(const std::string& path);
  // The next record: a line that is not blank, or the array's next element, its text as written
  // (an element's lines joined by '\n'). false after the last. For an array, throws "<path>:
  // line N: ..." for an empty element (",,", a trailing comma), a bracket closed that was not
  // opened, text after the array's end, and a file that ends inside the array.
  bool next(JsonlLine& record);

 private:
  bool fill();  // more bytes into buffer_ (dropping those before at_); false at the file's end
  int get();    // the next byte (counting lines), or -1 at the end of the file
  bool next_line(JsonlLine& record);
  bool next_element(JsonlLine& record);
  void close();  // after the array's ']': only whitespace may follow
  [[noreturn]] void fail(const std::string& why) const;

  std::string path_;
  InputFile in_;
  std::string buffer_;  // bytes read, from at_ on not yet handed out
  size_t at_ = 0;
  int64_t line_ = 1;     // the line at at_
  bool array_ = false;   // the file is one JSON array
  bool closed_ = false;  // its ']' was read
  int64_t elements_ = 0;
};

}  // namespace sy
