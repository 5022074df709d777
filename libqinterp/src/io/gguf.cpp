#include "qinterp/io/gguf.hpp"

#include <cstdio>

namespace qinterp::io {

namespace {
// Limits that no real file comes near; beyond them the counts are corrupt and allocating for
// them would exhaust memory before the bounds checks get a chance to fail.
constexpr uint64_t kMaxString = 1ull << 30;
constexpr int kMaxDepth = 4;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS
}  // namespace

const char* ggml_type_name(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return "F32";
    case GgmlType::F16: return "F16";
    case GgmlType::BF16: return "BF16";
    case GgmlType::Q4_0: return "Q4_0";
    case GgmlType::Q4_1: return "Q4_1";
    case GgmlType::Q5_0: return "Q5_0";
    case GgmlType::Q5_1: return "Q5_1";
    case GgmlType::Q8_0: return "Q8_0";
    case GgmlType::Q8_1: return "Q8_1";
    case GgmlType::Q2_K: return "Q2_K";
    case GgmlType::Q3_K: return "Q3_K";
    case GgmlType::Q4_K: return "Q4_K";
    case GgmlType::Q5_K: return "Q5_K";
    case GgmlType::Q6_K: return "Q6_K";
    case GgmlType::Q8_K: return "Q8_K";
  }
  return "unknown";
}

bool ggml_block_layout(GgmlType t, int64_t* elems, int64_t* bytes) {
  switch (t) {
    case GgmlType::F32: *elems = 1; *bytes = 4; return true;
    case GgmlType::F16: *elems = 1; *bytes = 2; return true;
    case GgmlType::BF16: *elems = 1; *bytes = 2; return true;
    case GgmlType::Q4_0: *elems = 32; *bytes = 18; return true;   // fp16 d, 16 bytes of nibbles
    case GgmlType::Q4_1: *elems = 32; *bytes = 20; return true;   // fp16 d, fp16 m, 16 bytes
    case GgmlType::Q5_0: *elems = 32; *bytes = 22; return true;   // fp16 d, 4 bytes of high bits, 16
    case GgmlType::Q5_1: *elems = 32; *bytes = 24; return true;   // fp16 d, fp16 m, high bits, 16
    case GgmlType::Q8_0: *elems = 32; *bytes = 34; return true;   // fp16 d, 32 int8
    case GgmlType::Q2_K: *elems = 256; *bytes = 84; return true;  // 16 scale bytes, 64, d, dmin
    case GgmlType::Q3_K: *elems = 256; *bytes = 110; return true; // hmask 32, 64, 12 scale bytes, d
    case GgmlType::Q4_K: *elems = 256; *bytes = 144; return true; // d, dmin, 12 scale bytes, 128
    case GgmlType::Q5_K: *elems = 256; *bytes = 176; return true; // d, dmin, 12 scale bytes, qh 32, 128
    case GgmlType::Q6_K: *elems = 256; *bytes = 210; return true; // ql 128, qh 64, sc 16, d
    default: return false;
  }
}

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

std::vector<int64_t> GgufTensorInfo::torch_shape() const { return {ne.rbegin(), ne.rend()}; }

