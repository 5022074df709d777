#include "qinterp/io/dtype.hpp"

namespace qinterp::io {

namespace {
struct Entry {
  DType t;
  const char* name;
  size_t size;
};
constexpr Entry kTable[] = {
    {DType::F64, "F64", 8}, {DType::F32, "F32", 4}, {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2}, {DType::I64, "I64", 8}, {DType::I32, "I32", 4},
    {DType::I16, "I16", 2}, {DType::I8, "I8", 1}, {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1},
};
}  // namespace

size_t dtype_size(DType t) {
  for (const auto& e : kTable)
    if (e.t == t) return e.size;
  return 0;
}
const char* dtype_name(DType t) {
  for (const auto& e : kTable)
    if (e.t == t) return e.name;
  return "?";
}
bool dtype_from_name(const std::string& s, DType* out) {
  for (const auto& e : kTable)
    if (s == e.name) {
      *out = e.t;
      return true;
    }
  return false;
}

}  // namespace qinterp::io
