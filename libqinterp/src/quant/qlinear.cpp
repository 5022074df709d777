#include "qinterp/quant/qlinear.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "qinterp/error.hpp"

namespace qinterp::quant {

namespace {
at::ScalarType compute_of(const QuantSpec& s) {
  if (s.compute == "fp32") return at::kFloat;
  if (s.compute == "bf16") return at::kBFloat16;
  return at::kHalf;
}
}  // namespace

QLinear::QLinear(QuantizedTensor w, at::Tensor bias) : w_(std::move(w)), bias_(std::move(bias)) {
  if (w_.shape.size() != 2) fail("QLinear: weight must be 2-D [out, in]");
  if (!w_.spec.quantized()) fail("QLinear: weight is not quantized (", w_.spec.str(), ")");
  if (bias_.defined() && (bias_.dim() != 1 || bias_.size(0) != w_.shape[0]))
    fail("QLinear: bias must have ", w_.shape[0], " elements");
  compute_ = compute_of(w_.spec);
}

int64_t QLinear::nbytes() const {
  return w_.nbytes() + (bias_.defined() ? bias_.numel() * static_cast<int64_t>(bias_.element_size()) : 0);
}

void QLinear::to(at::Device device) {
  w_ = w_.to(device);
  if (bias_.defined()) bias_ = bias_.to(device);
}

at::Tensor QLinear::forward(const at::Tensor& x) const {
  if (x.size(-1) != in_features())
    fail("QLinear: input has ", x.size(-1), " features, the layer takes ", in_features());
  const at::Tensor xc = x.to(compute_);
  const at::Tensor b = bias_.defined() ? bias_.to(compute_) : at::Tensor();
  const bool grad = at::GradMode::is_enabled() && x.requires_grad();
  at::Tensor y;
  switch (w_.spec.method) {
    case Method::NF4:
    case Method::FP4:
      // Few rows (decoding): the fused matrix-vector product, on CUDA or on a CPU in fp32.
      if ((xc.is_cuda() || xc.scalar_type() == at::kFloat) && !grad && xc.numel() / in_features() <= 4) {
        y = gemv_4bit(xc, w_);
        if (b.defined()) y = y + b;
      } else {
        y = at::linear(xc, dequantize(w_, compute_), b);
      }
      break;
    case Method::Int8:
      y = int8_linear(xc, w_, b);
      if (grad) {  // value of the int8 product, gradient of the dequantized weight
        const at::Tensor lin = at::linear(xc, dequantize(w_, compute_));
        y = y.detach() + (lin - lin.detach());
      }
      break;
    case Method::RTN:
    case Method::GPTQ:
      if (xc.is_cpu() && xc.scalar_type() == at::kFloat && !grad && xc.numel() / in_features() <= 4) {
        y = gemv_grouped(xc, w_);
        if (b.defined()) y = y + b;
      } else {
        y = at::linear(xc, dequantize(w_, compute_), b);
      }
      break;
    case Method::None: fail("QLinear: no quantized format");
  }
  return y.to(x.scalar_type());
}

}  // namespace qinterp::quant