namespace {

std::string read_str(ByteReader& r, const char* what) {
  const uint64_t n = r.read<uint64_t>(what);
  if (n > kMaxString || n > r.remaining())
    fail(r.file(), ": string length ", n, " at byte ", r.offset() - 8, " exceeds the file (", what, ")");
  return r.read_string(n, what);
}

GgufValue read_value(ByteReader& r, uint32_t type, const std::string& key, int depth) {
  GgufValue v;
  if (type > GgufValue::FLOAT64)
    fail(r.file(), ": metadata key '", key, "' has unknown value type ", type, " at byte ", r.offset());
  v.type = static_cast<GgufValue::Type>(type);
  switch (v.type) {
    case GgufValue::UINT8: v.i = r.read<uint8_t>("u8 value"); break;
    case GgufValue::INT8: v.i = r.read<int8_t>("i8 value"); break;
    case GgufValue::UINT16: v.i = r.read<uint16_t>("u16 value"); break;
    case GgufValue::INT16: v.i = r.read<int16_t>("i16 value"); break;
    case GgufValue::UINT32: v.i = r.read<uint32_t>("u32 value"); break;
    case GgufValue::INT32: v.i = r.read<int32_t>("i32 value"); break;
    case GgufValue::FLOAT32: v.f = r.read<float>("f32 value"); break;
    case GgufValue::BOOL: {
      const uint8_t b = r.read<uint8_t>("bool value");
      if (b > 1) fail(r.file(), ": metadata key '", key, "' has bool value ", int(b));
      v.i = b;
      break;
    }
    case GgufValue::STRING: v.s = read_str(r, "string value"); break;
    case GgufValue::UINT64: v.u = r.read<uint64_t>("u64 value"); v.i = static_cast<int64_t>(v.u); break;
    case GgufValue::INT64: v.i = r.read<int64_t>("i64 value"); break;
    case GgufValue::FLOAT64: v.f = r.read<double>("f64 value"); break;
    case GgufValue::ARRAY: {
      if (depth >= kMaxDepth) fail(r.file(), ": metadata key '", key, "' nests arrays too deeply");
      const uint32_t et = r.read<uint32_t>("array element type");
      const uint64_t n = r.read<uint64_t>("array length");
      // Every element takes at least one byte, so a longer array cannot fit in what is left.
      if (n > r.remaining())
        fail(r.file(), ": metadata key '", key, "' claims ", n, " array elements but only ",
             r.remaining(), " bytes remain");
      v.elem_type = static_cast<GgufValue::Type>(et);
      v.array.reserve(n);
      for (uint64_t k = 0; k < n; ++k) v.array.push_back(read_value(r, et, key, depth + 1));
      break;
    }
  }
  return v;
}

}  // namespace

GgufFile::GgufFile(const std::string& path) : file_(path) {
  ByteReader r(file_.data(), file_.size(), path);
  const uint32_t magic = r.read<uint32_t>("magic");
  if (magic != 0x46554747u)  // "GGUF" little-endian
    fail(path, ": not a GGUF file (magic bytes are not \"GGUF\")");
  version_ = r.read<uint32_t>("version");
  if (version_ != 2 && version_ != 3)
    fail(path, ": GGUF version ", version_, " is not supported (qinterp reads versions 2 and 3)");
  const uint64_t n_tensors = r.read<uint64_t>("tensor count");
  const uint64_t n_kv = r.read<uint64_t>("metadata count");
  if (n_kv > r.remaining() || n_tensors > r.remaining())
    fail(path, ": header claims ", n_tensors, " tensors and ", n_kv, " metadata entries, more than the file can hold");
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = read_str(r, "metadata key");
    const uint32_t type = r.read<uint32_t>("metadata value type");
    GgufValue v = read_value(r, type, key, 0);
    if (!kv_.emplace(key, std::move(v)).second) fail(path, ": duplicate metadata key '", key, "'");
  }
  if (auto it = kv_.find("general.alignment"); it != kv_.end()) {
    const int64_t a = it->second.i;
    if (a <= 0 || (a & (a - 1)) != 0 || a > 1 << 20)
      fail(path, ": general.alignment ", a, " is not a power of two");
    alignment_ = static_cast<size_t>(a);
  }
  tensors_.reserve(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo t;
    t.name = read_str(r, "tensor name");
    const uint32_t nd = r.read<uint32_t>("tensor dim count");
    if (nd == 0 || nd > kMaxDims) fail(path, ": tensor '", t.name, "' has ", nd, " dims (1 to 4 allowed)");
    for (uint32_t d = 0; d < nd; ++d) {
      const int64_t dim = r.read<int64_t>("tensor dim");
      if (dim <= 0 || dim > (int64_t{1} << 40)) fail(path, ": tensor '", t.name, "' has dim ", dim);
      t.ne.push_back(dim);
    }
    t.type = static_cast<GgmlType>(r.read<uint32_t>("tensor type"));
    t.offset = r.read<uint64_t>("tensor offset");
    tensors_.push_back(std::move(t));
  }
  const size_t data_start = (r.offset() + alignment_ - 1) / alignment_ * alignment_;
  for (auto& t : tensors_) {
    int64_t be = 0, bb = 0;
    if (!ggml_block_layout(t.type, &be, &bb))
      fail(path, ": tensor '", t.name, "' has ggml type ", static_cast<uint32_t>(t.type), " (",
           ggml_type_name(t.type), "), which qinterp cannot decode");
    if (t.ne[0] % be != 0)
      fail(path, ": tensor '", t.name, "' row length ", t.ne[0], " is not a multiple of the ",
           ggml_type_name(t.type), " block size ", be);
    const int64_t n = t.numel();
    if (n <= 0 || n > (int64_t{1} << 48)) fail(path, ": tensor '", t.name, "' has ", n, " elements");
    t.nbytes = static_cast<size_t>(n / be * bb);
    if (t.offset % alignment_ != 0)
      fail(path, ": tensor '", t.name, "' offset ", t.offset, " is not aligned to ", alignment_);
    if (data_start > file_.size() || t.offset > file_.size() - data_start ||
        t.nbytes > file_.size() - data_start - t.offset)
      fail(path, ": tensor '", t.name, "' data [", data_start + t.offset, ", ",
           data_start + t.offset + t.nbytes, ") lies past the end of the file (", file_.size(),
           " bytes); the file is truncated or the offset is wrong");
    t.data = file_.data() + data_start + t.offset;
  }
}

