// Parquet's file format (data/parquet_format.h): the names of its codecs and encodings, and the
// readers of the footer's structs and of the page header, field by field.
#include "data/parquet_format.h"

namespace sy::parquet {

const char* codec_name(int64_t codec) {
  switch (codec) {
    case 0:
      return "uncompressed";
    case 1:
      return "snappy";
    case 2:
      return "gzip";
    case 3:
      return "lzo";
    case 4:
      return "brotli";
    case 5:
      return "lz4";
    case 6:
      return "zstd";
    case 7:
      return "lz4_raw";
    default:
      return "unknown";
  }
}

const char* encoding_name(int64_t encoding) {
  switch (encoding) {
    case 0:
      return "PLAIN";
    case 2:
      return "PLAIN_DICTIONARY";
    case 3:
      return "RLE";
    case 4:
      return "BIT_PACKED";
    case 5:
      return "DELTA_BINARY_PACKED";
    case 6:
      return "DELTA_LENGTH_BYTE_ARRAY";
    case 7:
      return "DELTA_BYTE_ARRAY";
    case 8:
      return "RLE_DICTIONARY";
    case 9:
      return "BYTE_STREAM_SPLIT";
    default:
      return "unknown";
  }
}

namespace {

template <class Read>
void read_list(CompactReader& in, Read read_element) {
  uint64_t count;
  int type;
  in.list_header(count, type);
  for (uint64_t k = 0; k < count; k++) read_element(type);
}

// LogicalType is a union: the id of its one member says which annotation it is.
int64_t read_logical_type(CompactReader& in) {
  int64_t member = -1;
  int16_t last = 0, id;
  int type;
  while (in.next_field(last, id, type)) {
    if (member < 0) member = id;
    in.skip(type);
  }
  return member;
}

SchemaElement read_schema_element(CompactReader& in) {
  SchemaElement element;
  int16_t last = 0, id;
  int type;
  while (in.next_field(last, id, type)) {
    if (id == 1 && type == 5) element.type = in.integer();
    else if (id == 3 && type == 5) element.repetition = in.integer();
    else if (id == 4 && type == 8) element.name = in.binary();
    else if (id == 5 && type == 5) element.children = in.integer();
    else if (id == 6 && type == 5) element.converted_type = in.integer();
    else if (id == 10 && type == 12) element.logical_type = read_logical_type(in);
    else in.skip(type);
  }
  return element;
}

void read_column_meta(CompactReader& in, ColumnChunk& chunk) {
  int16_t last = 0, id;
  int type;
  while (in.next_field(last, id, type)) {
    if (id == 1 && type == 5) chunk.type = in.integer();
    else if (id == 3 && type == 9)
      read_list(in, [&](int element) {
        if (element != 8) in.fail("a column path that is not strings");
        chunk.path.push_back(in.binary());
      });
    else if (id == 4 && type == 5) chunk.codec = in.integer();
    else if (id == 5 && type == 6) chunk.values = in.integer();
    else if (id == 7 && type == 6) chunk.compressed_size = in.integer();
    else if (id == 9 && type == 6) chunk.data_offset = in.integer();
    else if (id == 11 && type == 6) chunk.dictionary_offset = in.integer();
    else in.skip(type);
  }
}

ColumnChunk read_column_chunk(CompactReader& in) {
  ColumnChunk chunk;
  int16_t last = 0, id;
  int type;
  while (in.next_field(last, id, type)) {
    if (id == 1 && type == 8) {
      in.binary();
      chunk.external = true;
    } else if (id == 3 && type == 12) {
      read_column_meta(in, chunk);
    } else {
      in.skip(type);
    }
  }
  return chunk;
}

RowGroup read_row_group(CompactReader& in) {
  RowGroup group;
  int16_t last = 0, id;
  int type;
  while (in.next_field(last, id, type)) {
    if (id == 1 && type == 9)
      read_list(in, [&](int element) {
        if (element != 12) in.fail("a column chunk that is not a struct");
        group.columns.push_back(read_column_chunk(in));
      });
    else if (id == 3 && type == 6) group.rows = in.integer();
    else in.skip(type);
  }
  return group;
}

}  // namespace

FileMetaData read_file_metadata(CompactReader& in) {
  FileMetaData meta;
  int16_t last = 0, id;
  int type;
  while (in.next_field(last, id, type)) {
    if (id == 2 && type == 9)
      read_list(in, [&](int element) {
        if (element != 12) in.fail("a schema element that is not a struct");
        meta.schema.push_back(read_schema_element(in));
      });
    else if (id == 3 && type == 6) meta.rows = in.integer();
    else if (id == 4 && type == 9)
      read_list(in, [&](int element) {
        if (element != 12) in.fail("a row group that is not a struct");
        meta.row_groups.push_back(read_row_group(in));
      });
    else in.skip(type);
  }
  return meta;
}

namespace {

void read_page_struct(CompactReader& in, PageHeader& page, bool v2) {
  int16_t last = 0, id;
  int type;
  while (in.next_field(last, id, type)) {
    if (id == 1 && type == 5) page.values = in.integer();
    else if (!v2 && id == 2 && type == 5) page.encoding = in.integer();
    else if (!v2 && id == 3 && type == 5) page.definition_encoding = in.integer();
    else if (!v2 && id == 4 && type == 5) page.repetition_encoding = in.integer();
    else if (v2 && id == 4 && type == 5) page.encoding = in.integer();
    else if (v2 && id == 5 && type == 5) page.definition_bytes = in.integer();
    else if (v2 && id == 6 && type == 5) page.repetition_bytes = in.integer();
    else if (v2 && id == 7 && (type == 1 || type == 2)) page.values_compressed = type == 1;
    else in.skip(type);
  }
}

}  // namespace

PageHeader read_page_header(CompactReader& in) {
  PageHeader page;
  int16_t last = 0, id;
  int type;
  while (in.next_field(last, id, type)) {
    if (id == 1 && type == 5) page.type = in.integer();
    else if (id == 2 && type == 5) page.uncompressed_size = in.integer();
    else if (id == 3 && type == 5) page.compressed_size = in.integer();
    else if ((id == 5 || id == 7) && type == 12) read_page_struct(in, page, false);
    else if (id == 8 && type == 12) read_page_struct(in, page, true);
    else in.skip(type);
  }
  return page;
}

}  // namespace sy::parquet
