// QLinear — a linear layer y = x Wᵀ + b whose W [out, in] is held in quantized storage.
// It computes in the spec's compute dtype (fp16 by default, as bitsandbytes' layers do) and
// returns x's dtype. Gradients flow to x (integrated gradients needs them), never to W:
//   4-bit, RTN, GPTQ  x·dequant(W)ᵀ, differentiable in x as written;
//   int8 (LLM.int8()) the int8 product forward, and bitsandbytes' backward, x̄ = ȳ·dequant(W).
// On CUDA a single-token input ([.., in] with at most 4 rows) uses the fused 4-bit GEMV.
#pragma once
#include <ATen/core/Tensor.h>

#include "qinterp/quant/quantize.hpp"

namespace qinterp::quant {

class QLinear {
 public:
  explicit QLinear(QuantizedTensor w, at::Tensor bias = {});

  at::Tensor forward(const at::Tensor& x) const;  // x [..., in] -> [..., out]

  const QuantizedTensor& weight() const { return w_; }
  const at::Tensor& bias() const { return bias_; }
  int64_t in_features() const { return w_.shape[1]; }
  int64_t out_features() const { return w_.shape[0]; }
  at::ScalarType compute_dtype() const { return compute_; }
  int64_t nbytes() const;  // storage bytes, bias included
  void to(at::Device device);

 private:
  QuantizedTensor w_;
  at::Tensor bias_;
  at::ScalarType compute_;
};

}  // namespace qinterp::quant
