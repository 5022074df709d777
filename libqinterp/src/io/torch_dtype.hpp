// Private: the element types of files (io::DType) against torch's scalar types, both ways.
#pragma once
#include <c10/core/ScalarType.h>

#include "qinterp/io/dtype.hpp"

namespace qinterp::io {

// Undefined for a type torch cannot hold as is (BOOL is kept out: weights never use it).
inline at::ScalarType to_scalar_type(DType t) {
  switch (t) {
    case DType::F64: return at::kDouble;
    case DType::F32: return at::kFloat;
    case DType::F16: return at::kHalf;
    case DType::BF16: return at::kBFloat16;
    case DType::I64: return at::kLong;
    case DType::I32: return at::kInt;
    case DType::I16: return at::kShort;
    case DType::I8: return at::kChar;
    case DType::U8: return at::kByte;
    default: return at::ScalarType::Undefined;
  }
}

// False for a scalar type files here do not store.
inline bool to_io_dtype(at::ScalarType t, DType* out) {
  for (DType d : {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32, DType::I16, DType::I8,
                  DType::U8})
    if (to_scalar_type(d) == t) {
      *out = d;
      return true;
    }
  return false;
}

}  // namespace qinterp::io
