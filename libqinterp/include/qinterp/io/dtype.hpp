// Element types of tensors as stored in files, independent of torch.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace qinterp::io {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // the safetensors spelling: "F32", "BF16", ...
// Parses a safetensors dtype string; returns false for one qinterp does not know.
bool dtype_from_name(const std::string& s, DType* out);

}  // namespace qinterp::io
