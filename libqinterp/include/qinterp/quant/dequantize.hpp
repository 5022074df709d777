// Tensor-level decoding of ggml blocks: CPU or CUDA, chosen by the device of the input.
#pragma once
#include <ATen/core/Tensor.h>

#include "qinterp/io/gguf.hpp"

namespace qinterp::quant {

// raw: uint8 tensor holding whole blocks of type t, contiguous, on CPU or CUDA.
// Returns a float32 tensor of `numel` elements on the same device. Throws Error if the byte
// count does not match numel, or if CUDA decoding of this type is not built.
at::Tensor dequantize_gguf(const at::Tensor& raw, io::GgmlType t, int64_t numel);

// True when this build has the CUDA kernels and the torch glue for CUDA tensors.
bool cuda_built();

}  // namespace qinterp::quant
