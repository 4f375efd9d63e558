#include "data/json_records.h"

#include <algorithm>
#include <stdexcept>

namespace sy {

namespace {

constexpr size_t kReadBytes = size_t{1} << 20;

bool is_json_space(int c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

// A line that JSON lines skip: only spaces, tabs and '\r' (or nothing).
bool is_blank_line(const std::string& line) {
  return line.find_first_not_of(" \t\r") == std::string::npos;
}

}  // namespace

std::string record_position(const JsonlLine& record) {
  const std::string line = "line " + std::to_string(record.number);
  if (record.element < 0) return line + ": ";
  return "element " + std::to_string(record.element) + " (" + line + "): ";
}

JsonRecords::JsonRecords(const std::string& path) : path_(path), in_(path) {
  while (buffer_.size() < 3 && fill()) {
  }
  if (buffer_.compare(0, 3, "\xEF\xBB\xBF") == 0) at_ = 3;  // a byte-order mark, as Windows writes
  // Look ahead for the first character, consuming nothing: JSON lines count their lines.
  for (size_t ahead = 0;; ahead++) {
    if (at_ + ahead == buffer_.size() && !fill()) return;  // nothing but spaces: no records
    if (!is_json_space(buffer_[at_ + ahead])) {
      array_ = buffer_[at_ + ahead] == '[';
      break;
    }
  }
  if (array_)
    while (get() != '[') {
    }
}

bool JsonRecords::next(JsonlLine& record) {
  return array_ ? next_element(record) : next_line(record);
}

bool JsonRecords::fill() {
  buffer_.erase(0, at_);  // what was handed out (fill keeps the unfinished record)
  at_ = 0;
  const size_t kept = buffer_.size();
  buffer_.resize(kept + kReadBytes);
  const size_t read = in_.read(buffer_.data() + kept, kReadBytes);
  buffer_.resize(kept + read);
  return read > 0;
}

int JsonRecords::get() {
  if (at_ == buffer_.size() && !fill()) return -1;
  const char c = buffer_[at_++];
  if (c == '\n') line_++;
  return static_cast<unsigned char>(c);
}

void JsonRecords::fail(const std::string& why) const {
  throw std::runtime_error(path_ + ": line " + std::to_string(line_) + ": " + why);
}

bool JsonRecords::next_line(JsonlLine& record) {
  while (true) {
    size_t length = 0;  // of the line at at_ (fill moves at_, not the line's length)
    bool ended = false;
    while (!ended) {
      const size_t newline = buffer_.find('\n', at_ + length);
      if (newline != std::string::npos) {
        length = newline - at_;
        ended = true;
      } else {
        length = buffer_.size() - at_;
        if (!fill()) {
          if (length == 0) return false;
          ended = true;
        }
      }
    }
    record = {line_++, buffer_.substr(at_, length), -1};
    at_ = std::min(at_ + length + 1, buffer_.size());
    if (!is_blank_line(record.text)) return true;
  }
}

bool JsonRecords::next_element(JsonlLine& record) {
  if (closed_) return false;
  int c = get();
  while (is_json_space(c)) c = get();
  const auto unclosed = [&] { fail("the file ends inside its JSON array (no closing ']')"); };
  if (c < 0) unclosed();
  if (c == ']') {
    if (elements_ > 0) fail("a comma before the array's closing ']'");
    close();
    return false;
  }
  if (c == ',') fail("an empty element in the array (two commas)");
  record = {line_, {}, elements_++};
  int depth = 0;  // of brackets and braces inside the element
  bool in_string = false, escaped = false;
  for (;; c = get()) {
    if (c < 0) unclosed();
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      depth++;
    } else if ((c == '}' || c == ']') && depth > 0) {
      depth--;
    } else if (c == '}') {
      fail("a '}' that closes nothing");
    } else if (depth == 0 && (c == ',' || c == ']')) {
      if (c == ']') close();
      while (is_json_space(record.text.back())) record.text.pop_back();
      return true;
    }
    record.text += static_cast<char>(c);
  }
}

void JsonRecords::close() {
  closed_ = true;
  for (int c = get(); c >= 0; c = get())
    if (!is_json_space(c))
      fail("text after the JSON array's closing ']' (a file is one array, or JSON lines)");
}

}  // namespace sy
