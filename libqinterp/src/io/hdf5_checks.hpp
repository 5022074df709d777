// Internal: checks of a result file's raw bytes that HDF5 1.10 does not make itself. Damaged
// files (one flipped bit is enough) make HDF5 loop forever, divide by zero or read out of bounds;
// ResultStore runs these before HDF5 reads the structures concerned, while the file is unchanged.
// They read only what HDF5 and h5py write by default (superblock at byte 0, 8-byte offsets,
// version 1 object headers); anything else is left to HDF5 unchecked.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "qinterp/io/mapped_file.hpp"

namespace qinterp::io {

// The file as opened (mapped) and its global heap objects: collection address -> object index ->
// object size.
struct HeapIndex {
  explicit HeapIndex(const std::string& path) : file(path) {}
  MappedFile file;
  std::map<uint64_t, std::map<uint64_t, uint64_t>> objects;
};

// Indexes the global heaps of the file at `path`; throws Error if one would hang HDF5.
std::shared_ptr<const HeapIndex> check_global_heaps(const std::string& path);
// What is wrong with string attribute `name` of the object at `addr`, or "" (sound, or not told).
std::string check_vlen_reference(const HeapIndex& h, uint64_t addr, const char* name);
// What is wrong with the chunk layout of the dataset at `addr`, or "".
std::string check_layout(const HeapIndex& h, uint64_t addr);
// What is wrong with the symbol table of the group at `addr`, or "".
std::string check_symbol_table(const HeapIndex& h, uint64_t addr);
// The attribute of the object at `addr` that HDF5 could not decode safely and what is wrong with
// it ({name or "#index", why}), or {"", ""}. HDF5 decodes all of an object's attributes before it
// hands out any; when one fails, it frees the half-built table and may crash, and a string value
// is copied from the heap as the reference says (see check_vlen_reference).
std::pair<std::string, std::string> check_attributes(const HeapIndex& h, uint64_t addr);

}  // namespace qinterp::io
