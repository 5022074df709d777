// Internal: each format file's entry points, gathered into the table of format.hpp by quantize.cpp.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

#include "qinterp/quant/quantized_tensor.hpp"

namespace qinterp::quant {

// format_4bit.cpp: nf4 and fp4
QuantizedTensor fourbit_quantize(const at::Tensor& x, const QuantSpec& spec);
at::Tensor fourbit_dequantize(const QuantizedTensor& q, at::ScalarType dtype);
void fourbit_check(const QuantizedTensor& q, const std::string& where);
at::Tensor fourbit_linear(const at::Tensor& x, const QuantizedTensor& w, const at::Tensor& bias);

// format_int8.cpp: LLM.int8()
QuantizedTensor int8_quantize(const at::Tensor& x, const QuantSpec& spec);
at::Tensor int8_dequantize(const QuantizedTensor& q, at::ScalarType dtype);
void int8_check(const QuantizedTensor& q, const std::string& where);
at::Tensor int8_format_linear(const at::Tensor& x, const QuantizedTensor& w, const at::Tensor& bias);

// format_grouped.cpp: rtn and gptq (one layout; GPTQ's codes come from gptq.cpp)
QuantizedTensor rtn_quantize(const at::Tensor& x, const QuantSpec& spec);
at::Tensor grouped_dequantize(const QuantizedTensor& q, at::ScalarType dtype);
void grouped_check(const QuantizedTensor& q, const std::string& where);
at::Tensor grouped_linear(const at::Tensor& x, const QuantizedTensor& w, const at::Tensor& bias);

}  // namespace qinterp::quant
