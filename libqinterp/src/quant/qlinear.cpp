#include "qinterp/quant/qlinear.hpp"

#include <ATen/ATen.h>

#include "qinterp/device.hpp"
#include "qinterp/error.hpp"

namespace qinterp::quant {

QLinear::QLinear(QuantizedTensor w, at::Tensor bias) : w_(std::move(w)), bias_(std::move(bias)) {
  if (w_.shape.size() != 2) fail("QLinear: weight must be 2-D [out, in]");
  if (!w_.spec.quantized()) fail("QLinear: weight is not quantized (", w_.spec.str(), ")");
  if (bias_.defined() && (bias_.dim() != 1 || bias_.size(0) != w_.shape[0]))
    fail("QLinear: bias must have ", w_.shape[0], " elements");
  compute_ = parse_dtype(w_.spec.compute);
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
  const at::Tensor y = format_of(w_.spec.method).linear(xc, w_, b);
  return y.to(x.scalar_type());
}

}  // namespace qinterp::quant
