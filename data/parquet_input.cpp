#include "data/parquet_input.h"

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "data/parquet_pages.h"

namespace sy {

// What the two readers are built from: the open file and its pages (data/parquet_pages.h), and
// the footer's structs and enums (data/parquet_format.h).
using parquet::check_codec;
using parquet::ColumnChunk;
using parquet::find_top_level_column;
using parquet::kByteArray;
using parquet::kList;
using parquet::kLogicalList;
using parquet::kLogicalMap;
using parquet::kMap;
using parquet::kMapKeyValue;
using parquet::kOptional;
using parquet::kRepeated;
using parquet::kRequired;
using parquet::leaf_chunk;
using parquet::leaf_index;
using parquet::LeafPage;
using parquet::LeafPages;
using parquet::ParquetFile;
using parquet::RowGroup;
using parquet::schema_children;
using parquet::SchemaElement;
using parquet::TopLevelColumn;

struct ParquetStrings::State {
  explicit State(const std::string& path) : file(path) {}
  ParquetFile file;
  std::string column_name;
  size_t column = 0;      // index among the leaf columns
  bool optional = false;  // definition level 1 for a value, 0 for a null
  std::optional<LeafPages> pages;
  size_t row_group = 0;  // the next one to start
  int64_t row = 0;       // rows handed out
  LeafPage page;         // the data page being read, its rows handed out in order
  size_t entry_index = 0;  // its next row (a value, or a null)
  size_t value_index = 0;  // its next value
};

ParquetStrings::ParquetStrings(const std::string& path, const std::string& column)
    : state_(std::make_unique<State>(path)) {
  State& s = *state_;
  s.column_name = column;
  const TopLevelColumn found = find_top_level_column(s.file, column);
  const SchemaElement& element = s.file.meta.schema[found.element];
  if (element.children > 0) s.file.fail("column \"" + column + "\" is nested, not strings");
  if (element.type != kByteArray) s.file.fail("column \"" + column + "\" does not hold strings");
  if (element.repetition == kRepeated)
    s.file.fail("column \"" + column + "\" is a list, not strings");
  s.column = found.first_leaf;
  s.optional = element.repetition == kOptional;
  s.pages.emplace(s.file, 0, s.optional ? 1 : 0);
  for (size_t g = 0; g < s.file.meta.row_groups.size(); g++) {
    const RowGroup& group = s.file.meta.row_groups[g];
    const ColumnChunk& chunk = leaf_chunk(s.file, g, s.column, {column});
    if (chunk.values != group.rows)
      s.file.fail("row group " + std::to_string(g) + ": " + std::to_string(chunk.values) +
                  " values for " + std::to_string(group.rows) + " rows");
    check_codec(s.file, chunk);
  }
}

ParquetStrings::~ParquetStrings() = default;

int64_t ParquetStrings::rows() const { return state_->file.rows(); }

bool ParquetStrings::next(std::optional<std::string>& value) {
  State& s = *state_;
  while (s.entry_index == s.page.entries) {
    if (!s.pages->started() || s.pages->chunk_done()) {
      if (s.row_group == s.file.meta.row_groups.size()) return false;
      s.pages->start(s.file.meta.row_groups[s.row_group].columns[s.column], s.row_group);
      s.row_group++;
      s.page = LeafPage();
      s.entry_index = s.value_index = 0;
      continue;
    }
    if (s.pages->read_page(s.page)) s.entry_index = s.value_index = 0;
  }
  const bool null = s.optional && s.page.definition[s.entry_index] == 0;
  s.entry_index++;
  // A page decodes one value for each entry that is not null (LeafPages::read_page).
  if (null) value.reset();
  else value = s.page.take(s.value_index++);
  s.row++;
  return true;
}

bool ParquetStrings::next(std::string& value) {
  std::optional<std::string> maybe;
  if (!next(maybe)) return false;
  if (!maybe)
    state_->file.fail("row " + std::to_string(state_->row - 1) + ": \"" + state_->column_name +
                      "\" is null");
  value = std::move(*maybe);
  return true;
}

namespace {

bool is_list(const SchemaElement& element) {
  return element.converted_type == kList || element.logical_type == kLogicalList;
}
bool is_map(const SchemaElement& element) {
  return element.converted_type == kMap || element.converted_type == kMapKeyValue ||
         element.logical_type == kLogicalMap;
}

// What a list's element holds, in words, for refusals.
std::string element_shape(const SchemaElement& element) {
  if (is_list(element) || element.repetition == kRepeated) return "a list of lists";
  if (is_map(element)) return "a list of maps";
  if (element.children == 0)
    return element.type == kByteArray ? "a list of strings"
                                      : "a list of values that are not strings";
  return "";  // a struct
}

// Where a list-of-structs column's parts lie in the schema, and the definition levels that tell
// a null list, an empty one, a null element and a null member value apart: a level below
// list_level is a null list, below elements_level an empty one, below element_level a null
// element, below a member's own maximum a null value.
struct ListOfStructs {
  TopLevelColumn column;
  size_t element = 0;                     // the struct, one a list element
  std::vector<std::string> element_path;  // the schema's names down to it
  int list_level = 0, elements_level = 0, element_level = 0;
  std::vector<size_t> members;
};

ListOfStructs find_list_of_structs(const ParquetFile& file, const std::string& column) {
  ListOfStructs list;
  list.column = find_top_level_column(file, column);
  const std::vector<SchemaElement>& schema = file.meta.schema;
  const SchemaElement& outer = schema[list.column.element];
  const auto refuse = [&](const std::string& holds) {
    file.fail("column \"" + column + "\" is not a list of structs (it holds " + holds + ")");
  };
  list.element_path = {outer.name};
  size_t repeated = list.column.element;
  if (outer.repetition == kRepeated && !is_list(outer) && !is_map(outer)) {
    // A repeated field outside a LIST group: a required list of required elements.
    if (outer.children == 0)
      refuse(outer.type == kByteArray ? "a list of strings"
                                      : "a list of values that are not strings");
    list.element = repeated;
    list.elements_level = list.element_level = 1;
  } else {
    if (outer.children == 0)
      refuse(outer.type == kByteArray ? "strings" : "values that are not strings");
    if (is_map(outer)) refuse("a map");
    if (!is_list(outer)) refuse("a struct");
    const std::vector<size_t> children = schema_children(file, list.column.element);
    if (outer.repetition == kRepeated || children.size() != 1 ||
        schema[children[0]].repetition != kRepeated)
      refuse("a LIST group not of the forms the Parquet spec gives");
    repeated = children[0];
    list.element_path.push_back(schema[repeated].name);
    list.list_level = outer.repetition == kOptional ? 1 : 0;
    list.elements_level = list.list_level + 1;
    // The spec's backward-compatibility rules: the repeated group is itself the element where
    // it has several members, a repeated one, or a legacy name; else its one member is (the
    // standard 3-level form).
    const SchemaElement& middle = schema[repeated];
    const std::vector<size_t> inner =
        middle.children > 0 ? schema_children(file, repeated) : std::vector<size_t>{};
    if (middle.children == 0 || inner.size() > 1 || schema[inner[0]].repetition == kRepeated ||
        middle.name == "array" || middle.name == outer.name + "_tuple") {
      list.element = repeated;
      list.element_level = list.elements_level;
    } else {
      list.element = inner[0];
      list.element_path.push_back(schema[list.element].name);
      list.element_level =
          list.elements_level + (schema[list.element].repetition == kOptional ? 1 : 0);
    }
    // The element's own repetition is the list's where it is the repeated group.
    SchemaElement element = schema[list.element];
    if (list.element == repeated) element.repetition = kRequired;
    if (const std::string shape = element_shape(element); !shape.empty()) refuse(shape);
  }
  list.members = schema_children(file, list.element);
  return list;
}

}  // namespace

struct ParquetRecordLists::State {
  explicit State(const std::string& path) : file(path) {}

