// The front doors of quantization: QuantizedTensor, the table of formats (format.hpp) and
// quantize() / dequantize(), which dispatch through it. Each format's code is in format_*.cpp.
#include "qinterp/quant/quantize.hpp"

#include <ATen/ATen.h>

#include "format_common.hpp"
#include "formats.hpp"

namespace qinterp::quant {

using namespace detail;

int64_t QuantizedTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t QuantizedTensor::nbytes() const {
  int64_t n = 0;
  for (const auto& p : parts()) n += p.second.numel() * static_cast<int64_t>(p.second.element_size());
  return n;
}

QuantizedTensor QuantizedTensor::to(at::Device device) const {
  QuantizedTensor q = *this;
  // offset stays a CPU scalar: kernels take it by value, and reading it must not sync a GPU
  for (at::Tensor* t : {&q.data, &q.absmax, &q.absmax2, &q.code2, &q.scale, &q.zero, &q.g_idx})
    if (t->defined()) *t = t->to(device);
  return q;
}

std::vector<std::pair<std::string, at::Tensor>> QuantizedTensor::parts() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  const std::pair<const char*, const at::Tensor*> all[] = {{"qdata", &data},   {"absmax", &absmax},
                                                           {"absmax2", &absmax2}, {"offset", &offset},
                                                           {"code2", &code2}, {"scale", &scale},
                                                           {"zero", &zero},   {"g_idx", &g_idx}};
  for (const auto& p : all)
    if (p.second->defined()) out.emplace_back(p.first, *p.second);
  return out;
}

QuantizedTensor QuantizedTensor::from_parts(const QuantSpec& spec, std::vector<int64_t> shape, at::ScalarType dtype,
                                            const std::vector<std::pair<std::string, at::Tensor>>& parts,
                                            const std::string& where) {
  QuantizedTensor q;
  q.spec = spec;
  q.shape = std::move(shape);
  q.dtype = dtype;
  for (const auto& p : parts) {
    at::Tensor* slot = p.first == "qdata"     ? &q.data
                       : p.first == "absmax"  ? &q.absmax
                       : p.first == "absmax2" ? &q.absmax2
                       : p.first == "offset"  ? &q.offset
                       : p.first == "code2"   ? &q.code2
                       : p.first == "scale"   ? &q.scale
                       : p.first == "zero"    ? &q.zero
                       : p.first == "g_idx"   ? &q.g_idx
                                              : nullptr;
    if (!slot) fail(where, ": unknown quantized part '", p.first, "'");
    *slot = p.second;
  }
  // Validate sizes so that a damaged file cannot make the kernels read out of bounds.
  if (!spec.quantized()) fail(where, ": not a quantized spec");
  format_of(spec.method).check_parts(q, where);
  return q;
}

// ---- the table

const std::vector<Format>& formats() {
  static const std::vector<Format> table = {
      {Method::NF4, "nf4", fourbit_quantize, fourbit_dequantize, fourbit_check, fourbit_linear, detail::fourbit_row_job},
      {Method::FP4, "fp4", fourbit_quantize, fourbit_dequantize, fourbit_check, fourbit_linear, detail::fourbit_row_job},
      {Method::Int8, "int8", int8_quantize, int8_dequantize, int8_check, int8_format_linear, nullptr},
      {Method::RTN, "rtn", rtn_quantize, grouped_dequantize, grouped_check, grouped_linear, detail::grouped_row_job},
      {Method::GPTQ, "gptq", nullptr, grouped_dequantize, grouped_check, grouped_linear, detail::grouped_row_job},
  };
  return table;
}

const Format& format_of(Method m) {
  for (const Format& f : formats())
    if (f.method == m) return f;
  fail("no quantized format for this spec (it is not quantized)");
}

// ---- front doors

QuantizedTensor quantize(const at::Tensor& x, const QuantSpec& spec) {
  check_float(x, ("quantize " + spec.str()).c_str());
  if (!spec.quantized()) fail("quantize: '", spec.str(), "' is not a quantized format");
  const Format& f = format_of(spec.method);
  if (!f.quantize)
    fail("quantize ", spec.str(), ": GPTQ needs calibration activations; use quant::gptq_quantize_model or "
         "load_model(path, quant=\"", spec.str(), "\")");
  check_finite(x, "quantize " + spec.str());
  return f.quantize(x, spec);
}

at::Tensor dequantize(const QuantizedTensor& q, at::ScalarType dtype) {
  if (!q.spec.quantized()) fail("dequantize: tensor has no quantized format");
  return format_of(q.spec.method).dequantize(q, dtype == at::ScalarType::Undefined ? q.dtype : dtype);
}

}  // namespace qinterp::quant
