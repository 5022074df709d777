// safetensors files: 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the raw row-major data. Files are memory-mapped; tensor views point into the map.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "qinterp/io/dtype.hpp"
#include "qinterp/io/mapped_file.hpp"

namespace qinterp::io {

// A tensor inside a mapped file (or any buffer): row-major, `shape` outermost first.
struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps and validates the whole header: JSON syntax, known dtypes, offsets inside the data
  // region, sizes equal to prod(shape) * element size. Throws Error naming file and tensor.
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return file_.path(); }
  std::vector<std::string> names() const;  // in file order of their data
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const TensorView& get(const std::string& name) const;  // throws Error if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  MappedFile file_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint that may be split over shards: a directory holding model.safetensors, or
// model.safetensors.index.json with its {"weight_map": {tensor: shard file}}, or one file.
class SafetensorsCheckpoint {
 public:
  explicit SafetensorsCheckpoint(const std::string& path);
  std::vector<std::string> names() const;
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  const TensorView& get(const std::string& name) const;
  std::map<std::string, std::string> metadata() const;  // of the first shard

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, size_t> where_;
  std::string path_;
};

// Writes tensors (data copied from each view) and string metadata to a new safetensors file.
// Writes to path + ".tmp" and renames, so a failed write never leaves a half file at `path`.
void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace qinterp::io
