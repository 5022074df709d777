// The quantized storage formats, one entry each (in the spirit of ggml's per-type traits). Whatever
// differs between formats is reached through this table -- quantize(), dequantize(),
// QuantizedTensor::from_parts() and QLinear -- so a new format is one entry plus its own file
// (src/quant/format_*.cpp), and the tests' loop over formats() checks it by its being here.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "qinterp/quant/quantized_tensor.hpp"
#include "qinterp/quant/spec.hpp"

namespace qinterp::quant {

namespace detail {
struct RowJob;     // src/quant/format_common.hpp
struct StepInput;  // src/quant/format_common.hpp
}

struct Format {
  Method method;
  const char* name;  // as spec strings spell it: "nf4", "fp4", "int8", "rtn", "gptq"
  // The weight x in this format; null where more than the weight is needed (GPTQ: gptq.hpp).
  QuantizedTensor (*quantize)(const at::Tensor& x, const QuantSpec& spec);
  // Back to a dense tensor of `dtype` on q's device.
  at::Tensor (*dequantize)(const QuantizedTensor& q, at::ScalarType dtype);
  // Throws Error naming `where` when q's parts do not fit its spec and shape, so that a damaged
  // file cannot make a kernel read out of bounds.
  void (*check_parts)(const QuantizedTensor& q, const std::string& where);
  // y = x Wᵀ + bias (bias may be undefined) in x's dtype, for a 2-D W [out, in]: what QLinear
  // computes. Differentiable in x when x requires a gradient; a few rows without a gradient take
  // the format's fused matrix-vector product where it has one.
  at::Tensor (*linear)(const at::Tensor& x, const QuantizedTensor& w, const at::Tensor& bias);
  // For a decoding step (x: at most four rows, float32 on the CPU, no gradient): the fused product
  // into y prepared, not run, so that several weights of one input share a parallel region and its
  // prepared forms; false (or null) where the format has no fused CPU kernel for x. Internal.
  bool (*row_job)(detail::StepInput& x, const QuantizedTensor& w, float* y, detail::RowJob* job);
};

// Every quantized format, in the order of Method: nf4, fp4, int8, rtn, gptq.
const std::vector<Format>& formats();
// The entry of `m`; throws Error for Method::None.
const Format& format_of(Method m);

}  // namespace qinterp::quant
