// A read-only memory map of a whole file. Readers (safetensors, GGUF, llama2.c) parse headers
// from it with bounds-checked reads and hand out pointers into it, so weights are never copied
// until the model converts them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "qinterp/error.hpp"

namespace qinterp::io {

class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path);  // throws Error if missing/unreadable
  ~MappedFile();
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Sequential little-endian reader over a byte range that never reads past its end: every read
// checks the remaining size and throws Error naming the file, the offset and what was being read.
class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size, std::string file)
      : data_(data), size_(size), file_(std::move(file)) {}

  size_t offset() const { return off_; }
  size_t remaining() const { return size_ - off_; }
  const std::string& file() const { return file_; }

  template <class T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + off_, sizeof(T));
    off_ += sizeof(T);
    return v;
  }
  const uint8_t* take(size_t n, const char* what) {
    need(n, what);
    const uint8_t* p = data_ + off_;
    off_ += n;
    return p;
  }
  std::string read_string(size_t n, const char* what) {
    const uint8_t* p = take(n, what);
    return std::string(reinterpret_cast<const char*>(p), n);
  }
  void need(size_t n, const char* what) const {
    if (n > size_ - off_)
      fail(file_, ": truncated at byte ", off_, " while reading ", what, " (needs ", n,
           " bytes, ", size_ - off_, " left)");
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t off_ = 0;
  std::string file_;
};

}  // namespace qinterp::io
