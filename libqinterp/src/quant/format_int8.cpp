// The LLM.int8() format (bitsandbytes' Linear8bitLt): row-wise int8 weights, and the product
// that splits off outlier columns of the input; the format's entry points for format.hpp's table.
#include "format_common.hpp"
#include "formats.hpp"

namespace qinterp::quant {

using namespace detail;

Int8Rows int8_vectorwise_quant(const at::Tensor& x_in, double threshold) {
  check_float(x_in, "int8_vectorwise_quant");
  if (x_in.dim() == 0 || x_in.size(-1) == 0)
    fail("int8_vectorwise_quant: needs rows with at least one column, got ", x_in.sizes());
  at::Tensor x = x_in.dim() == 2 ? x_in : x_in.reshape({-1, x_in.size(-1)});
  Int8Rows r;
  r.outlier_cols = at::empty({0}, x.options().dtype(at::kLong));
  if (threshold > 0) {
    const at::Tensor out = x.abs().ge(threshold);
    if (out.any().item<bool>()) {
      r.outlier_cols = at::argwhere(out.any(0)).view({-1});
      x = x.masked_fill(out, 0);
    }
  }
  r.absmax = std::get<0>(x.abs().max(1)).to(at::kFloat);
  // round(x * (127 / rowmax)) in float32, half to even; an all-zero row stays zero. Python's
  // `127.0 / t` is reciprocal(t) * 127 (two roundings), and bitsandbytes writes it that way.
  const at::Tensor inv = at::where(r.absmax.gt(0), r.absmax.reciprocal() * 127.0, at::zeros_like(r.absmax));
  r.q = at::round(x * inv.unsqueeze(1)).to(at::kChar);
  if (x.size(0) > 1 && r.outlier_cols.numel()) r.q.index_fill_(1, r.outlier_cols, 0);
  return r;
}

namespace {

// int8 [n, k] x int8 [m, k]ᵀ -> int32 [n, m], exactly.
at::Tensor int_mm(const at::Tensor& a, const at::Tensor& b) {
  if (a.is_cuda()) {
    if (a.size(0) > 16 && a.size(1) % 8 == 0 && b.size(0) % 8 == 0) return at::_int_mm(a.contiguous(), b.t());
    return at::matmul(a.to(at::kDouble), b.to(at::kDouble).t()).to(at::kInt);  // exact below 2^53
  }
  // CPU: torch's int8 GEMM is a scalar loop without AVX512-VNNI. A float32 GEMM is exact while
  // |partial sum| < 2^24, i.e. over up to 1024 columns of int8 products (1024 * 127^2 < 2^24).
  at::Tensor acc;
  const at::Tensor af = a.to(at::kFloat), bf = b.to(at::kFloat);
  for (int64_t k0 = 0; k0 < a.size(1); k0 += 1024) {
    const int64_t len = std::min<int64_t>(1024, a.size(1) - k0);
    const at::Tensor part = at::matmul(af.narrow(1, k0, len), bf.narrow(1, k0, len).t()).to(at::kInt);
    acc = acc.defined() ? acc.add_(part) : part;
  }
  return acc;
}

}  // namespace

at::Tensor int8_linear(const at::Tensor& x, const QuantizedTensor& w, const at::Tensor& bias) {
  if (w.spec.method != Method::Int8) fail("int8_linear: weight is ", w.spec.str(), ", not int8");
  check_float(x, "int8_linear");
  const int64_t in = w.shape[1], out_f = w.shape[0];
  if (x.size(-1) != in) fail("int8_linear: input has ", x.size(-1), " features, the weight takes ", in);
  const at::Tensor a = x.reshape({-1, in});
  const Int8Rows r = int8_vectorwise_quant(a, w.spec.threshold);
  at::Tensor acc = int_mm(r.q, w.data);
  // bitsandbytes' int8_mm_dequant: int32 * (row * col) * (1 / 127^2), then + bias, then cast
  at::Tensor out = acc * (r.absmax.unsqueeze(1) * w.scale.unsqueeze(0)) * 6.200124e-05;
  if (bias.defined()) out = out + bias;
  out = out.to(x.scalar_type());
  if (r.outlier_cols.numel()) {
    const at::Tensor sub_a = a.index_select(1, r.outlier_cols);
    const at::Tensor sub_b =
        (w.data.index_select(1, r.outlier_cols) * w.scale.unsqueeze(1) * 7.874015718698502e-3).to(x.scalar_type());
    out = out.addmm(sub_a, sub_b.t());
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_f;
  return out.view(shape);
}

// ---- the format's entry points (formats.hpp)

QuantizedTensor int8_quantize(const at::Tensor& x, const QuantSpec& spec) {
  if (x.dim() != 2) fail("quantize int8: needs a 2-D weight [out, in]");
  QuantizedTensor q;
  q.spec = spec;
  q.shape = {x.size(0), x.size(1)};
  q.dtype = x.scalar_type();
  // bitsandbytes quantizes the fp16 weight row-wise with no outlier split
  const Int8Rows r = int8_vectorwise_quant(x.to(at::kHalf), 0.0);
  q.data = r.q.contiguous();
  q.scale = r.absmax;
  return q;
}

at::Tensor int8_dequantize(const QuantizedTensor& q, at::ScalarType dtype) {
  return (q.data.to(at::kFloat) * q.scale.unsqueeze(1) * 7.874015718698502e-3).to(dtype);
}

void int8_check(const QuantizedTensor& q, const std::string& where) {
  if (q.shape.size() != 2) fail(where, ": int8 weight must be 2-D");
  need_part(where, q.data, "qdata", at::kChar, q.numel());
  need_part(where, q.scale, "scale", at::kFloat, q.shape[0]);
}

at::Tensor int8_format_linear(const at::Tensor& x, const QuantizedTensor& w, const at::Tensor& bias) {
  at::Tensor y = int8_linear(x, w, bias);
  if (at::GradMode::is_enabled() && x.requires_grad()) {  // the int8 product's value, the gradient of the dequantized weight
    const at::Tensor lin = at::linear(x, int8_dequantize(w, x.scalar_type()));
    y = y.detach() + (lin - lin.detach());
  }
  return y;
}

}  // namespace qinterp::quant
