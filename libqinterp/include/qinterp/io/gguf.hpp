// GGUF v2/v3 files (ggml's model format): "GGUF" magic, version, tensor and key-value counts,
// typed metadata, tensor infos (name, dims with ne[0] the contiguous one, ggml type, offset),
// then tensor data aligned to `general.alignment` (default 32). Memory-mapped; every count,
// length and offset is checked against the file size before it is used.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "qinterp/io/mapped_file.hpp"

namespace qinterp::io {

// ggml tensor types (the numbering of ggml.h). Only those qinterp can read are named here.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, BF16 = 30,
};
const char* ggml_type_name(GgmlType t);
// Elements per block and bytes per block; false for types qinterp does not decode.
bool ggml_block_layout(GgmlType t, int64_t* block_elems, int64_t* block_bytes);

// One metadata value. Arrays hold their elements in `array` (nested arrays allowed).
struct GgufValue {
  enum Type : uint32_t {
    UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
    STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
  };
  Type type = UINT8;
  int64_t i = 0;      // every integer type and bool
  uint64_t u = 0;     // UINT64 kept exactly
  double f = 0;       // FLOAT32 / FLOAT64
  std::string s;      // STRING
  Type elem_type = UINT8;  // ARRAY
  std::vector<GgufValue> array;
};

struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> ne;  // ggml order: ne[0] is contiguous (the "in" dim of a weight)
  uint64_t offset = 0;      // relative to the data section
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  int64_t numel() const;
  std::vector<int64_t> torch_shape() const;  // ne reversed: [out, in] for a weight
};

class GgufFile {
 public:
  explicit GgufFile(const std::string& path);  // throws Error naming file and problem

  const std::string& path() const { return file_.path(); }
  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }

  bool has(const std::string& key) const { return kv_.count(key) != 0; }
  const GgufValue& get(const std::string& key) const;  // throws Error if missing
  int64_t get_int(const std::string& key) const;       // any integer type
  int64_t get_int(const std::string& key, int64_t dflt) const;
  double get_float(const std::string& key, double dflt) const;
  std::string get_string(const std::string& key) const;
  const GgufTensorInfo* find_tensor(const std::string& name) const;  // nullptr if absent

 private:
  MappedFile file_;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensorInfo> tensors_;
};

// Writes a GGUF v3 file holding only metadata (no tensors): a saved quantized model keeps the
// tokenizer of the GGUF it came from this way (its tokenizer.* keys and general.architecture).
void write_gguf_metadata(const std::string& path, const std::map<std::string, GgufValue>& kv);

}  // namespace qinterp::io
