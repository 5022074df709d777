// Internal: the torch glue of the CUDA kernels (libqinterp/cuda/), declared once for every caller.
// Defined in this folder's .cpp files, which are compiled only when the build has CUDA
// (QINTERP_HAVE_CUDA); callers guard their calls with the same macro.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>

#include "qinterp/io/gguf.hpp"

namespace qinterp::quant::detail {

// 4-bit (quant4.cu). type: ref::FourBit as int. x, packed, absmax contiguous on one CUDA device.
std::pair<at::Tensor, at::Tensor> quantize_4bit_cuda(const at::Tensor& x, int type, int64_t block);
at::Tensor dequantize_4bit_cuda(const at::Tensor& packed, const at::Tensor& absmax, int type, int64_t block,
                                int64_t n, at::ScalarType dtype);
// y [n, rows] = x [n, cols] Wᵀ; absmax float32, or qabs uint8 + absmax2 / offset / code2 when
// double-quantized (the other left undefined).
at::Tensor gemv_4bit_cuda(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax,
                          const at::Tensor& qabs, const at::Tensor& absmax2, float offset, const at::Tensor& code2,
                          int type, int64_t rows, int64_t cols, int64_t block);

// ggml blocks (gguf_dequant.cu): raw uint8 blocks of type t -> float32 [numel].
at::Tensor dequantize_gguf_cuda(const at::Tensor& raw, io::GgmlType t, int64_t numel);

}  // namespace qinterp::quant::detail
