// The one quoter for strings that the trainer writes as YAML (the resolved config, provenance).
#pragma once
#include <cstdio>
#include <string>
#include <string_view>

namespace sy {

// A YAML double-quoted string: safe on one line for any text, including ":" and "#"; control
// characters as \xNN escapes.
inline std::string yaml_quote(std::string_view text) {
  std::string out = "\"";
  for (const unsigned char ch : text) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += static_cast<char>(ch);
    } else if (ch < 0x20 || ch == 0x7f) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", ch);
      out += escaped;
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out + "\"";
}

}  // namespace sy