  // A field asked for: its leaf column's pages and how far they are read.
  struct Field {
    std::string name, column;        // the member's name; its leaf column's path, dotted
    std::vector<std::string> path;   // the schema's names down to the leaf
    size_t leaf = 0;                 // index among the leaf columns
    int max_definition = 0;          // a present value's level
    std::optional<LeafPages> pages;  // the current row group's
    LeafPage page;
    size_t entry = 0, value = 0;  // the page's next entry and next value
    // The row being read: each entry's definition level, and the values present.
    std::vector<uint8_t> row_levels;
    std::vector<std::string> row_values;
  };

  ParquetFile file;
  std::string column;
  ListOfStructs list;
  std::vector<Field> fields;
  size_t row_group = 0;  // the next one to start
  bool in_row_group = false;
  int64_t row_group_rows_left = 0;
  int64_t row = 0;  // rows handed out
  int64_t row_bytes = 0;

  [[noreturn]] void fail_row(const std::string& why) const {
    file.fail("row " + std::to_string(row) + ": " + why);
  }
  std::string row_group_name() const { return "row group " + std::to_string(row_group - 1); }
  Field make_field(const std::string& name) const;
  bool start_row();
  void finish_row_group();
  bool at_entry(Field& field);
  void take_entry(Field& field);
  void read_row(Field& field);
  void check_fields_agree() const;
  void assemble(std::vector<std::vector<std::string>>& records);
};

ParquetRecordLists::State::Field ParquetRecordLists::State::make_field(
    const std::string& name) const {
  const std::vector<SchemaElement>& schema = file.meta.schema;
  const std::string in_column = "column \"" + column + "\": ";
  std::string names;
  for (const size_t member : list.members) {
    const SchemaElement& element = schema[member];
    names += (names.empty() ? "" : ", ") + element.name;
    if (element.name != name) continue;
    if (element.children > 0)
      file.fail(in_column + "field \"" + name + "\" is nested, not strings");
    if (element.type != kByteArray)
      file.fail(in_column + "field \"" + name + "\" does not hold strings");
    if (element.repetition == kRepeated)
      file.fail(in_column + "field \"" + name + "\" is a list, not strings");
    Field field;
    field.name = name;
    field.path = list.element_path;
    field.path.push_back(name);
    for (const std::string& part : field.path)
      field.column += (field.column.empty() ? "" : ".") + part;
    field.leaf = leaf_index(file, list.column, member);
    field.max_definition = list.element_level + (element.repetition == kOptional ? 1 : 0);
    return field;
  }
  file.fail(in_column + "no field \"" + name + "\" in its structs (fields: " + names + ")");
}

ParquetRecordLists::ParquetRecordLists(const std::string& path, const std::string& column,
                                       const std::vector<std::string>& fields)
    : state_(std::make_unique<State>(path)) {
  State& s = *state_;
  s.column = column;
  s.list = find_list_of_structs(s.file, column);
  if (fields.empty()) s.file.fail("no fields asked of column \"" + column + "\"");
  s.fields.reserve(fields.size());
  for (const std::string& name : fields) {
    s.fields.push_back(s.make_field(name));
    s.fields.back().pages.emplace(s.file, 1, s.fields.back().max_definition);
  }
  for (size_t g = 0; g < s.file.meta.row_groups.size(); g++) {
    const RowGroup& group = s.file.meta.row_groups[g];
    int64_t entries = -1;
    for (const State::Field& field : s.fields) {
      const ColumnChunk& chunk = leaf_chunk(s.file, g, field.leaf, field.path);
      // Each row is one entry at least (a null or empty list too), each element one entry in
      // every field's column.
      if (group.rows < 0 || chunk.values < group.rows)
        s.file.fail("row group " + std::to_string(g) + ": " + std::to_string(chunk.values) +
                    " values for " + std::to_string(group.rows) + " rows");
      if (entries >= 0 && chunk.values != entries)
        s.file.fail("row group " + std::to_string(g) + ": the fields of \"" + column +
                    "\" hold different numbers of values (" + std::to_string(entries) + " and " +
                    std::to_string(chunk.values) + ")");
      entries = chunk.values;
      check_codec(s.file, chunk);
    }
  }
}

ParquetRecordLists::~ParquetRecordLists() = default;

int64_t ParquetRecordLists::rows() const { return state_->file.rows(); }

// Moves to the next row group that has rows, having checked that the last one's columns end
// with its rows; false after the last.
bool ParquetRecordLists::State::start_row() {
  while (row_group_rows_left == 0) {
    if (in_row_group) finish_row_group();
    in_row_group = false;
    if (row_group == file.meta.row_groups.size()) return false;
    for (Field& field : fields) {
      field.pages->start(file.meta.row_groups[row_group].columns[field.leaf], row_group);
      field.page = LeafPage();
      field.entry = field.value = 0;
    }
    row_group_rows_left = file.meta.row_groups[row_group].rows;
    row_group++;
    in_row_group = true;
  }
  return true;
}

void ParquetRecordLists::State::finish_row_group() {
  for (Field& field : fields)
    if (at_entry(field))
      file.fail(row_group_name() + ": column \"" + field.column + "\" holds more than its " +
                std::to_string(file.meta.row_groups[row_group - 1].rows) + " rows");
}

bool ParquetRecordLists::State::at_entry(Field& field) {
  while (field.entry == field.page.entries) {
    if (field.pages->chunk_done()) return false;
    if (field.pages->read_page(field.page)) field.entry = field.value = 0;
  }
  return true;
}

void ParquetRecordLists::State::take_entry(Field& field) {
  // A chat's turns are kilobytes; this bounds what a damaged page (one dictionary string
  // repeated) can make a row hold.
  constexpr int64_t kMostRowBytes = int64_t{1} << 30;
  const uint8_t level = field.page.definition[field.entry++];
  field.row_levels.push_back(level);
  if (level != field.max_definition) return;
  row_bytes += static_cast<int64_t>(field.page.value_size(field.value));
  if (row_bytes > kMostRowBytes) fail_row("a list whose strings take more than 1 GiB");
  field.row_values.push_back(field.page.take(field.value++));
}

// The field's entries of the current row: the first has repetition level 0, the rest (its
// list's further elements) 1, and may lie on the pages after it.
void ParquetRecordLists::State::read_row(Field& field) {
  constexpr size_t kMostElements = size_t{1} << 20;
  field.row_levels.clear();
  field.row_values.clear();
  if (!at_entry(field))
    file.fail(row_group_name() + ": column \"" + field.column + "\" ends before its " +
              std::to_string(file.meta.row_groups[row_group - 1].rows) + " rows");
  if (field.page.repetition[field.entry] != 0)
    fail_row("column \"" + field.column + "\" continues a list where the row starts");
  take_entry(field);
  while (at_entry(field) && field.page.repetition[field.entry] == 1) {
    if (field.row_levels.size() == kMostElements)
      fail_row("a list of more than " + std::to_string(kMostElements) +
               " elements, more than this reader takes");
    take_entry(field);
  }
}

// The fields' columns repeat the list's structure: the same entries, and the same levels up to
// the element's.
void ParquetRecordLists::State::check_fields_agree() const {
  const std::vector<uint8_t>& first = fields[0].row_levels;
  for (const Field& field : fields) {
    bool agree = field.row_levels.size() == first.size();
    for (size_t k = 0; agree && k < first.size(); k++)
      agree = std::min<int>(field.row_levels[k], list.element_level) ==
              std::min<int>(first[k], list.element_level);
    if (!agree)
      fail_row("columns \"" + fields[0].column + "\" and \"" + field.column +
               "\" disagree on its list (" + std::to_string(first.size()) + " and " +
               std::to_string(field.row_levels.size()) + " entries; a damaged file)");
  }
}

void ParquetRecordLists::State::assemble(std::vector<std::vector<std::string>>& records) {
  const std::vector<uint8_t>& levels = fields[0].row_levels;
  if (levels[0] < list.list_level) fail_row("\"" + column + "\" is null");
  if (levels[0] < list.elements_level) {
    if (levels.size() > 1) fail_row("an empty list with elements (a damaged file)");
    return;
  }
  std::vector<size_t> next_value(fields.size(), 0);
  records.resize(levels.size());
  for (size_t k = 0; k < levels.size(); k++) {
    if (levels[k] < list.elements_level) fail_row("an empty list with elements (a damaged file)");
    if (levels[k] < list.element_level)
      fail_row("element " + std::to_string(k) + " of \"" + column + "\" is null");
    records[k].reserve(fields.size());
    for (size_t f = 0; f < fields.size(); f++) {
      Field& field = fields[f];
      if (field.row_levels[k] < field.max_definition)
        fail_row("\"" + field.name + "\" is null in element " + std::to_string(k) + " of \"" +
                 column + "\"");
      records[k].push_back(std::move(field.row_values[next_value[f]++]));
    }
  }
}

bool ParquetRecordLists::next(std::vector<std::vector<std::string>>& records) {
  State& s = *state_;
  records.clear();
  if (!s.start_row()) return false;
  s.row_bytes = 0;
  for (State::Field& field : s.fields) s.read_row(field);
  s.check_fields_agree();
  s.assemble(records);
  s.row_group_rows_left--;
  s.row++;
  return true;
}

std::vector<std::string> parquet_list_struct_fields(const std::string& path,
                                                    const std::string& column) {
  const ParquetFile file(path);
  const ListOfStructs list = find_list_of_structs(file, column);
  std::vector<std::string> names;
  for (const size_t member : list.members) {
    const SchemaElement& element = file.meta.schema[member];
    if (element.children == 0 && element.type == kByteArray && element.repetition != kRepeated)
      names.push_back(element.name);
  }
  return names;
}

std::vector<std::string> parquet_columns(const std::string& path) {
  const ParquetFile file(path);
  if (file.meta.schema.empty()) file.fail("no schema");
  std::vector<std::string> names;
  for (const size_t column : schema_children(file, 0))
    names.push_back(file.meta.schema[column].name);
  return names;
}

}  // namespace sy