const GgufValue& GgufFile::get(const std::string& key) const {
  auto it = kv_.find(key);
  if (it == kv_.end()) fail(path(), ": metadata key '", key, "' is missing");
  return it->second;
}

int64_t GgufFile::get_int(const std::string& key) const {
  const GgufValue& v = get(key);
  if (v.type == GgufValue::STRING || v.type == GgufValue::ARRAY || v.type == GgufValue::FLOAT32 ||
      v.type == GgufValue::FLOAT64)
    fail(path(), ": metadata key '", key, "' is not an integer");
  return v.i;
}

int64_t GgufFile::get_int(const std::string& key, int64_t dflt) const {
  return has(key) ? get_int(key) : dflt;
}

double GgufFile::get_float(const std::string& key, double dflt) const {
  if (!has(key)) return dflt;
  const GgufValue& v = get(key);
  if (v.type == GgufValue::FLOAT32 || v.type == GgufValue::FLOAT64) return v.f;
  return static_cast<double>(get_int(key));
}

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufValue::STRING) fail(path(), ": metadata key '", key, "' is not a string");
  return v.s;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

namespace {
template <class T>
void put_le(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));  // x86-64 and aarch64 are little-endian
}
void put_value(std::string& out, const GgufValue& v, GgufValue::Type type) {
  switch (type) {
    case GgufValue::UINT8: put_le<uint8_t>(out, static_cast<uint8_t>(v.i)); break;
    case GgufValue::INT8: put_le<int8_t>(out, static_cast<int8_t>(v.i)); break;
    case GgufValue::UINT16: put_le<uint16_t>(out, static_cast<uint16_t>(v.i)); break;
    case GgufValue::INT16: put_le<int16_t>(out, static_cast<int16_t>(v.i)); break;
    case GgufValue::UINT32: put_le<uint32_t>(out, static_cast<uint32_t>(v.i)); break;
    case GgufValue::INT32: put_le<int32_t>(out, static_cast<int32_t>(v.i)); break;
    case GgufValue::FLOAT32: put_le<float>(out, static_cast<float>(v.f)); break;
    case GgufValue::BOOL: put_le<uint8_t>(out, v.i ? 1 : 0); break;
    case GgufValue::STRING:
      put_le<uint64_t>(out, v.s.size());
      out += v.s;
      break;
    case GgufValue::ARRAY:
      put_le<uint32_t>(out, v.elem_type);
      put_le<uint64_t>(out, v.array.size());
      for (const auto& e : v.array) put_value(out, e, v.elem_type);
      break;
    case GgufValue::UINT64: put_le<uint64_t>(out, v.u); break;
    case GgufValue::INT64: put_le<int64_t>(out, v.i); break;
    case GgufValue::FLOAT64: put_le<double>(out, v.f); break;
  }
}
}  // namespace

void write_gguf_metadata(const std::string& path, const std::map<std::string, GgufValue>& kv) {
  std::string out = "GGUF";
  put_le<uint32_t>(out, 3);
  put_le<uint64_t>(out, 0);
  put_le<uint64_t>(out, kv.size());
  for (const auto& [key, v] : kv) {
    put_le<uint64_t>(out, key.size());
    out += key;
    put_le<uint32_t>(out, v.type);
    put_value(out, v, v.type);
  }
  out.append((32 - out.size() % 32) % 32, '\0');
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) fail("cannot write ", path);
  const bool ok = std::fwrite(out.data(), 1, out.size(), f) == out.size();
  if (std::fclose(f) != 0 || !ok) fail("cannot write ", path);
}

}  // namespace qinterp::io
