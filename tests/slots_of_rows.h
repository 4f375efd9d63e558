// The inverse of a router plan's slot_row, for tests that check the permuted rows' order.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

namespace sy {

// The assignment of each permuted row 0 .. max(slot_row): -1 where no assignment names the row,
// -2 where more than one does (a plan names each kept row exactly once).
inline std::vector<int32_t> slots_of_rows(const std::vector<int32_t>& slot_row) {
  const int32_t rows =
      slot_row.empty() ? 0 : *std::max_element(slot_row.begin(), slot_row.end()) + 1;
  std::vector<int32_t> row_slot(static_cast<size_t>(std::max(rows, 0)), -1);
  for (size_t s = 0; s < slot_row.size(); ++s) {
    if (slot_row[s] < 0) continue;
    int32_t& named = row_slot[static_cast<size_t>(slot_row[s])];
    named = named == -1 ? static_cast<int32_t>(s) : -2;
  }
  return row_slot;
}

}  // namespace sy
