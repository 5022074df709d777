// Internal: GPTQ's min-max quantizer, shared by round-to-nearest (format_grouped.cpp) and GPTQ (gptq.cpp).
#pragma once
#include <ATen/core/Tensor.h>

#include <utility>

#include "qinterp/quant/quantize.hpp"

namespace qinterp::quant {

// scale and zero per row of w [rows, cols] (Quantizer.find_params, per channel, no MSE grid).
std::pair<at::Tensor, at::Tensor> minmax_params(const at::Tensor& w, int bits, bool sym);
// clamp(round(w / scale) + zero, 0, 2^bits - 1), as float.
at::Tensor quantize_codes(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& zero, int bits);
QuantizedTensor make_grouped(const QuantSpec& spec, const at::Tensor& codes_f, const at::Tensor& scale,
                             const at::Tensor& zero, const at::Tensor& g_idx, at::ScalarType dtype);

}  // namespace qinterp::quant
